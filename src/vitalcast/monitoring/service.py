"""Monitoring use cases: load windows from the store, run the pure statistics, store results.

The statistics live in ``drift.py`` and ``performance.py``; this module only reads rows,
hands plain values over, and writes :class:`~vitalcast.monitoring.tables.DriftRun` rows.
Services take keyword-only arguments and never commit (the caller's unit of work does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter, Observation, Outcome, Patient
from vitalcast.db.base import utcnow
from vitalcast.errors import NotFound
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.monitoring import drift
from vitalcast.monitoring.drift import balanced_landmarks
from vitalcast.monitoring.performance import Labelled, OutcomePoint, PredictionPoint
from vitalcast.monitoring.performance import join_outcomes as _join
from vitalcast.monitoring.tables import DriftResult, DriftRun, MonitorAlert, MonitorRun
from vitalcast.security import audit

logger = logging.getLogger(__name__)

SCORE_FEATURE = "__score__"
# How old the model's latest score before a window sample's time may be to stand for the
# score at that time (live serving rescores on every update, i.e. at least hourly).
SCORE_TOLERANCE = timedelta(hours=2)


@dataclass(frozen=True)
class WindowSample:
    """One stay of a drift window: when its inputs are read, and the model's score then."""

    encounter_id: int
    as_of: datetime
    score: float | None


FeatureLoader = Callable[[Session, Sequence[WindowSample]], dict[str, list[object]]]


# --------------------------------------------------------------------------- lookups


def get_champion_or_raise(session: Session, *, task: str) -> ModelVersion:
    from vitalcast.modeling.service import get_champion

    row = get_champion(session, task)
    if row is None:
        raise NotFound(f"no champion model for task {task!r}; train and promote one first")
    return row


def reference_for(model: ModelVersion) -> dict[str, dict[str, Any]]:
    """The training reference profiles of a model: feature name (or ``__score__``) → profile.

    Read from the artifact's JSON sidecar (``reference``: ``{"features": {...}, "score":
    {...}}``, written by ``modeling.service.reference_distributions``).

    Raises:
        NotFound: the sidecar holds no reference, or one in an older format.
    """
    from vitalcast.modeling.registry import RegistryError
    from vitalcast.modeling.service import sidecar_of

    try:
        source = sidecar_of(model).get("reference") or {}
    except (RegistryError, OSError) as exc:
        raise NotFound(f"model {model.version}: sidecar unreadable ({exc})") from exc
    profiles: dict[str, dict[str, Any]] = dict(source.get("features") or {})
    if "score" in source:
        profiles[SCORE_FEATURE] = source["score"]
    current = {
        name: p
        for name, p in profiles.items()
        if isinstance(p, dict) and p.get("version") == drift.PROFILE_VERSION
    }
    if not current:
        raise NotFound(
            f"model {model.version} has no drift reference profiles (format"
            f" {drift.PROFILE_VERSION}) in its sidecar; retrain it to enable drift monitoring"
        )
    return current


def window_predictions(
    session: Session, *, model: ModelVersion, start: datetime, end: datetime
) -> list[Prediction]:
    """The latest prediction per encounter by ``model`` about a time in ``[start, end)``.

    One row per stay: rescorings of the same patient are strongly correlated, and the
    drift tests assume independent values, as the training reference (one row per stay)
    is. The window is on ``as_of`` (the time the score is about), not on when the row was
    written, so replayed or back-filled scores fall in the window of their data, as the
    outcome-joined performance (``labelled_window``) already does.
    """
    ranked = (
        select(
            Prediction.id,
            func.row_number()
            .over(
                partition_by=Prediction.encounter_id,
                order_by=(Prediction.as_of.desc(), Prediction.id.desc()),
            )
            .label("rank"),
        )
        .where(
            Prediction.model_version_id == model.id,
            Prediction.encounter_id.is_not(None),
            Prediction.as_of >= start,
            Prediction.as_of < end,
        )
        .subquery()
    )
    return list(
        session.scalars(
            select(Prediction)
            .join(ranked, Prediction.id == ranked.c.id)
            .where(ranked.c.rank == 1)
            .order_by(Prediction.encounter_id)
        ).all()
    )


def training_landmarks(model: ModelVersion) -> tuple[float, ...]:
    """Hours after admission at which the model's training rows were taken (sidecar), or ()."""
    from vitalcast.modeling.registry import RegistryError
    from vitalcast.modeling.service import sidecar_of

    try:
        hours = (sidecar_of(model).get("data") or {}).get("landmarks_h") or ()
    except (RegistryError, OSError):
        return ()
    return tuple(float(h) for h in hours)


