"""Governed retraining on the store: temporal holdout, gate, promotion or refusal, audit."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.config import Settings
from vitalcast.ingest.service import store_batch
from vitalcast.modeling.service import get_champion
from vitalcast.modeling.train import CandidateSpec
from vitalcast.monitoring.gate import GatePolicy
from vitalcast.monitoring.retrain import retrain
from vitalcast.security.crypto import FieldCipher
from vitalcast.security.tables import AuditEvent
from vitalcast.synth.cohort import generate_cohort

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SMALL = (CandidateSpec("logistic-l2-C0.05", "lr", {"C": 0.05}),)
FAST = {"budget": SMALL, "n_splits": 3, "n_boot": 0}


@pytest.mark.slow
def test_retrain_promotes_only_through_the_gate(
    db_session: Session, cipher: FieldCipher, settings: Settings, tmp_path: Path
) -> None:
    batch = generate_cohort(n_current=0, n_historic=400, seed=7, now=NOW)
    store_batch(db_session, batch, source="synthetic", location="test", cipher=cipher, now=NOW)
    db_session.flush()
    settings = settings.model_copy(update={"registry_dir": tmp_path / "registry"})
    # Half of the synthetic history (spread over its years) forms the holdout.
    holdout_days = 365.0

    first = retrain(
        db_session,
        settings=settings,
        task="icu-mortality",
        holdout_days=holdout_days,
        now=NOW,
        **FAST,
    )  # type: ignore[arg-type]
    assert first.alias == "champion"  # no champion before: the first model becomes one
    assert first.holdout_stays > 0
    assert first.train_stays > 0

    # A challenger that must be better by 0.05 AUROC (an impossible bar for the same
    # recipe on the same data) is refused, and the refusal says why.
    strict = GatePolicy(min_events=20, max_auroc_drop=-0.05)
    refused = retrain(
        db_session,
        settings=settings,
        task="icu-mortality",
        holdout_days=holdout_days,
        auto_promote=True,
        now=NOW,
        policy=strict,
        **FAST,
    )  # type: ignore[arg-type]
    assert not refused.promoted
    assert refused.alias == "challenger"
    assert any("AUROC" in reason for reason in refused.gate.reasons)
    champion = get_champion(db_session, "icu-mortality")
    assert champion is not None
    assert champion.version == first.version

    # Promotion when the gate passes. A model trained on ~200 synthetic stays is not
    # calibrated at the 48 h landmark (holdout slopes of 0.76 and 9.6 were measured with
    # two versions of the feature set), and the default gate rightly refuses it. This
    # test therefore states a discrimination-only policy to exercise the promotion path;
    # the calibration and subgroup criteria are tested in tests/unit/monitoring/test_gate.py
    # on 20,000-stay holdouts where they are powered.
    inf = float("inf")
    wide = GatePolicy(min_events=20, slope_range=(-inf, inf), max_abs_intercept=inf)
    accepted = retrain(
        db_session,
        settings=settings,
        task="icu-mortality",
        holdout_days=holdout_days,
        auto_promote=True,
        now=NOW,
        policy=wide,
        **FAST,
    )  # type: ignore[arg-type]
    assert accepted.gate.passed, accepted.gate.reasons
    assert accepted.promoted
    champion = get_champion(db_session, "icu-mortality")
    assert champion is not None
    assert champion.version == accepted.version

    events = [
        (e.event, (e.details or {}).get("gate_passed"), (e.details or {}).get("alias"))
        for e in db_session.scalars(select(AuditEvent).order_by(AuditEvent.id))
        if e.event.startswith("model.")
    ]
    assert events == [
        ("model.registered", None, "champion"),  # the first model of the task
        ("model.retrained", first.gate.passed, None),  # recorded; it needs no gate
        ("model.registered", None, None),
        ("model.promoted", None, "challenger"),
        ("model.retrained", False, None),
        ("model.registered", None, None),
        ("model.promoted", None, "challenger"),
        ("model.retrained", True, None),
        ("model.promoted", None, "champion"),  # by the gate
    ]
