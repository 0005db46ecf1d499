"""Counters of what was stored move only when it was committed (db/session.after_commit).

Before, ``POST /api/v1/observations`` counted its records and every stored prediction was
counted at the write: a unit of work rolled back afterwards still counted as stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, select, text

from tests.modeling_data import register_champion
from vitalcast.clinical.tables import Encounter
from vitalcast.db.session import after_commit, make_session_factory, session_scope
from vitalcast.security.crypto import FieldCipher
from vitalcast.serving.predictor import load_predictor
from vitalcast.serving.scoring import score_encounter
from vitalcast.synth import generate_cohort, store_cohort


def test_callbacks_run_at_commit_only(pg_engine: Engine) -> None:
    sessions = make_session_factory(pg_engine)
    calls: list[str] = []
    with sessions() as session:
        session.execute(text("SELECT 1"))
        after_commit(session, lambda: calls.append("rolled back"))
        session.rollback()
        session.execute(text("SELECT 1"))
        session.commit()  # a later transaction of the same session runs nothing of it
        assert calls == []

        session.execute(text("SELECT 1"))
        after_commit(session, lambda: calls.append("outer"))
        with session.begin_nested():
            after_commit(session, lambda: calls.append("inner"))
        nested = session.begin_nested()
        nested.rollback()  # a savepoint rolled back keeps the outer transaction's
        assert calls == []
        session.commit()
        assert calls == ["outer", "inner"]
        session.commit()
        assert calls == ["outer", "inner"]  # once


def _predictions(version: str) -> float:
    total = 0.0
    for band in ("low", "medium", "high"):
        labels = {"model_version": version, "band": band, "role": "champion"}
        total += REGISTRY.get_sample_value("vitalcast_predictions_total", labels) or 0.0
    return total


def test_a_prediction_rolled_back_is_not_counted(
    pg_engine: Engine, cipher: FieldCipher, trained_model: Any
) -> None:
    sessions = make_session_factory(pg_engine)
    now = datetime.now(UTC)
    with session_scope(sessions) as s:
        register_champion(s, trained_model)
    with sessions() as s:
        batch = generate_cohort(n_current=1, n_historic=0, seed=11, now=now)
        store_cohort(session=s, batch=batch, cipher=cipher, now=now)
    champion = load_predictor(sessions, "icu-mortality", "champion")
    assert champion is not None
    before = _predictions(champion.version)

    class Abandoned(Exception):
        pass

    def score_then_fail() -> None:
        with session_scope(sessions) as s:
            stay = s.scalars(select(Encounter).where(Encounter.discharged_at.is_(None))).one()
            score_encounter(s, champion, stay)
            raise Abandoned

    with pytest.raises(Abandoned):
        score_then_fail()
    assert _predictions(champion.version) == before

    with session_scope(sessions) as s:
        stay = s.scalars(select(Encounter).where(Encounter.discharged_at.is_(None))).one()
        score_encounter(s, champion, stay)
    assert _predictions(champion.version) == before + 1
