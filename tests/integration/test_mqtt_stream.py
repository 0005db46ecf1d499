"""Device streams through a real MQTT broker into real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from prometheus_client import REGISTRY
from sqlalchemy import Engine, func, select

from tests.live import free_port
from tests.mqtt_helpers import SESSION_EXPIRY_S, Publisher, consuming, fresh_config
from tests.services import throwaway_mqtt_broker
from vitalcast.clinical.records import PatientRecord, RecordBatch
from vitalcast.clinical.tables import Observation, Patient
from vitalcast.config import Settings
from vitalcast.db.session import make_session_factory, session_scope
from vitalcast.ingest.devices import bind_device, unbind_device
from vitalcast.ingest.mqtt import SOURCE, DeviceStreamConsumer, MqttConfig, parse_mqtt_url
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.security.crypto import FieldCipher

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _patient(engine: Engine, cipher: FieldCipher, ref: str) -> str:
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        store_batch(
            s,
            RecordBatch(patients=[PatientRecord(ref=ref)]),
            source="test",
            location="t",
            cipher=cipher,
        )
    with factory() as s:
        return s.scalars(select(Patient.public_id).where(Patient.source_ref == ref)).one()


def _hr(t: datetime, value: float) -> dict[str, object]:
    return {"code": "8867-4", "value": value, "unit": "/min", "time": t.isoformat()}


def _publish_all(
    mqtt_url: str, consumer: DeviceStreamConsumer, payloads: list[tuple[str, object]]
) -> None:
    """Publish ``payloads`` (topic, payload) and wait until ``consumer`` has handled all."""
    with consuming(consumer):
        pub = Publisher(mqtt_url, f"pub-{uuid.uuid4().hex[:8]}")
        for topic, payload in payloads:
            pub.publish(topic, payload)
        pub.close()
        deadline = time.monotonic() + 30
        while consumer.stats.messages < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert consumer.stats.messages == len(payloads)


def _count(engine: Engine, table: type) -> int:
    with make_session_factory(engine)() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def test_bindings_duplicates_order_and_bad_payloads(
    mqtt_url: str, pg_engine: Engine, cipher: FieldCipher
) -> None:
    pid = _patient(pg_engine, cipher, "p1")
    factory = make_session_factory(pg_engine)
    with session_scope(factory) as s:
        bind_device(s, device_id="mon-1", patient_public_id=pid, now=T0)
    with session_scope(factory) as s:
        unbind_device(s, device_id="mon-1", now=T0 + timedelta(hours=2))
    config = fresh_config(mqtt_url)
    prefix = config.topic_prefix
    consumer = DeviceStreamConsumer(factory, cipher, config)
    topic = f"{prefix}/mon-1/observations"
    fhir = {
        "resourceType": "Observation",
        "id": "spo2-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "59408-5"}]},
        "effectiveDateTime": (T0 + timedelta(minutes=5)).isoformat(),
        "valueQuantity": {
            "value": 97,
            "unit": "%",
            "system": "http://unitsofmeasure.org",
            "code": "%",
        },
    }
    payloads: list[tuple[str, object]] = [
        (topic, _hr(T0 + timedelta(minutes=30), 80)),
        (topic, _hr(T0 + timedelta(minutes=30), 80)),  # duplicate (a resend)
        (topic, _hr(T0 + timedelta(minutes=10), 75)),  # out of order: older, still bound
        (topic, fhir),
        (topic, _hr(T0 + timedelta(hours=3), 90)),  # measured after the unbind
        (topic, _hr(T0 - timedelta(minutes=1), 90)),  # measured before the bind
        (f"{prefix}/mon-2/observations", _hr(T0, 70)),  # never bound
        (topic, b"{not json"),
        (topic, {"code": "8867-4", "value": 1, "time": "2025-06-01T12:00:00"}),  # naive time
    ]
    _publish_all(mqtt_url, consumer, payloads)
    report = consumer.stats.report
    assert report.balanced()
    with factory() as s:
        stored = sorted(
            (o.effective_at, o.code, o.value, o.device_id) for o in s.scalars(select(Observation))
        )
        reasons = sorted(s.scalars(select(QuarantineItem.reason_code)))
    assert stored == [
        (T0 + timedelta(minutes=5), "59408-5", 97.0, "mon-1"),
        (T0 + timedelta(minutes=10), "8867-4", 75.0, "mon-1"),
        (T0 + timedelta(minutes=30), "8867-4", 80.0, "mon-1"),
    ]
    assert report.kinds["observation"].duplicates == 1
    assert reasons == [
        "invalid_payload",
        "malformed_payload",
        "unbound_device",
        "unbound_device",
        "unbound_device",
    ]


def test_forced_consumer_restart_loses_nothing(
    mqtt_url: str, settings: Settings, pg_engine: Engine, cipher: FieldCipher
) -> None:
    pid = _patient(pg_engine, cipher, "p2")
    with session_scope(make_session_factory(pg_engine)) as s:
        bind_device(s, device_id="bed-7", patient_public_id=pid, now=T0)
    prefix = f"vc-test-{uuid.uuid4().hex[:8]}/devices"
    env = {
        **os.environ,
        "VITALCAST_ENV": "test",
        "VITALCAST_DATA_DIR": str(settings.data_dir),
        "VITALCAST_DATABASE_URL": str(settings.database_url),
        "VITALCAST_MQTT_URL": mqtt_url,
        "VITALCAST_MQTT_CLIENT_ID": f"vc-restart-{uuid.uuid4().hex[:8]}",
        "VITALCAST_MQTT_BATCH_SIZE": "100",
        # The consumer logs a line per batch at INFO to its stderr, which this test stops
        # reading after "consuming": a full pipe would block the consumer.
        "VITALCAST_LOG_LEVEL": "WARNING",
        "VITALCAST_MQTT_SESSION_EXPIRY_S": str(SESSION_EXPIRY_S),
    }
    cmd = [
        str(Path(sys.executable).with_name("vitalcast")),
        "stream",
        "mqtt",
        "--topic-prefix",
        prefix,
    ]

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None
        line = proc.stderr.readline()  # printed once connected
        assert line.startswith("consuming"), line
        return proc

    # Fewer messages in all than Mosquitto's default max_queued_messages (1000): the
    # broker itself drops what exceeds its queue for a session, whatever the consumer
    # does, and 1200 (assuming at least 200 acknowledged before the kill) overflowed it
    # once on a slow machine (the broker logged "Outgoing messages are being dropped").
    total = 900
    first = start()
    pub = Publisher(mqtt_url, f"pub-{uuid.uuid4().hex[:8]}")
    topic = f"{prefix}/bed-7/observations"
    for i in range(total):
        pub.publish(topic, _hr(T0 + timedelta(seconds=i), 60 + i % 80))
        if i == 400:
            pub.flush()
            deadline = time.monotonic() + 30
            while _count(pg_engine, Observation) < 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            first.send_signal(signal.SIGKILL)  # mid-stream, no clean shutdown
            first.communicate(timeout=10)
    pub.close()
    killed_at = _count(pg_engine, Observation)
    assert 0 < killed_at < total
    second = start()
    deadline = time.monotonic() + 60
    while _count(pg_engine, Observation) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    second.send_signal(signal.SIGTERM)
    _out, err = second.communicate(timeout=20)
    assert second.returncode == 0, err
    assert _count(pg_engine, Observation) == total
    assert _count(pg_engine, QuarantineItem) == 0


def _bound_consumer(
    mqtt_url: str, pg_engine: Engine, cipher: FieldCipher, device_id: str
) -> tuple[DeviceStreamConsumer, str]:
    """A consumer of a fresh topic prefix (returned too), ``device_id`` bound to a patient
    since T0, and a short session."""
    pid = _patient(pg_engine, cipher, f"patient-{device_id}")
    factory = make_session_factory(pg_engine)
    with session_scope(factory) as s:
        bind_device(s, device_id=device_id, patient_public_id=pid, now=T0)
    prefix = f"vc-test-{uuid.uuid4().hex[:8]}/devices"
    config = MqttConfig(
        **parse_mqtt_url(mqtt_url),
        client_id=f"vc-{uuid.uuid4().hex[:8]}",
        topic_prefix=prefix,
        batch_wait_s=0.05,
        session_expiry_s=SESSION_EXPIRY_S,
    )
    return DeviceStreamConsumer(factory, cipher, config), prefix


def test_connect_check_returns_once_the_broker_routes_readings_to_the_session(
    mqtt_url: str, pg_engine: Engine, cipher: FieldCipher
) -> None:
    """``vitalcast stream mqtt`` says "consuming" when ``connect_check`` returns, and callers
    publish from then on. A new session has no subscription until the broker has the
    SUBSCRIBE, sent from the network thread after CONNACK; before, ``connect_check``
    returned at the connection, and readings published while that thread ran late were
    never delivered (how test_forced_consumer_restart_loses_nothing lost its first readings
    on a busy machine). Here the thread is made late on purpose."""
    consumer, prefix = _bound_consumer(mqtt_url, pg_engine, cipher, "mon-5")
    on_connect = consumer.client.on_connect

    def late(*args: Any) -> None:
        time.sleep(0.5)  # the network thread of a consumer on a busy machine, exaggerated
        on_connect(*args)

    consumer.client.on_connect = late
    consumer.connect_check()
    pub = Publisher(mqtt_url, f"pub-{uuid.uuid4().hex[:8]}")
    pub.publish(f"{prefix}/mon-5/observations", _hr(T0 + timedelta(minutes=1), 70))
    pub.close()
    stats = consumer.run(threading.Event(), idle_exit_s=2)
    assert stats.messages == 1
    assert _count(pg_engine, Observation) == 1


def _ingest_counts() -> dict[str, float]:
    """This process's ingest counters for MQTT: observations by fate, quarantine by reason."""
    names = {
        fate: ("vitalcast_ingest_records_total", {"kind": "observation", "fate": fate})
        for fate in ("stored", "duplicates", "quarantined")
    } | {
        reason: ("vitalcast_ingest_quarantined_total", {"reason": reason})
        for reason in ("malformed_payload", "unbound_device")
    }
    return {
        key: REGISTRY.get_sample_value(name, {"source": SOURCE, **labels}) or 0.0
        for key, (name, labels) in names.items()
    }


