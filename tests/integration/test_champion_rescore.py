"""A new champion scores the stays in progress at once, not when each next observation
arrives.

Without this, a promotion or rollback left every ward showing the retired model's risk
(or "Not scored" for a first model) until a nurse next charted for that patient. The
tests drive the real CLI against PostgreSQL and listen on the real event channel.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from tests.modeling_data import register_champion
from vitalcast.cli import main
from vitalcast.clinical.tables import Encounter
from vitalcast.config import Settings
from vitalcast.db.session import create_db_engine, make_session_factory, session_scope
from vitalcast.modeling.registry import ARTIFACT, SIDECAR
from vitalcast.modeling.service import promote, register_version
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.security import audit
from vitalcast.security.crypto import FieldCipher
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.models import refresh_models
from vitalcast.serving.predictor import Predictor, load_predictor
from vitalcast.serving.realtime import EventBus
from vitalcast.serving.rescoring import rescore_encounters, rescore_stays_in_progress
from vitalcast.serving.state import AppState
from vitalcast.synth import generate_cohort, store_cohort

TASK = "icu-mortality"


def _cli(settings: Settings, args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, obj={"settings": settings})
    return result.exit_code, result.output


def _newest_versions(session: Session) -> dict[int, str]:
    """Each encounter's newest champion prediction, by the version that made it."""
    rows = session.execute(
        select(Prediction.encounter_id, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Prediction.role == "champion")
        .order_by(Prediction.encounter_id, Prediction.id)
    ).all()
    return {encounter_id: version for encounter_id, version in rows}


def _register_two_versions(db_session: Session, trained_model: Any, tmp_path: Path) -> str:
    """The trained model as champion, and a copy of it under a second name (returned),
    registered without an alias, both committed. The copy stands in for a retrained
    model: what is checked is which version scored each stay, and when."""
    register_champion(db_session, trained_model)
    folder = tmp_path / f"{trained_model.version}-b"
    shutil.copytree(Path(trained_model.artifact_path).parent, folder)
    sidecar = json.loads((folder / SIDECAR).read_text())
    (folder / SIDECAR).write_text(json.dumps(sidecar | {"version": folder.name}))
    second = register_version(
        db_session,
        version=folder.name,
        task=TASK,
        path=folder / ARTIFACT,
        sha256=trained_model.sha256,
        threshold=trained_model.threshold,
        metrics=trained_model.metrics,
    )
    assert second is None  # registered without an alias: the first one stays champion
    db_session.commit()
    return folder.name


