"""The stream commands log JSON lines and serve ``/healthz`` and ``/metrics``.

``vitalcast listen hl7`` and ``vitalcast stream mqtt`` run as real processes against
PostgreSQL and Mosquitto with ``VITALCAST_WORKER_HTTP_PORT`` set. Before, they served
nothing (their counters could not be scraped, and a probe had nothing to ask) and set up
no logging (their warnings reached stderr as bare text).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import IO

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.hl7_samples import ADT_A01, ORU_R01
from tests.live import VITALCAST, free_port
from tests.mqtt_helpers import SESSION_EXPIRY_S
from vitalcast.config import Settings
from vitalcast.ingest.mllp import send_messages

TOKEN = "worker-scrape-token-0123456789"


def _start(
    args: list[str], settings: Settings, stderr: IO[str], **extra: str
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "VITALCAST_ENV": "test",
        "VITALCAST_DATA_DIR": str(settings.data_dir),
        "VITALCAST_DATABASE_URL": str(settings.database_url),
        "VITALCAST_LOG_JSON": "true",
        "VITALCAST_LOG_LEVEL": "INFO",
        "VITALCAST_METRICS_TOKEN": TOKEN,
        **extra,
    }
    # stderr to a file: a pipe nobody reads would fill with log lines and block the process.
    return subprocess.Popen(
        [VITALCAST, *args], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
    )


def _get(port: int, path: str, *, token: str | None = None) -> httpx.Response | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=5)
    except httpx.TransportError:
        return None  # not serving yet


def _ready(port: int, timeout_s: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = _get(port, "/healthz")
        if response is not None:
            return response
        time.sleep(0.2)
    raise AssertionError("the worker endpoint never answered")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 0


def _stored(ack: str) -> int:
    match = re.search(r"stored (\d+)", ack)
    assert match, ack
    return int(match.group(1))


def _ingest_counts(exposition: str, source: str) -> dict[str, float]:
    """``vitalcast_ingest_records_total`` of ``source``, summed over kinds, by fate."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != "vitalcast_ingest_records":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["source"] == source:
                fate = sample.labels["fate"]
                totals[fate] = totals.get(fate, 0.0) + sample.value
    return totals


def test_listen_hl7_serves_its_counts_and_logs_json_lines(
    settings: Settings, tmp_path: Path
) -> None:
    mllp_port, http_port = free_port(), free_port()
    with (tmp_path / "stderr.log").open("w+") as stderr:
        proc = _start(
            ["listen", "hl7", "--port", str(mllp_port)],
            settings,
            stderr,
            VITALCAST_WORKER_HTTP_PORT=str(http_port),
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("listening")
            health = _ready(http_port)
            assert health.status_code == 200
            assert health.json()["status"] == "ok"

            acks = send_messages("127.0.0.1", mllp_port, [ADT_A01, ORU_R01])
            assert all("MSA|AA|" in ack for ack in acks)
            unauthorised = _get(http_port, "/metrics")
            assert unauthorised is not None
            assert unauthorised.status_code == 401
            metrics = _get(http_port, "/metrics", token=TOKEN)
            assert metrics is not None
            assert metrics.status_code == 200
            counts = _ingest_counts(metrics.text, "hl7v2")
            assert counts.get("stored") == sum(_stored(ack) for ack in acks) > 0
            assert counts.get("quarantined", 0) > 0  # ORU_R01 holds five bad OBX segments
        finally:
            _stop(proc)
        stderr.seek(0)
        logged = stderr.read()
    records = [json.loads(line) for line in logged.splitlines() if line.strip()]
    stored = [r for r in records if r["message"] == "hl7 message stored"]
    assert len(stored) == 2
    assert {r["level"] for r in stored} == {"INFO"}
    # No identifier of the test patient reaches the log.
    for identifier in ("MRN0001", "Testpatient", "19500102", "V0001"):
        assert identifier not in logged


def test_stream_mqtt_healthz_reports_the_broker_connection(
    settings: Settings, mqtt_url: str, tmp_path: Path
) -> None:
    http_port = free_port()
    with (tmp_path / "stderr.log").open("w+") as stderr:
        proc = _start(
            ["stream", "mqtt", "--topic-prefix", f"vc-test-{uuid.uuid4().hex[:8]}/devices"],
            settings,
            stderr,
            VITALCAST_MQTT_URL=mqtt_url,
            VITALCAST_MQTT_CLIENT_ID=f"vc-health-{uuid.uuid4().hex[:8]}",
            VITALCAST_MQTT_SESSION_EXPIRY_S=str(SESSION_EXPIRY_S),
            VITALCAST_WORKER_HTTP_PORT=str(http_port),
        )
        try:
            health = _ready(http_port)
            assert health.status_code == 200
            assert health.json()["status"] == "ok"
            assert health.json()["broker_connected"] is True
            assert health.json()["loop_age_s"] < 5
        finally:
            _stop(proc)
        stderr.seek(0)
        logged = stderr.read()
    assert logged.splitlines()[0].startswith("consuming")
