"""Governed retraining on the store: temporal holdout, gate, promotion or refusal, audit.

Retraining registers a challenger and never installs a champion by registration, not even
for a task without one (docs/maintenance-plan.md, section 4): the gate (with
--auto-promote) or a person promotes, and the gate promotes only over the champion it
judged the challenger against.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from vitalcast.cli import main
from vitalcast.config import Settings
from vitalcast.db.base import utcnow
from vitalcast.ingest.service import store_batch
from vitalcast.modeling.service import get_champion, promote, train_and_register
from vitalcast.modeling.tables import Prediction
from vitalcast.modeling.train import CandidateSpec
from vitalcast.monitoring.gate import GatePolicy
from vitalcast.monitoring.retrain import retrain
from vitalcast.security import audit
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

    # No champion yet: the gate has nothing to compare with, so even --auto-promote leaves
    # the first model a challenger for a person to review and promote.
    first = retrain(
        db_session,
        settings=settings,
        task="icu-mortality",
        holdout_days=holdout_days,
        auto_promote=True,
        now=NOW,
        **FAST,
    )  # type: ignore[arg-type]
    assert first.alias == "challenger"
    assert not first.promoted
    assert first.not_promoted is not None
    assert "has no champion" in first.not_promoted
    assert get_champion(db_session, "icu-mortality") is None
    assert first.holdout_stays > 0
    assert first.train_stays > 0
    promote(db_session, version=first.version, agent=audit.Agent("user:reviewer"))
    db_session.commit()

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
        ("model.registered", None, None),  # never champion by registration
        ("model.promoted", None, "challenger"),
        ("model.retrained", first.gate.passed, None),
        ("model.promoted", None, "champion"),  # by a person
        ("model.registered", None, None),
        ("model.promoted", None, "challenger"),
        ("model.retrained", False, None),
        ("model.registered", None, None),
        ("model.promoted", None, "challenger"),
        ("model.retrained", True, None),
        ("model.promoted", None, "champion"),  # by the gate
    ]


def _history(db_session: Session, cipher: FieldCipher, now: datetime, n: int = 400) -> None:
    batch = generate_cohort(n_current=0, n_historic=n, seed=7, now=now)
    store_batch(db_session, batch, source="synthetic", location="test", cipher=cipher, now=now)
    db_session.commit()


@pytest.mark.slow
def test_retrain_cli_never_installs_a_champion(
    db_session: Session, cipher: FieldCipher, settings: Settings, tmp_path: Path
) -> None:
    """`vitalcast retrain` on a task without a champion registered the model as champion
    before the gate ran, then rescored every stay with it, exit 0. Now it stays a
    challenger, nothing is rescored, and the command says a person must promote it."""
    _history(db_session, cipher, utcnow(), n=120)
    settings = settings.model_copy(update={"registry_dir": tmp_path / "registry"})
    runner = CliRunner()
    result = runner.invoke(main, ["retrain", "--holdout-days", "365"], obj={"settings": settings})
    assert result.exit_code == 0, result.output
    assert "alias now: challenger" in result.output
    assert "has no champion" in result.output
    assert "vitalcast models promote" in result.output
    assert "rescored" not in result.output
    db_session.expire_all()
    assert get_champion(db_session, "icu-mortality") is None
    assert db_session.scalars(select(Prediction)).first() is None

    result = runner.invoke(
        main, ["retrain", "--holdout-days", "365", "--auto-promote"], obj={"settings": settings}
    )
    assert result.exit_code == 1, result.output
    assert "not promoted: icu-mortality has no champion" in result.output
    db_session.expire_all()
    assert get_champion(db_session, "icu-mortality") is None


def _wait_for_a_blocked_lock(engine: Engine, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            if conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar_one():
                return
            conn.rollback()
            time.sleep(0.05)
    raise AssertionError("the retraining never waited for the person's promotion")


@pytest.mark.slow
def test_auto_promotion_rechecks_the_champion_it_was_judged_against(
    db_session: Session,
    cipher: FieldCipher,
    settings: Settings,
    pg_engine: Engine,
    tmp_path: Path,
) -> None:
    """A person promotes another version while a retraining is under way: the gate judged
    the challenger against the old champion, so it must not replace the new one."""
    _history(db_session, cipher, NOW)
    settings = settings.model_copy(update={"registry_dir": tmp_path / "registry"})
    first = train_and_register(
        "icu-mortality", session=db_session, registry_dir=tmp_path / "registry", **FAST
    )  # type: ignore[arg-type]
    db_session.commit()
    assert first.alias == "champion"  # `vitalcast train`: the first model of a task
    other = train_and_register(
        "icu-mortality",
        session=db_session,
        registry_dir=tmp_path / "registry",
        seed=5,
        **FAST,
    )  # type: ignore[arg-type]
    db_session.commit()
    inf = float("inf")
    # The champion was fitted on the holdout's stays too: only the holdout's size counts,
    # so that the gate passes and the refusal can only come from the champion's change.
    wide = GatePolicy(
        min_events=20,
        max_auroc_drop=inf,
        slope_range=(-inf, inf),
        max_abs_intercept=inf,
        max_subgroup_drop=inf,
    )
    outcome: dict[str, Any] = {}

    def retraining() -> None:
        try:
            outcome["report"] = retrain(
                db_session,
                settings=settings,
                task="icu-mortality",
                holdout_days=365.0,
                auto_promote=True,
                now=NOW,
                policy=wide,
                **FAST,
            )  # type: ignore[arg-type]
            db_session.commit()
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = repr(exc)

    with Session(pg_engine) as person:
        promote(person, version=other.version, agent=audit.Agent("user:reviewer"))
        thread = threading.Thread(target=retraining)
        thread.start()  # reads the champion (still the first), trains, then waits
        _wait_for_a_blocked_lock(pg_engine)
        person.commit()
    thread.join(timeout=300)
    assert "error" not in outcome, outcome
    report = outcome["report"]
    assert report.champion_before == first.version
    assert report.gate.passed, report.gate.reasons
    assert not report.promoted
    assert report.alias == "challenger"
    assert f"champion changed from {first.version} to {other.version}" in report.not_promoted
    db_session.expire_all()
    champion = get_champion(db_session, "icu-mortality")
    assert champion is not None
    assert champion.version == other.version
    refused = db_session.scalars(
        select(AuditEvent).where(
            AuditEvent.event == "model.promoted", AuditEvent.outcome == "failure"
        )
    ).one()
    assert refused.resource == f"model/{report.version}"
