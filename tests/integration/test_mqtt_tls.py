"""Device streams over MQTT with TLS (``mqtts://``), through a real broker.

The throwaway broker listens for TLS only, with a self-signed certificate for 127.0.0.1.
The consumer stores readings when it is told to trust that certificate (``cafile``), and
refuses the broker, with a clear error and no reading taken, when it cannot verify it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, func, select

from tests.mqtt_helpers import Publisher, consuming
from tests.services import throwaway_mqtt_broker
from tests.tls_helpers import self_signed_certificate
from vitalcast.clinical.records import PatientRecord, RecordBatch
from vitalcast.clinical.tables import Observation, Patient
from vitalcast.config import Settings
from vitalcast.db.session import make_session_factory, session_scope
from vitalcast.errors import ConfigError
from vitalcast.ingest.devices import bind_device
from vitalcast.ingest.mqtt import DeviceStreamConsumer, MqttConfig, parse_mqtt_url
from vitalcast.ingest.service import store_batch
from vitalcast.security.crypto import FieldCipher

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _with_cafile(url: str, cafile: Path) -> str:
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}cafile={quote(str(cafile))}"


def test_stream_over_tls_stores_readings_from_a_verified_broker(
    tmp_path: Path, pg_engine: Engine, cipher: FieldCipher
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    factory = make_session_factory(pg_engine)
    with session_scope(factory) as s:
        batch = RecordBatch(patients=[PatientRecord(ref="p1")])
        store_batch(s, batch, source="t", location="t", cipher=cipher)
    with session_scope(factory) as s:
        pid = s.scalars(select(Patient.public_id).where(Patient.source_ref == "p1")).one()
        bind_device(s, device_id="mon-1", patient_public_id=pid, now=T0 - timedelta(hours=1))
    with throwaway_mqtt_broker(tls=(cert, key)) as url:
        assert url.startswith("mqtts://")
        url = _with_cafile(url, cert)
        prefix = f"vc-tls-{uuid.uuid4().hex[:8]}/devices"
        config = MqttConfig(
            **parse_mqtt_url(url),
            client_id=f"vc-{uuid.uuid4().hex[:8]}",
            topic_prefix=prefix,
            batch_size=10,
            batch_wait_s=0.1,
        )
        assert config.tls
        consumer = DeviceStreamConsumer(factory, cipher, config)
        with consuming(consumer, timeout_s=15):
            pub = Publisher(url, f"pub-{uuid.uuid4().hex[:8]}")
            for i in range(5):
                t = (T0 + timedelta(minutes=i)).isoformat()
                pub.publish(
                    f"{prefix}/mon-1/observations",
                    {"code": "8867-4", "value": 70 + i, "unit": "/min", "time": t},
                )
            pub.close()
            deadline = time.monotonic() + 30
            while consumer.stats.messages < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
    with factory() as s:
        values = sorted(s.scalars(select(Observation.value)))
        assert values == [70.0, 71.0, 72.0, 73.0, 74.0]
        assert s.scalar(select(func.count()).select_from(Observation)) == 5


def test_unverifiable_broker_is_refused_with_a_clear_error(
    tmp_path: Path, settings: Settings
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with throwaway_mqtt_broker(tls=(cert, key)) as url:
        env = {
            **os.environ,
            "VITALCAST_ENV": "test",
            "VITALCAST_DATA_DIR": str(settings.data_dir),
            "VITALCAST_DATABASE_URL": str(settings.database_url),
            "VITALCAST_MQTT_URL": url,  # no cafile: the system CAs do not know this broker
            "VITALCAST_MQTT_CLIENT_ID": f"vc-{uuid.uuid4().hex[:8]}",
        }
        vitalcast = str(Path(sys.executable).with_name("vitalcast"))
        done = subprocess.run(
            [vitalcast, "stream", "mqtt", "--idle-exit", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert "cannot reach the broker" in done.stderr
    assert "certificate verify failed" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreadable_cafile_is_a_configuration_error(
    tmp_path: Path, pg_engine: Engine, cipher: FieldCipher
) -> None:
    config = MqttConfig(
        **parse_mqtt_url(_with_cafile("mqtts://127.0.0.1:8883", tmp_path / "missing.pem")),
        client_id="vc-x",
    )
    with pytest.raises(ConfigError, match="cannot read cafile"):
        DeviceStreamConsumer(make_session_factory(pg_engine), cipher, config)
