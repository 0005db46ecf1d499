"""The demo's risk history: hourly past scores equal to what live scoring gave at each hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.modeling_data import register_champion
from vitalcast.clinical.tables import Encounter
from vitalcast.config import Settings
from vitalcast.db import session_scope
from vitalcast.db.session import make_session_factory
from vitalcast.modeling.tables import Prediction
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.serving.demo import score_with_history
from vitalcast.serving.patients import list_ward
from vitalcast.serving.predictor import load_predictor
from vitalcast.serving.scoring import score_encounter
from vitalcast.synth import generate_cohort, store_cohort


def test_history_is_hourly_scored_like_live_and_current_score_is_newest(
    settings: Settings, pg_engine: Engine, trained_model: Any
) -> None:
    sessions = make_session_factory(pg_engine)
    now = datetime(2026, 6, 1, 12, 30, tzinfo=UTC)
    with session_scope(sessions) as session:
        register_champion(session, trained_model)
    batch = generate_cohort(n_current=6, n_historic=0, seed=21, now=now)
    with sessions() as session:
        store_cohort(session=session, batch=batch, cipher=cipher_from_settings(settings), now=now)
    predictor = load_predictor(sessions, "icu-mortality", "champion")
    assert predictor is not None

    with session_scope(sessions) as session:
        encounters = session.scalars(select(Encounter).order_by(Encounter.id)).all()
        for encounter in encounters:
            stored = score_with_history(session, predictor, encounter, now=now)
            since = max(now - timedelta(hours=24), encounter.admitted_at + timedelta(hours=1))
            rows = session.scalars(
                select(Prediction)
                .where(Prediction.encounter_id == encounter.id)
                .order_by(Prediction.id)
            ).all()
            assert len(rows) == stored
            past, current = rows[:-1], rows[-1]
            assert current.as_of == now
            assert current.explanation  # the current score is explained, past ones need not be
            assert [p.as_of for p in rows] == sorted(p.as_of for p in rows)
            assert all(p.as_of.minute == 0 and p.as_of >= since for p in past)
            assert all(b.as_of - a.as_of == timedelta(hours=1) for a, b in pairwise(past))
            # Hourly since admission (or the last 24 h): no hour missing at either end.
            assert not past or past[0].as_of - since < timedelta(hours=1)
            assert not past or now - past[-1].as_of <= timedelta(hours=1)

    # Each past score is what live scoring computed from the data as of that hour.
    with Session(pg_engine) as session:
        longest = max(encounters, key=lambda e: now - e.admitted_at)
        enc = session.get(Encounter, longest.id)
        assert enc is not None
        history = session.scalars(
            select(Prediction).where(Prediction.encounter_id == enc.id).order_by(Prediction.as_of)
        ).all()
        assert len(history) >= 3
        for past in (history[0], history[len(history) // 2]):
            live = score_encounter(session, predictor, enc, as_of=past.as_of)
            assert abs(live.score - past.score) < 1e-12
            assert live.features_digest == past.features_digest
        session.rollback()

        # The ward reads the current score as the stay's risk, not an older one.
        rows, _ = list_ward(session, limit=50)
        newest = {
            e.public_id: session.scalars(
                select(Prediction.score).where(
                    Prediction.encounter_id == e.id, Prediction.as_of == now
                )
            ).one()
            for e in encounters
        }
        assert {r.encounter_id: r.score for r in rows} == newest
