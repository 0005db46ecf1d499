"""Real time across processes: an observation posted to one gunicorn worker reaches an SSE
subscriber served by any worker, rescored, within a second or two."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.live import LiveServer, live_server
from tests.modeling_data import register_champion
from tests.services import DatabaseFactory
from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.config import load_settings
from vitalcast.db import create_db_engine, session_scope
from vitalcast.db.session import make_session_factory
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.security.service import create_api_key
from vitalcast.serving.realtime import STREAM_RETRY_AFTER_S
from vitalcast.serving.threads import REQUEST_THREADS_PER_WORKER
from vitalcast.synth import generate_cohort, store_cohort


@pytest.fixture
def served(
    databases: DatabaseFactory, trained_model: Any, tmp_path: Path
) -> Iterator[tuple[LiveServer, dict[str, str], list[tuple[str, str]]]]:
    url = databases.new()
    home = tmp_path / "var"
    settings = load_settings(env="test", data_dir=home, database_url=url)
    engine = create_db_engine(url)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    with sessions() as session:
        store_cohort(
            session=session,
            batch=generate_cohort(n_current=5, n_historic=0, seed=3, now=now),
            cipher=cipher_from_settings(settings),
            now=now,
        )
    with session_scope(sessions) as session:
        register_champion(session, trained_model)
        _, key = create_api_key(session, name="e2e", role="integration")
        stays = [
            (p, e)
            for p, e in session.execute(
                select(Patient.public_id, Encounter.public_id).join(
                    Encounter, Encounter.patient_id == Patient.id
                )
            )
        ]
    engine.dispose()
    env = {"VITALCAST_ENV": "test", "VITALCAST_DATA_DIR": str(home), "VITALCAST_DATABASE_URL": url}
    with live_server(env, workers=2) as server:
        yield server, {"Authorization": f"Bearer {key}"}, stays


def _listen(
    url: str,
    headers: dict[str, str],
    out: queue.Queue[dict[str, Any]],
    ready: threading.Event,
    stop: threading.Event,
) -> None:
    with httpx.stream("GET", f"{url}/api/v1/events", headers=headers, timeout=30.0) as response:
        ready.set()
        for line in response.iter_lines():
            if line.startswith("data: "):
                out.put(json.loads(line[6:]))
            if stop.is_set():
                return


def test_posted_observation_reaches_sse_subscribers(
    served: tuple[LiveServer, dict[str, str], list[tuple[str, str]]],
) -> None:
    server, headers, stays = served
    patient_id, encounter_id = stays[0]
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    listeners = []
    stop = threading.Event()
    for _ in range(3):  # several streams, so that both workers hold subscribers
        ready = threading.Event()
        t = threading.Thread(
            target=_listen, args=(server.url, headers, events, ready, stop), daemon=True
        )
        t.start()
        assert ready.wait(10), "SSE stream did not open"
        listeners.append(t)
    time.sleep(0.5)
    body = [
        {
            "code": "8867-4",
            "value": 131,
            "unit": "/min",
            "time": datetime.now(UTC).isoformat(),
            "patient": patient_id,
            "encounter": encounter_id,
        }
    ]
    response = httpx.post(
        f"{server.url}/api/v1/observations", json=body, headers=headers, timeout=10.0
    )
    assert response.status_code == 201, response.text
    assert response.json()["report"]["stored"] == 1
    received = []
    deadline = time.monotonic() + 10.0  # generous: this checks delivery, bench/ measures latency
    while len(received) < 3 and time.monotonic() < deadline:
        try:
            received.append(events.get(timeout=0.2))
        except queue.Empty:
            continue
    stop.set()
    assert len(received) == 3, (
        f"only {len(received)} of 3 streams got the event:\n" + server.log.read_text()[-2000:]
    )
    assert {e["patient_id"] for e in received} == {patient_id}
    assert received[0]["probability"] == response.json()["rescored"][0]["probability"]


def test_live_streams_leave_a_request_thread_free(
    databases: DatabaseFactory, trained_model: Any, tmp_path: Path
) -> None:
    """One worker: its stream slots fill, the next stream is refused with 503 and
    Retry-After, an ordinary request is still served at once, and a slot comes back when
    a browser goes away."""
    url = databases.new()
    home = tmp_path / "var"
    home.mkdir()
    engine = create_db_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        register_champion(session, trained_model)  # /readyz waits for a champion
        _, key = create_api_key(session, name="viewer", role="integration")
    engine.dispose()
    env = {"VITALCAST_ENV": "test", "VITALCAST_DATA_DIR": str(home), "VITALCAST_DATABASE_URL": url}
    headers = {"Authorization": f"Bearer {key}"}
    slots = REQUEST_THREADS_PER_WORKER - 1
    with live_server(env, workers=1) as server, ExitStack() as stack:
        events = f"{server.url}/api/v1/events"
        open_streams = [
            stack.enter_context(httpx.stream("GET", events, headers=headers, timeout=30.0))
            for _ in range(slots)
        ]
        assert [r.status_code for r in open_streams] == [200] * slots
        refused = httpx.get(events, headers=headers, timeout=5.0)
        assert refused.status_code == 503
        # At least the stream's own delay (flask-limiter raises Retry-After to the end of
        # the rate-limit window when that is later).
        assert int(refused.headers["Retry-After"]) >= STREAM_RETRY_AFTER_S
        assert refused.json()["error"]["code"] == "busy"
        started = time.monotonic()
        page = httpx.get(f"{server.url}/api/v1/patients", headers=headers, timeout=5.0)
        assert page.status_code == 200
        assert time.monotonic() - started < 2.0
        open_streams[0].close()  # a browser goes away; noticed at the next heartbeat
        deadline = time.monotonic() + 20
        while True:
            with httpx.stream("GET", events, headers=headers, timeout=30.0) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed stream's slot never came back"
            time.sleep(0.5)