def drift_window(
    session: Session,
    *,
    model: ModelVersion,
    start: datetime,
    end: datetime,
    landmarks_h: Sequence[float] = (),
) -> list[WindowSample]:
    """The stays the model scored in ``[start, end)``, each read at one comparable time.

    Without landmarks, each stay's latest prediction in the window. With the landmarks
    the model was trained at (6/12/24/48 h for icu-mortality), each stay is read at one
    landmark that it reached inside the window, with equal numbers of stays at every
    landmark (:func:`~vitalcast.monitoring.drift.balanced_landmarks`), so the window mixes
    landmarks as the training reference does (one row per stay, chosen the same way by
    :func:`~vitalcast.monitoring.drift.reference_rows`): comparing hour-40 inputs of a ward with
    a reference a quarter of which is taken 6 h after admission would flag "drift" in every
    count and time feature of every healthy ward. Stays left over are not used. The
    score is the model's latest score at most ``SCORE_TOLERANCE`` before that time, or
    missing.
    """
    predictions = window_predictions(session, model=model, start=start, end=end)
    if not landmarks_h:
        return [WindowSample(p.encounter_id or 0, p.as_of, p.score) for p in predictions]
    ids = [p.encounter_id for p in predictions if p.encounter_id is not None]
    admitted = dict(
        session.execute(
            select(Encounter.id, Encounter.admitted_at).where(Encounter.id.in_(ids))
        ).all()
    )
    # Landmark index -> its time, per stay, for the landmarks reached inside the window.
    reached: dict[int, dict[int, datetime]] = {}
    for p in predictions:
        admitted_at = admitted.get(p.encounter_id) if p.encounter_id is not None else None
        if admitted_at is None or p.encounter_id is None:
            continue
        times = {
            j: at
            for j, h in enumerate(sorted(landmarks_h))
            if start <= (at := admitted_at + timedelta(hours=h)) <= p.as_of
        }
        if times:
            reached[p.encounter_id] = times
    chosen = balanced_landmarks(reached, len(landmarks_h))
    scores: dict[int, list[tuple[datetime, float]]] = {}
    for enc_id, as_of, score in session.execute(
        select(Prediction.encounter_id, Prediction.as_of, Prediction.score)
        .where(
            Prediction.model_version_id == model.id,
            Prediction.encounter_id.in_(list(chosen)),
            Prediction.as_of >= start - SCORE_TOLERANCE,
            Prediction.as_of < end,
        )
        .order_by(Prediction.as_of, Prediction.id)
    ):
        if enc_id is not None:
            scores.setdefault(enc_id, []).append((as_of, score))
    samples = []
    for enc_id, at in sorted(chosen.items()):
        before = [s for t, s in scores.get(enc_id, []) if at - SCORE_TOLERANCE <= t <= at]
        samples.append(WindowSample(enc_id, at, before[-1] if before else None))
    return samples


def features_from_store(
    session: Session, samples: Sequence[WindowSample]
) -> dict[str, list[object]]:
    """Recompute each sample's feature vector as of its time, with the serving code path."""
    from vitalcast.features import stay_features
    from vitalcast.serving.scoring import stay_input

    rows: list[dict[str, float]] = []
    for sample in samples:
        encounter = session.get(Encounter, sample.encounter_id)
        if encounter is None:
            rows.append({})
            continue
        rows.append(stay_features(stay_input(session, encounter, sample.as_of), sample.as_of))
    names = sorted({name for row in rows for name in row})
    return {name: [row.get(name) for row in rows] for name in names}


# --------------------------------------------------------------------------- drift


def run_drift(
    session: Session,
    *,
    task: str,
    window_days: float = 7.0,
    now: datetime | None = None,
    load_features: FeatureLoader = features_from_store,
    actor: str = "vitalcast-monitor",
) -> DriftRun:
    """Compare the champion's recent inputs and scores with its training reference (audited)."""
    model = get_champion_or_raise(session, task=task)
    profiles = reference_for(model)
    end = now or utcnow()
    start = end - timedelta(days=window_days)
    samples = drift_window(
        session, model=model, start=start, end=end, landmarks_h=training_landmarks(model)
    )
    recent: dict[str, list[object]] = {
        SCORE_FEATURE: [s.score for s in samples if s.score is not None]
    }
    if samples and any(name != SCORE_FEATURE for name in profiles):
        recent |= load_features(session, samples)
    results = drift.compare_all(profiles, recent)
    run = DriftRun(
        model_version_id=model.id,
        task=task,
        window_start=start,
        window_end=end,
        n_recent=len(samples),
        severity=drift.worst_severity(results.values()),
        flagged=sum(r.flagged for r in results.values()),
    )
    for name, result in sorted(results.items()):
        run.results.append(
            DriftResult(
                feature=name,
                psi=result.psi,
                ks_statistic=result.ks_statistic,
                js_distance=result.js_distance,
                missing_rate_reference=result.missing_rate_reference,
                missing_rate_recent=result.missing_rate_recent,
                severity=result.severity,
                details=result.to_dict(),
            )
        )
    session.add(run)
    session.flush()
    audit.record(
        session,
        audit.Event(
            "monitoring.drift.run",
            "E",
            actor=actor,
            resource=f"drift_run/{run.id}",
            details={"model": model.version, "severity": run.severity, "flagged": run.flagged},
        ),
    )
    logger.info(
        "drift run",
        extra={"task": task, "model": model.version, "n": run.n_recent, "flagged": run.flagged},
    )
    return run