def test_stored_and_quarantined_readings_are_counted_in_the_ingest_metrics(
    mqtt_url: str, pg_engine: Engine, cipher: FieldCipher
) -> None:
    consumer, prefix = _bound_consumer(mqtt_url, pg_engine, cipher, "mon-3")
    before = _ingest_counts()
    with consuming(consumer):
        pub = Publisher(mqtt_url, f"pub-{uuid.uuid4().hex[:8]}")
        topic = f"{prefix}/mon-3/observations"
        for t, p in [
            (topic, _hr(T0 + timedelta(minutes=1), 70)),
            (topic, _hr(T0 + timedelta(minutes=2), 71)),
            (topic, _hr(T0 + timedelta(minutes=2), 71)),  # a resend: a duplicate
            (topic, b"{not json"),
            (f"{prefix}/mon-4/observations", _hr(T0, 72)),  # a device never bound
        ]:
            pub.publish(t, p)
        pub.close()
        deadline = time.monotonic() + 30
        while consumer.stats.messages < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    after = _ingest_counts()
    assert {k: after[k] - before[k] for k in after} == {
        "stored": 2,
        "duplicates": 1,
        "quarantined": 2,
        "malformed_payload": 1,
        "unbound_device": 1,
    }
    assert (_count(pg_engine, Observation), _count(pg_engine, QuarantineItem)) == (2, 2)


