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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.modeling_data import register_champion
from vitalcast.cli import main
from vitalcast.clinical.tables import Encounter
from vitalcast.config import Settings
from vitalcast.db.session import create_db_engine, make_session_factory
from vitalcast.modeling.registry import ARTIFACT, SIDECAR
from vitalcast.modeling.service import register_version
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.security import audit
from vitalcast.security.crypto import FieldCipher
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.predictor import load_predictor
from vitalcast.serving.realtime import EventBus
from vitalcast.serving.rescoring import rescore_stays_in_progress
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
    register_champion(db_session, trained_model)
    # A copy of the trained version under a second name stands in for a retrained model:
    # what is checked is which version scored each stay, and when.
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