def latest_drift_run(session: Session, *, task: str) -> DriftRun | None:
    return session.scalar(
        select(DriftRun).where(DriftRun.task == task).order_by(DriftRun.id.desc()).limit(1)
    )


def latest_monitor_run(session: Session, *, task: str) -> MonitorRun | None:
    return session.scalar(
        select(MonitorRun).where(MonitorRun.task == task).order_by(MonitorRun.id.desc()).limit(1)
    )


# --------------------------------------------------------------------------- outcomes


def labelled_window(
    session: Session, *, model: ModelVersion, start: datetime, end: datetime
) -> list[Labelled]:
    """Predictions of ``model`` made in ``[start, end)`` joined to their outcomes.

    Subgroups: admission unit, sex, and age band (<65, 65–79, ≥80: the bands geriatric
    ICU literature reports separately).
    """
    from vitalcast.modeling.tasks import TASKS

    kind = TASKS[model.task].outcome_kind if model.task in TASKS else model.task
    rows = session.execute(
        select(Prediction.encounter_id, Prediction.as_of, Prediction.score).where(
            Prediction.model_version_id == model.id,
            Prediction.as_of >= start,
            Prediction.as_of < end,
            Prediction.encounter_id.is_not(None),
        )
    ).all()
    encounter_ids = {r.encounter_id for r in rows}
    outcomes = session.execute(
        select(Outcome.encounter_id, Outcome.value, Outcome.occurred_at, Outcome.known_at).where(
            Outcome.kind == kind, Outcome.encounter_id.in_(encounter_ids)
        )
    ).all()
    groups = {
        e.id: {"unit": e.unit or "unknown", "sex": sex or "unknown", "age": _age_band(e.age_years)}
        for e, sex in session.execute(
            select(Encounter, Patient.sex)
            .join(Patient, Patient.id == Encounter.patient_id)
            .where(Encounter.id.in_(encounter_ids))
        ).all()
    }
    return _join(
        [PredictionPoint(r.encounter_id, r.as_of, r.score) for r in rows],
        [
            OutcomePoint(o.encounter_id, int(o.value >= 0.5), o.known_at, o.occurred_at)
            for o in outcomes
        ],
        groups=groups,
    )


def _age_band(age: float | None) -> str:
    if age is None:
        return "unknown"
    return "<65" if age < 65 else "65-79" if age < 80 else "80+"


# --------------------------------------------------------------------------- gauges


@dataclass(frozen=True)
class DriftGauge:
    model_version: str
    feature: str
    psi: float | None
    flagged: bool


@dataclass(frozen=True)
class StoreGauges:
    """Deployment-wide figures that ``/metrics`` exports at scrape time."""

    drift: list[DriftGauge]
    open_alerts: dict[tuple[str, str], int]
    observation_age_s: dict[str, float]


def store_gauges(session: Session, *, now: datetime | None = None) -> StoreGauges:
    """Latest drift per champion, open alerts, and data age per unit (a few small queries)."""
    now = now or utcnow()
    latest_runs = (
        select(func.max(DriftRun.id)).group_by(DriftRun.model_version_id).scalar_subquery()
    )
    drift_rows = session.execute(
        select(ModelVersion.version, DriftResult.feature, DriftResult.psi, DriftResult.severity)
        .join(DriftRun, DriftRun.id == DriftResult.run_id)
        .join(ModelVersion, ModelVersion.id == DriftRun.model_version_id)
        .where(DriftRun.id.in_(latest_runs), ModelVersion.alias.in_(("champion", "challenger")))
    ).all()
    alerts = session.execute(
        select(MonitorAlert.rule, MonitorAlert.severity, func.count())
        .where(MonitorAlert.state != "resolved")
        .group_by(MonitorAlert.rule, MonitorAlert.severity)
    ).all()
    return StoreGauges(
        drift=[DriftGauge(v, f, p, s != "none") for v, f, p, s in drift_rows],
        open_alerts={(rule, sev): int(n) for rule, sev, n in alerts},
        observation_age_s={
            unit: (now - newest).total_seconds() for unit, newest in newest_by_unit(session).items()
        },
    )


def newest_by_unit(session: Session) -> dict[str, datetime]:
    """Time of the newest observation of any open (not discharged) encounter, per unit."""
    rows = session.execute(
        select(Encounter.unit, func.max(Observation.effective_at))
        .join(Observation, Observation.encounter_id == Encounter.id)
        .where(Encounter.in_progress)
        .group_by(Encounter.unit)
    ).all()
    out: dict[str, datetime] = {}
    for unit, newest in rows:
        if newest is not None:
            # func.max drops the UTCDateTime decorator on some backends; re-attach UTC.
            out[unit or "unknown"] = newest if newest.tzinfo else newest.replace(tzinfo=UTC)
    return out