def _session_present(opts: dict[str, Any], client_id: str) -> bool:
    """Whether the broker still holds a session for ``client_id``: connect asking to resume
    it and read CONNACK's session-present flag. The probe then ends the session (MQTT 5:
    no expiry interval; MQTT 3.1.1: a clean-session reconnection), leaving nothing behind."""
    v5 = opts["protocol"] == MQTTProtocolVersion.MQTTv5
    present: list[bool] = []

    def probe(clean: bool) -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=opts["protocol"],
            clean_session=None if v5 else clean,
        )
        connected = threading.Event()

        def on_connect(_c: Any, _u: Any, flags: Any, _rc: Any, _p: Any) -> None:
            present.append(bool(flags.session_present))
            connected.set()

        client.on_connect = on_connect
        if v5:
            client.connect(opts["host"], opts["port"], clean_start=clean)
        else:
            client.connect(opts["host"], opts["port"])
        client.loop_start()
        try:
            assert connected.wait(10), "no CONNACK"
        finally:
            client.disconnect()
            client.loop_stop()

    probe(clean=False)
    if not v5:
        probe(clean=True)
    return present[0]


def _run_briefly(pg_engine: Engine, cipher: FieldCipher, config: MqttConfig) -> None:
    """Connect, subscribe (creating the session) and stop cleanly."""
    with consuming(DeviceStreamConsumer(make_session_factory(pg_engine), cipher, config)):
        pass


def test_mqtt5_session_outlives_a_disconnection_by_its_expiry_interval_only(
    mqtt_url: str, pg_engine: Engine, cipher: FieldCipher
) -> None:
    opts = parse_mqtt_url(mqtt_url)
    if opts["protocol"] != MQTTProtocolVersion.MQTTv5:
        pytest.skip("the test broker speaks MQTT 3.1.1 only")
    kept, expiring = (f"vc-expiry-{uuid.uuid4().hex[:8]}" for _ in range(2))
    _run_briefly(pg_engine, cipher, MqttConfig(**opts, client_id=kept, session_expiry_s=60))
    # The CONNECT asked for a session that outlives the disconnection (a restart resumes it).
    assert _session_present(opts, kept)
    _run_briefly(pg_engine, cipher, MqttConfig(**opts, client_id=expiring, session_expiry_s=1))
    time.sleep(4)  # the interval, plus Mosquitto's once-a-second expiry sweep, with room
    assert not _session_present(opts, expiring)  # before: kept (and fed) forever