def _drain(q: queue.Queue[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [q.get(timeout=10) for _ in range(n)]


def test_promote_and_rollback_rescore_stays_in_progress(
    settings: Settings,
    db_session: Session,
    cipher: FieldCipher,
    trained_model: Any,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    _register_two_versions(db_session, trained_model, tmp_path)
    store_cohort(
        session=db_session,
        batch=generate_cohort(n_current=7, n_historic=3, seed=5, now=now),
        cipher=cipher,
        now=now,
    )
    engine = create_db_engine(settings.resolved_database_url)
    try:
        sessions = make_session_factory(engine)
        first = load_predictor(sessions, TASK, "champion")
        assert first is not None
        assert rescore_stays_in_progress(sessions, first).stays == 7
        in_progress = set(
            db_session.scalars(select(Encounter.id).where(Encounter.discharged_at.is_(None)))
        )
        assert len(in_progress) == 7
        assert _newest_versions(db_session) == dict.fromkeys(in_progress, trained_model.version)

        bus = EventBus(engine)
        events = bus.subscribe()
        try:
            code, out = _cli(settings, ["models", "promote", f"{trained_model.version}-b"])
            assert code == 0, out
            assert f"rescored 7 stays in progress with {trained_model.version}-b" in out
            db_session.expire_all()
            newest = _newest_versions(db_session)
            # Every stay in progress now shows the new champion; discharged stays are
            # history and are left alone.
            assert newest == dict.fromkeys(in_progress, f"{trained_model.version}-b")
            received = _drain(events, 7)
            assert {e["type"] for e in received} == {"risk"}
            assert len({e["encounter_id"] for e in received}) == 7
            rescored = db_session.scalars(
                select(AuditEvent).where(AuditEvent.event == "prediction.rescored")
            ).all()
            assert [(e.actor, e.resource, e.details) for e in rescored] == [
                (
                    "system",
                    f"model/{trained_model.version}",
                    {"stays": 7, "reason": "champion changed"},
                ),
                (
                    "cli",
                    f"model/{trained_model.version}-b",
                    {"stays": 7, "reason": "champion changed"},
                ),
            ]

            # Rolling back rescores with the restored champion; --no-rescore leaves it.
            before = db_session.scalar(select(func.count()).select_from(Prediction))
            code, out = _cli(settings, ["models", "rollback", "--task", TASK])
            assert code == 0, out
            assert f"rescored 7 stays in progress with {trained_model.version}" in out
            db_session.expire_all()
            assert _newest_versions(db_session) == dict.fromkeys(in_progress, trained_model.version)
            assert db_session.scalar(select(func.count()).select_from(Prediction)) == before + 7
            code, out = _cli(
                settings,
                ["models", "promote", f"{trained_model.version}-b", "--no-rescore"],
            )
            assert code == 0, out
            assert "rescored" not in out
            db_session.expire_all()
            assert db_session.scalar(select(func.count()).select_from(Prediction)) == before + 7
        finally:
            bus.close()
        assert audit.verify_chain(db_session).ok
    finally:
        engine.dispose()


def test_rescoring_commits_in_chunks_each_with_its_audit_event(
    settings: Settings, db_session: Session, cipher: FieldCipher, trained_model: Any
) -> None:
    now = datetime.now(UTC)
    register_champion(db_session, trained_model)
    db_session.commit()
    store_cohort(
        session=db_session,
        batch=generate_cohort(n_current=5, n_historic=0, seed=8, now=now),
        cipher=cipher,
        now=now,
    )
    engine = create_db_engine(settings.resolved_database_url)
    try:
        sessions = make_session_factory(engine)
        champion = load_predictor(sessions, TASK, "champion")
        assert champion is not None
        done = rescore_stays_in_progress(sessions, champion, chunk=2, as_of=now)
        assert (done.version, done.stays) == (trained_model.version, 5)
        counts = db_session.scalars(
            select(AuditEvent.details)
            .where(AuditEvent.event == "prediction.rescored")
            .order_by(AuditEvent.id)
        ).all()
        assert [c["stays"] for c in counts] == [2, 2, 1]
        assert db_session.scalar(select(func.count()).select_from(Prediction)) == 5
    finally:
        engine.dispose()


# --- a server process that has not yet seen the promotion ---------------------------------
#
# Every server process keeps its own loaded champion and its watcher swaps it only at its
# next poll (every 5 s). Before scoring_models, a process that received an observation in
# that window scored the stay with the retired champion, possibly after the promotion's
# rescoring pass had scored it with the new one, and the ward kept the retired model's
# risk until the stay's next observation.


@dataclass(frozen=True)
class Race:
    """Two registered versions (the first champion), a server process's state with the
    first loaded and no watcher (it sees a promotion only when something in it looks at
    the registry), and the session the test changes the registry with."""

    first: str
    second: str
    state: AppState
    db: Session

    def version_id(self, version: str) -> int:
        found = self.db.scalar(select(ModelVersion.id).where(ModelVersion.version == version))
        assert found is not None
        return found

    def promote_second(self) -> None:
        promote(self.db, version=self.second, agent=audit.CLI)
        self.db.commit()


@pytest.fixture
def race(
    settings: Settings,
    db_session: Session,
    cipher: FieldCipher,
    trained_model: Any,
    tmp_path: Path,
) -> Iterator[Race]:
    second = _register_two_versions(db_session, trained_model, tmp_path)
    engine = create_db_engine(settings.resolved_database_url)
    state = AppState(
        settings=settings, engine=engine, sessions=make_session_factory(engine), cipher=cipher
    )
    refresh_models(state, TASK)
    try:
        yield Race(trained_model.version, second, state, db_session)
    finally:
        state.close()


def _open_stays(db_session: Session, cipher: FieldCipher, n: int, seed: int) -> list[int]:
    now = datetime.now(UTC)
    store_cohort(
        session=db_session,
        batch=generate_cohort(n_current=n, n_historic=0, seed=seed, now=now),
        cipher=cipher,
        now=now,
    )
    return list(db_session.scalars(select(Encounter.id).order_by(Encounter.id)))


def test_a_process_whose_watcher_has_not_polled_scores_with_the_new_champion(
    race: Race, cipher: FieldCipher
) -> None:
    stays = _open_stays(race.db, cipher, 2, seed=21)
    assert race.state.predictor is not None
    assert race.state.predictor.version == race.first
    race.promote_second()  # committed; the process has not polled

    with session_scope(race.state.sessions) as session:
        served = rescore_encounters(session, race.state, stays)
    new_id = race.version_id(race.second)
    assert [p.model_version_id for p in served] == [new_id, new_id]
    assert _newest_versions(race.db) == dict.fromkeys(stays, race.second)
    assert race.state.predictor is not None
    assert race.state.predictor.model_version_id == new_id


def test_a_champion_that_fails_to_load_is_not_retried_by_every_scoring(
    race: Race, cipher: FieldCipher
) -> None:
    """A promoted artifact this process cannot load (here: its registered hash is wrong)
    leaves the previous champion serving, as the watcher does; scoring does not pay a
    failed load on every request, the watcher retries it each interval."""
    stays = _open_stays(race.db, cipher, 1, seed=22)
    row = race.db.scalar(select(ModelVersion).where(ModelVersion.version == race.second))
    assert row is not None
    row.sha256 = "0" * 64
    race.promote_second()
    for _ in range(2):
        with session_scope(race.state.sessions) as session:
            served = rescore_encounters(session, race.state, stays)
        assert [p.model_version_id for p in served] == [race.version_id(race.first)]
        assert race.state.unloadable == {"champion": row.id}


def _in_thread(work: Any) -> tuple[threading.Thread, threading.Event, list[Any]]:
    """Run ``work`` in a daemon thread; the event is set when it returns (its result, or
    the exception it raised, is appended to the list)."""
    done, out = threading.Event(), []

    def run() -> None:
        try:
            out.append(work())
        except Exception as exc:  # reported by the test, which fails on it
            out.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done, out


def _bounded(session: Session) -> Session:
    """No lock wait of this test's transaction can hang the suite."""
    session.execute(text("SET LOCAL lock_timeout = '30s'"))
    return session


def test_a_promotion_waits_for_a_scoring_transaction_that_read_the_old_champion(
    race: Race, cipher: FieldCipher
) -> None:
    """The scoring transaction confirmed the old champion and has not committed: the
    promotion cannot commit before it does, so the promotion's rescoring pass (which runs
    after that commit) is sure to overwrite the old model's prediction."""
    stays = _open_stays(race.db, cipher, 1, seed=23)
    scoring = _bounded(race.state.sessions())
    try:
        served = rescore_encounters(scoring, race.state, stays)
        assert served[0].model_version_id == race.version_id(race.first)

        def promote_second() -> float:
            with session_scope(race.state.sessions) as session:
                promote(_bounded(session), version=race.second, agent=audit.CLI)
            return time.monotonic()

        thread, promoted, out = _in_thread(promote_second)
        assert not promoted.wait(1.0), out  # blocked behind the scoring transaction
        scoring.commit()
        committed = time.monotonic()
        assert promoted.wait(30), "the promotion did not finish"
        thread.join(5)
        assert isinstance(out[0], float), out
        assert out[0] >= committed
    finally:
        scoring.close()  # rolls back on failure: no open transaction outlives the test
    new = _loaded(race.state, race.second)
    assert rescore_stays_in_progress(race.state.sessions, new).stays == 1
    assert _newest_versions(race.db) == dict.fromkeys(stays, race.second)


def test_a_scoring_transaction_that_waited_for_a_promotion_scores_with_the_new_champion(
    race: Race, cipher: FieldCipher
) -> None:
    """The promotion has changed the alias and written its audit event but not committed:
    a scoring transaction waits for it, then reads the alias afresh (READ COMMITTED gives
    each statement its own snapshot, so the read must follow the lock, not share its
    statement) and scores with the new champion."""
    stays = _open_stays(race.db, cipher, 1, seed=24)
    promotion = _bounded(race.state.sessions())
    try:
        promote(promotion, version=race.second, agent=audit.CLI)

        def score() -> list[int]:
            with session_scope(race.state.sessions) as session:
                served = rescore_encounters(_bounded(session), race.state, stays)
                return [p.model_version_id for p in served]

        thread, scored, out = _in_thread(score)
        assert not scored.wait(1.0), out  # blocked behind the uncommitted promotion
        promotion.commit()
        assert scored.wait(60), "the scoring did not finish"
        thread.join(5)
    finally:
        promotion.close()
    assert out == [[race.version_id(race.second)]]
    assert _newest_versions(race.db) == dict.fromkeys(stays, race.second)


def test_a_rescoring_pass_stops_when_its_champion_is_superseded(
    race: Race, cipher: FieldCipher
) -> None:
    """Two promotions in a row: the first one's pass, still running, must not store its
    model's risks after the second one's pass; a superseded chunk is rolled back."""
    _open_stays(race.db, cipher, 3, seed=25)
    first = race.state.predictor
    assert first is not None
    race.promote_second()
    done = rescore_stays_in_progress(race.state.sessions, first, chunk=2)
    assert (done.version, done.stays, done.superseded) == (race.first, 0, True)
    assert race.db.scalar(select(func.count()).select_from(Prediction)) == 0
    assert not race.db.scalars(
        select(AuditEvent).where(AuditEvent.event == "prediction.rescored")
    ).all()


def _loaded(state: AppState, version: str) -> Predictor:
    refresh_models(state, TASK)
    assert state.predictor is not None
    assert state.predictor.version == version
    return state.predictor
