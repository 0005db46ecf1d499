"""Readings from bedside streams (MQTT, HL7 v2 over MLLP) rescore their stays.

Before this, only ``POST /api/v1/observations`` rescored: a stay fed by its monitors kept
its old risk, or "Not scored", on the ward. The first two tests drive the real commands
(``vitalcast stream mqtt``, ``vitalcast listen hl7``) against the real broker and
PostgreSQL; the others run the consumer in-process with a clock the test moves.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from tests.hl7_samples import ADT_A01, ORU_R01
from tests.modeling_data import register_champion
from tests.mqtt_helpers import SESSION_EXPIRY_S, Publisher, consuming
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.config import Settings
from vitalcast.db.session import make_session_factory, session_scope
from vitalcast.ingest.devices import bind_device
from vitalcast.ingest.mllp import send_messages
from vitalcast.ingest.mqtt import DeviceStreamConsumer, MqttConfig, parse_mqtt_url
from vitalcast.modeling.tables import Prediction
from vitalcast.security.crypto import FieldCipher
from vitalcast.serving.predictor import load_predictor
from vitalcast.serving.realtime import EventBus
from vitalcast.serving.rescoring import rescore_stays_in_progress, stays_with_unscored_data
from vitalcast.serving.stream_scoring import StreamScorer, open_stream_scorer
from vitalcast.synth import generate_cohort, store_cohort

DEVICE = "bed-3"


@dataclass
class Ward:
    """A champion, stays in progress, and a monitor bound to one of them."""

    encounter_id: int
    encounter_public_id: str


@pytest.fixture
def ward(pg_engine: Engine, cipher: FieldCipher, trained_model: Any) -> Ward:
    sessions = make_session_factory(pg_engine)
    with session_scope(sessions) as s:
        register_champion(s, trained_model)
    _store_stays(sessions, cipher, in_progress=3)
    with session_scope(sessions) as s:
        encounter, patient = s.execute(
            select(Encounter, Patient.public_id)
            .join(Patient, Patient.id == Encounter.patient_id)
            .where(Encounter.discharged_at.is_(None))
            .order_by(Encounter.id)
            .limit(1)
        ).one()
        bind_device(
            s,
            device_id=DEVICE,
            patient_public_id=patient,
            encounter_public_id=encounter.public_id,
            now=encounter.admitted_at,
        )
        return Ward(encounter.id, encounter.public_id)


@pytest.fixture
def scored_ward(pg_engine: Engine, ward: Ward) -> Ward:
    """The ward with a champion risk for every stay, as after a promotion's rescoring: a
    stream command finds nothing left unscored at start (``StreamScorer.catch_up``)."""
    sessions = make_session_factory(pg_engine)
    champion = load_predictor(sessions, "icu-mortality", "champion")
    assert champion is not None
    assert rescore_stays_in_progress(sessions, champion).stays == 3
    with sessions() as s:
        assert stays_with_unscored_data(s) == []
    return ward


def _store_stays(
    sessions: sessionmaker[Session], cipher: FieldCipher, *, in_progress: int, discharged: int = 0
) -> None:
    """Synthetic stays admitted before now: some in progress, some discharged."""
    now = datetime.now(UTC)
    batch = generate_cohort(n_current=in_progress, n_historic=discharged, seed=5, now=now)
    with sessions() as s:
        store_cohort(session=s, batch=batch, cipher=cipher, now=now)


def _reading(value: float, at: datetime | None = None) -> dict[str, object]:
    at = at or datetime.now(UTC) - timedelta(seconds=5)
    return {"code": "8867-4", "value": value, "unit": "/min", "time": at.isoformat()}


def _predictions(engine: Engine, encounter_id: int) -> int:
    with make_session_factory(engine)() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(Prediction)
                .where(Prediction.encounter_id == encounter_id, Prediction.role == "champion")
            )
            or 0
        )


def _observations(engine: Engine) -> int:
    with make_session_factory(engine)() as s:
        return int(s.scalar(select(func.count()).select_from(Observation)) or 0)


def _wait(check: Callable[[], bool], timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "VITALCAST_ENV": "test",
        "VITALCAST_DATA_DIR": str(settings.data_dir),
        "VITALCAST_DATABASE_URL": str(settings.database_url),
        # Their stderr is a pipe read only at the end: INFO lines (one per batch or
        # message) could fill it and block the process.
        "VITALCAST_LOG_LEVEL": "WARNING",
        **extra,
    }


def _cli() -> str:
    return str(Path(sys.executable).with_name("vitalcast"))


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def _start_stream_mqtt(env: dict[str, str], prefix: str) -> subprocess.Popen[str]:
    """``vitalcast stream mqtt`` as a process, once it says it is consuming."""
    proc = subprocess.Popen(
        [_cli(), "stream", "mqtt", "--topic-prefix", prefix],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith("consuming")
    return proc


@pytest.fixture
def events(pg_engine: Engine) -> Iterator[queue.Queue[dict[str, Any]]]:
    bus = EventBus(pg_engine)
    q = bus.subscribe()
    time.sleep(0.5)  # the listener thread is LISTENing before anything is published
    yield q
    bus.close()


def _event_for(q: queue.Queue[dict[str, Any]], encounter_public_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        event = q.get(timeout=max(0.1, deadline - time.monotonic()))
        if event.get("encounter_id") == encounter_public_id:
            return event
    raise AssertionError("no risk event for the stay")


def test_stream_mqtt_rescores_the_stay_and_announces_it(
    mqtt_url: str,
    settings: Settings,
    pg_engine: Engine,
    scored_ward: Ward,
    events: queue.Queue[dict[str, Any]],
) -> None:
    ward = scored_ward
    prefix = f"vc-test-{uuid.uuid4().hex[:8]}/devices"
    env = _env(
        settings,
        VITALCAST_MQTT_URL=mqtt_url,
        VITALCAST_MQTT_CLIENT_ID=f"vc-score-{uuid.uuid4().hex[:8]}",
        VITALCAST_MQTT_SESSION_EXPIRY_S=str(SESSION_EXPIRY_S),
    )
    proc = _start_stream_mqtt(env, prefix)
    try:
        before = _observations(pg_engine)
        pub = Publisher(mqtt_url, f"pub-{uuid.uuid4().hex[:8]}")
        # Sent once: "consuming" is printed after the broker confirmed the subscription.
        pub.publish(f"{prefix}/{DEVICE}/observations", _reading(131))
        pub.close()
        assert _wait(lambda: _observations(pg_engine) == before + 1)
        assert _wait(lambda: _predictions(pg_engine, ward.encounter_id) == 2)
        event = _event_for(events, ward.encounter_public_id)
        assert event["type"] == "risk"
    finally:
        _stop(proc)


def test_a_stay_waiting_when_the_consumer_was_killed_is_scored_at_restart(
    mqtt_url: str, settings: Settings, pg_engine: Engine, scored_ward: Ward
) -> None:
    """A reading stored within the stay's interval waits to be scored; the consumer is
    killed (SIGKILL: no clean stop scores it) and the restarted one scores the stay with
    no further data."""
    ward = scored_ward
    prefix = f"vc-test-{uuid.uuid4().hex[:8]}/devices"
    env = _env(
        settings,
        VITALCAST_MQTT_URL=mqtt_url,
        VITALCAST_MQTT_CLIENT_ID=f"vc-kill-{uuid.uuid4().hex[:8]}",
        VITALCAST_MQTT_SESSION_EXPIRY_S=str(SESSION_EXPIRY_S),
        VITALCAST_STREAM_RESCORE_INTERVAL_S="600",
    )

    first = _start_stream_mqtt(env, prefix)
    pub = Publisher(mqtt_url, f"pub-{uuid.uuid4().hex[:8]}")
    topic = f"{prefix}/{DEVICE}/observations"
    before = _observations(pg_engine)

    def stored(n: int, value: float) -> bool:
        pub.publish(topic, _reading(value))  # once: "consuming" follows the broker's SUBACK
        pub.flush()
        return _wait(lambda: _observations(pg_engine) == before + n)

    try:
        assert stored(1, 120)
        assert _wait(lambda: _predictions(pg_engine, ward.encounter_id) == 2)  # at once
        assert stored(2, 150)  # within the interval: waits
        time.sleep(1.0)  # several flushes of the consumer loop
        assert _predictions(pg_engine, ward.encounter_id) == 2
    finally:
        pub.close()
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
    assert _predictions(pg_engine, ward.encounter_id) == 2
    with make_session_factory(pg_engine)() as s:
        assert stays_with_unscored_data(s) == [ward.encounter_id]

    second = _start_stream_mqtt(env, prefix)
    try:
        assert _wait(lambda: _predictions(pg_engine, ward.encounter_id) == 3)
    finally:
        _stop(second)
    with make_session_factory(pg_engine)() as s:
        assert stays_with_unscored_data(s) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_listen_hl7_rescores_the_stay_after_the_ack(
    settings: Settings,
    pg_engine: Engine,
    ward: Ward,
    events: queue.Queue[dict[str, Any]],
) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [_cli(), "listen", "hl7", "--port", str(port)],
        env=_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("listening")
    sessions = make_session_factory(pg_engine)
    with sessions() as s:
        known = set(s.scalars(select(Encounter.id)))
    try:
        acks = send_messages("127.0.0.1", port, [ADT_A01, ORU_R01])
        assert all("MSA|AA|" in ack for ack in acks)
        with sessions() as s:
            (stay,) = s.scalars(select(Encounter).where(Encounter.id.not_in(known))).all()
        assert _wait(lambda: _predictions(pg_engine, stay.id) == 1)
        assert _event_for(events, stay.public_id)["type"] == "risk"
    finally:
        _stop(proc)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Running:
    consumer: DeviceStreamConsumer
    scorer: StreamScorer
    publisher: Publisher
    topic: str

    def send(self, value: float) -> None:
        """Publish one reading and wait until it is stored and acknowledged."""
        done = self.consumer.stats.messages + 1
        self.publisher.publish(self.topic, _reading(value))
        self.publisher.flush()
        assert _wait(lambda: self.consumer.stats.messages == done)


@pytest.fixture
def running(
    mqtt_url: str, settings: Settings, pg_engine: Engine, cipher: FieldCipher, ward: Ward
) -> Iterator[tuple[Running, Clock]]:
    clock = Clock()
    sessions = make_session_factory(pg_engine)
    scorer = open_stream_scorer(settings, sessions, cipher, source="mqtt", clock=clock)
    assert scorer.interval_s == 60  # the default
    prefix = f"vc-test-{uuid.uuid4().hex[:8]}/devices"
    config = MqttConfig(
        **parse_mqtt_url(mqtt_url),
        client_id=f"vc-{uuid.uuid4().hex[:8]}",
        topic_prefix=prefix,
        batch_size=50,
        batch_wait_s=0.05,
        session_expiry_s=SESSION_EXPIRY_S,
    )
    consumer = DeviceStreamConsumer(sessions, cipher, config, scorer=scorer)
    try:
        with consuming(consumer):
            pub = Publisher(mqtt_url, f"pub-{uuid.uuid4().hex[:8]}")
            try:
                yield Running(consumer, scorer, pub, f"{prefix}/{DEVICE}/observations"), clock
            finally:
                pub.close()
    finally:
        scorer.state.stopping.set()


def test_batches_within_the_interval_give_one_prediction_and_the_due_stay_is_scored(
    running: tuple[Running, Clock], pg_engine: Engine, ward: Ward
) -> None:
    run, clock = running
    run.send(120)
    assert _wait(lambda: _predictions(pg_engine, ward.encounter_id) == 1)
    for value in (121, 122, 123):  # within the interval: noted, not scored
        clock.now += 5
        run.send(value)
    time.sleep(1.0)  # several idle flushes of the consumer loop
    assert _predictions(pg_engine, ward.encounter_id) == 1
    assert run.scorer.pending == 1
    clock.now += 60  # the interval since the first score has passed; no new message
    assert _wait(lambda: _predictions(pg_engine, ward.encounter_id) == 2)
    assert run.scorer.pending == 0
    time.sleep(0.6)
    assert _predictions(pg_engine, ward.encounter_id) == 2


def test_a_scoring_failure_loses_no_reading_and_the_stay_is_retried(
    running: tuple[Running, Clock],
    pg_engine: Engine,
    ward: Ward,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run, clock = running
    predictor = run.scorer.state.predictor
    assert predictor is not None

    def fails(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a model that cannot score")

    monkeypatch.setattr(predictor, "score", fails)  # the model fails, not the database
    before = _observations(pg_engine)
    run.send(140)  # stored and acknowledged although its stay cannot be scored
    assert _wait(lambda: run.scorer.stats.failed == 1)
    assert _observations(pg_engine) == before + 1
    assert _predictions(pg_engine, ward.encounter_id) == 0
    assert run.scorer.pending == 1
    assert "stream rescoring failed" in caplog.text
    assert ward.encounter_public_id not in caplog.text
    time.sleep(0.6)
    assert run.scorer.stats.failed == 1  # not retried at every flush: after retry_s
    monkeypatch.undo()
    clock.now += run.scorer.retry_s
    assert _wait(lambda: _predictions(pg_engine, ward.encounter_id) == 1)
    assert run.scorer.pending == 0


def test_stays_are_counted_as_scored_only_when_a_champion_scored_them(
    settings: Settings, pg_engine: Engine, cipher: FieldCipher, trained_model: Any
) -> None:
    """Without a champion, or for a discharged stay, nothing is stored: the totals (and the
    import reports built on them) must not count such stays as scored."""
    sessions = make_session_factory(pg_engine)
    _store_stays(sessions, cipher, in_progress=1, discharged=1)
    with sessions() as s:
        stays = dict(s.execute(select(Encounter.discharged_at.is_(None), Encounter.id)).all())
    in_progress, discharged = stays[True], stays[False]
    scorer = open_stream_scorer(settings, sessions, cipher, source="mqtt", watch=False)
    try:
        scorer.touched([in_progress, discharged])
        assert scorer.flush() == 0  # no champion
        assert scorer.stats.scored == 0
        with session_scope(sessions) as s:
            register_champion(s, trained_model)
        scorer.touched([in_progress, discharged])
        assert scorer.flush(everything=True) == 1  # the discharged stay is not scored
        assert scorer.stats.scored == 1
        assert scorer.stats.failed == 0
        assert _predictions(pg_engine, in_progress) == 1
        assert _predictions(pg_engine, discharged) == 0
    finally:
        scorer.close()