def test_mqtt311_has_no_session_expiry_the_broker_keeps_the_session(
    mqtt_url: str, pg_engine: Engine, cipher: FieldCipher
) -> None:
    """MQTT 3.1.1 has no Session Expiry Interval: ``session_expiry_s`` is not sent, and the
    broker's own policy decides (Mosquitto: ``persistent_client_expiration``, in hours at
    the least, never by default)."""
    opts = {**parse_mqtt_url(mqtt_url), "protocol": MQTTProtocolVersion.MQTTv311}
    client_id = f"vc-expiry-{uuid.uuid4().hex[:8]}"
    _run_briefly(pg_engine, cipher, MqttConfig(**opts, client_id=client_id, session_expiry_s=1))
    time.sleep(3)
    assert _session_present(opts, client_id)  # and the probe discarded it


def test_a_subscription_the_broker_refuses_stops_the_command(settings: Settings) -> None:
    """A broker whose ACL denies the device topics answers the SUBSCRIBE with a failure
    code (amqtt: 0x80). Before, any answer counted as subscribed: the command said
    "consuming" and received nothing, for ever. Now it stops with one line naming the
    topic and the broker's reason."""
    with throwaway_mqtt_broker(subscribe_acl=["some/other/#"]) as url:
        env = {
            **os.environ,
            "VITALCAST_ENV": "test",
            "VITALCAST_DATA_DIR": str(settings.data_dir),
            "VITALCAST_DATABASE_URL": str(settings.database_url),
            "VITALCAST_MQTT_URL": url,
            "VITALCAST_MQTT_CLIENT_ID": f"vc-acl-{uuid.uuid4().hex[:8]}",
        }
        done = subprocess.run(
            [str(Path(sys.executable).with_name("vitalcast")), "stream", "mqtt"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: VITALCAST_MQTT_URL: the broker refused the subscription to")
    assert "vitalcast/devices/+/observations" in last
    assert "consuming" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_refusal_on_resubscribing_is_recorded(pg_engine: Engine, cipher: FieldCipher) -> None:
    """The broker comes back (same address) with an ACL that no longer grants the device
    topics: paho reconnects and resubscribes, the broker refuses, and the consumer says so
    (``refusal``, read by the worker's /healthz) instead of running on subscribed."""
    port = free_port()
    prefix = f"vc-test-{uuid.uuid4().hex[:8]}/devices"
    with throwaway_mqtt_broker(subscribe_acl=[f"{prefix}/#"], port=port) as url:
        config = MqttConfig(
            **parse_mqtt_url(url), client_id=f"vc-re-{uuid.uuid4().hex[:8]}", topic_prefix=prefix
        )
        consumer = DeviceStreamConsumer(make_session_factory(pg_engine), cipher, config)
        consumer.connect_check()
        assert consumer.subscribed.is_set()
        assert consumer.refusal is None
    try:
        with throwaway_mqtt_broker(subscribe_acl=["some/other/#"], port=port):
            deadline = time.monotonic() + 30  # paho retries within 1-10 s
            while consumer.refusal is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert consumer.refusal is not None
            assert not consumer.subscribed.is_set()
    finally:
        consumer.client.loop_stop()


def test_a_device_reading_naming_a_patient_is_not_stored_under_that_patient(
    mqtt_url: str, pg_engine: Engine, cipher: FieldCipher
) -> None:
    """A compact reading on a device's topic that named a patient was stored under that
    patient, whoever the device was bound to, and from a device bound to no one: the
    binding (and the unbound_device rule) did not apply. It is refused with a reason, as
    the binding decides whose a device's reading is (a FHIR subject is not taken either)."""
    bound, other = _patient(pg_engine, cipher, "p-bound"), _patient(pg_engine, cipher, "p-other")
    factory = make_session_factory(pg_engine)
    with session_scope(factory) as s:
        bind_device(s, device_id="mon-3", patient_public_id=bound, now=T0)
    config = fresh_config(mqtt_url)
    consumer = DeviceStreamConsumer(factory, cipher, config)
    naming = {**_hr(T0 + timedelta(minutes=5), 81), "patient": other}
    payloads: list[tuple[str, object]] = [
        (f"{config.topic_prefix}/mon-3/observations", naming),
        (f"{config.topic_prefix}/mon-9/observations", naming),  # never bound
        (f"{config.topic_prefix}/mon-3/observations", _hr(T0 + timedelta(minutes=6), 82)),
    ]
    _publish_all(mqtt_url, consumer, payloads)
    assert consumer.stats.report.balanced()
    with factory() as s:
        stored = s.execute(
            select(Patient.public_id, Observation.value).join(
                Patient, Patient.id == Observation.patient_id
            )
        ).all()
        quarantined = s.scalars(select(QuarantineItem.reason)).all()
    assert [tuple(row) for row in stored] == [(bound, 82.0)]
    assert len(quarantined) == 2
    assert all("not taken on a device topic" in reason for reason in quarantined)
    assert all(other not in reason for reason in quarantined)
