"""Governed retraining: train a challenger on all but the most recent period, gate it, and
promote it only when the predetermined criteria hold (docs/maintenance-plan.md).

Registration never installs a champion here, not even for a task that has none: a
retrained model is registered as ``challenger`` and becomes champion only through the
gate (``auto_promote``) or a person. With no champion the gate has nothing to compare
against, so automatic promotion is refused and a person promotes the first model.

The challenger is trained on stays admitted before ``now − holdout_days`` and judged
against the champion on the stays admitted since (a temporal holdout: the period the
model will actually face next). The artifact that passes is the artifact promoted, never a
refit: what is served is what was validated. Retraining, the gate's verdict and any
promotion are audited.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter
from vitalcast.config import Settings
from vitalcast.db.base import utcnow
from vitalcast.modeling.datasets import Dataset
from vitalcast.modeling.registry import LoadedModel
from vitalcast.modeling.tasks import TaskError, get_task
from vitalcast.modeling.train import CandidateSpec
from vitalcast.monitoring.gate import GatePolicy, GateResult, evaluate_gate
from vitalcast.security import audit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainReport:
    """What one retraining did."""

    task: str
    version: str
    alias: str | None
    champion_before: str | None
    train_stays: int
    holdout_stays: int
    gate: GateResult
    promoted: bool
    # Why the challenger was not promoted though ``auto_promote`` asked for it (the gate's
    # reasons, no champion to compare with, or the champion changed meanwhile); else None.
    not_promoted: str | None = None


def _subset(ds: Dataset, mask: np.ndarray) -> Dataset:
    return Dataset(
        X=ds.X.loc[mask].reset_index(drop=True),
        y=ds.y[mask],
        groups=ds.groups[mask],
        meta=ds.meta.loc[mask].reset_index(drop=True),
        numeric=ds.numeric,
        categorical=ds.categorical,
        source=f"{ds.source} (temporal split)",
        notes=ds.notes,
        # Of the whole read, not the training side: `evaluate` reads from the store only
        # stays stored after it, which no side of this split holds.
        store_through_encounter_id=ds.store_through_encounter_id,
    )


def _scores(model: LoadedModel, ds: Dataset) -> np.ndarray:
    records: list[Mapping[str, Any]] = list(ds.X.to_dict("records"))
    return model.predict_proba(model.frame_of(records))


def retrain(
    session: Session,
    *,
    settings: Settings,
    task: str,
    holdout_days: float = 90.0,
    train_days: float | None = None,
    auto_promote: bool = False,
    now: datetime | None = None,
    policy: GatePolicy | None = None,
    budget: tuple[CandidateSpec, ...] | None = None,
    n_splits: int = 5,
    n_boot: int = 200,
    actor: str = "cli",
) -> RetrainReport:
    """Train a challenger with a temporal holdout, gate it, and promote it if allowed.

    ``train_days`` limits training to the stays admitted in that many days before the
    holdout (default: all history). After a lasting change in the data (a new analyser's
    units, a vital sign no longer charted), a model trained on a mixture of before and
    after keeps the drift alert open, because its training reference is that mixture;
    training on the period since the change is what lets the alert clear. ``budget``
    None searches the task's documented budget
    (:func:`vitalcast.modeling.train.search_budget`).

    Raises:
        TaskError: the task cannot be retrained from the store, or a side of the split
            is empty (the message says which and how to change ``holdout_days``).
    """
    from vitalcast.modeling.loaders import load_dataset
    from vitalcast.modeling.service import (
        ChampionChangedError,
        get_champion,
        get_version_or_raise,
        load_registered,
        promote,
    )
    from vitalcast.modeling.service import train_and_register as train

    spec = get_task(task)
    if spec.kind != "timeseries":
        raise TaskError(f"{task}: retraining from the store supports time-series tasks only")
    now = now or utcnow()
    cutoff = now - timedelta(days=holdout_days)
    ds = load_dataset(spec, session=session)
    stay_ids = [int(s) for s in ds.meta["stay_id"]]
    admitted = dict(
        session.execute(
            select(Encounter.id, Encounter.admitted_at).where(Encounter.id.in_(set(stay_ids)))
        ).all()
    )
    recent = np.array([admitted[s] >= cutoff for s in stay_ids])
    earliest = None if train_days is None else cutoff - timedelta(days=train_days)
    training = ~recent & np.array([earliest is None or admitted[s] >= earliest for s in stay_ids])
    if not training.any() or not recent.any():
        side = "holdout" if training.any() else "training"
        raise TaskError(
            f"{task}: the {side} side of a {holdout_days:g}-day temporal split is empty;"
            " change --holdout-days"
        )
    champion_row = get_champion(session, task)
    champion_before = champion_row.version if champion_row else None
    outcome = train(
        task,
        session=session,
        registry_dir=settings.resolved_registry_dir,
        dataset=_subset(ds, training),
        budget=budget,
        n_splits=n_splits,
        n_boot=n_boot,
        agent=audit.Agent(actor),
        champion_if_none=False,
    )
    alias = promote(
        session, version=outcome.version, alias="challenger", agent=audit.Agent(actor)
    ).alias
    challenger_row = get_version_or_raise(session, outcome.version)
    # Commit the registration now: its audit event took the audit chain's lock, which
    # every audited write (each ingest batch, each chart opened) waits for until this
    # transaction ends, and the holdout scoring and gate below load two models and score
    # every held-out stay. Should they fail, the challenger stays registered, unpromoted:
    # a candidate nobody has judged, as ``models list`` shows it.
    session.commit()
    rows = recent & ds.rows_at(spec.primary_landmark_h)  # one row per stay
    holdout = _subset(ds, rows)
    p_new = _scores(load_registered(session, challenger_row), holdout)
    p_old = _scores(load_registered(session, champion_row), holdout) if champion_row else None
    subgroups = {k: holdout.meta[k].astype(str).tolist() for k in ("sex", "age_band", "unit")}
    gate = evaluate_gate(
        holdout.y.tolist(),
        None if p_old is None else p_old.tolist(),
        p_new.tolist(),
        subgroups=subgroups,
        policy=policy,
    )
    audit.record(
        session,
        audit.Event(
            "model.retrained",
            "C",
            actor=actor,
            resource=f"model/{outcome.version}",
            details={
                "task": task,
                "holdout_days": holdout_days,
                "train_days": train_days,
                "gate_passed": gate.passed,
                "reasons": gate.reasons,
                "champion": champion_before,
            },
        ),
    )
    promoted = False
    not_promoted = None
    if auto_promote and champion_before is None:
        not_promoted = (
            f"{task} has no champion, so the gate had none to compare {outcome.version} with;"
            " a person promotes the first model (`vitalcast models promote VERSION`)"
        )
    elif auto_promote and not gate.passed:
        not_promoted = "; ".join(gate.reasons)
    elif auto_promote:
        try:
            alias = promote(
                session,
                version=outcome.version,
                alias="champion",
                agent=audit.Agent(actor),
                details={"by": "gate", "judged_against": champion_before},
                expected_champion=champion_before,
            ).alias
            promoted = True
        except ChampionChangedError as exc:
            not_promoted = str(exc)
            audit.record(
                session,
                audit.Agent(actor).event(
                    "model.promoted",
                    "U",
                    outcome="failure",
                    resource=f"model/{outcome.version}",
                    details={"task": task, "by": "gate", "error": not_promoted[:300]},
                ),
            )
    logger.info(
        "retrained",
        extra={"task": task, "version": outcome.version, "gate": gate.passed, "promoted": promoted},
    )
    return RetrainReport(
        task=task,
        version=outcome.version,
        alias=alias,
        champion_before=champion_before,
        train_stays=len(set(np.asarray(stay_ids)[training])),
        holdout_stays=int(rows.sum()),
        gate=gate,
        promoted=promoted,
        not_promoted=not_promoted,
    )
