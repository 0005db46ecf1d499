"""Model performance once outcomes arrive, and an estimate before they do (pure).

Outcomes (a death, a readmission) are known days after the predictions that should have
anticipated them. :func:`join_outcomes` pairs each outcome with a prediction made *before*
it (a score computed after the event would flatter the model), then :func:`evaluate`
gives discrimination (AUROC), calibration (observed/expected, calibration intercept and
slope; Van Calster et al., *BMC Medicine* 2019, "Calibration: the Achilles heel"), and the
operating point (sensitivity, PPV at the model's threshold), overall, over rolling
windows and by subgroup.

Until labels exist, :func:`estimate_performance` gives confidence-based performance
estimation (CBPE; NannyML): if the scores are calibrated, a patient scored ``p`` is an
event with probability ``p``, so the expected confusion matrix and the expected AUROC
follow from the scores alone. It is an **estimate**: it is only as good as the
calibration, and it cannot see concept drift (the same inputs meaning a different risk);
the result says so in its fields.

No Flask, no SQLAlchemy: the service loads rows and hands plain values in.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

JoinPolicy = Literal["last", "first", "max"]
# Below this many patients, or with fewer events/non-events than this, AUROC and the
# calibration slope are too unstable to report (Riley et al., BMJ 2020, on minimum
# sample sizes for validation); the counts are still reported.
MIN_CLASS_COUNT = 5
_P_CLIP = 1e-6


@dataclass(frozen=True)
class PredictionPoint:
    """One stored score."""

    encounter_id: int
    scored_at: datetime
    score: float


@dataclass(frozen=True)
class OutcomePoint:
    """One encounter's outcome: ``label`` 1 for the event, 0 for its absence.

    ``occurred_at`` is when the event happened (death time); ``known_at`` when the record
    arrived. Predictions must precede ``occurred_at`` (or ``known_at`` when it is unknown).
    """

    encounter_id: int
    label: int
    known_at: datetime
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class Labelled:
    """A prediction paired with the outcome it tried to anticipate."""

    encounter_id: int
    scored_at: datetime
    score: float
    label: int
    groups: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Performance:
    """Realised performance on outcome-joined predictions (measured, not estimated)."""

    n: int
    events: int
    threshold: float
    auroc: float | None
    observed_expected: float | None
    calibration_intercept: float | None
    calibration_slope: float | None
    sensitivity: float | None
    ppv: float | None
    flagged: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"kind": "realised"}


@dataclass(frozen=True)
class PerformanceEstimate:
    """CBPE: performance *expected* from calibrated scores while outcomes are unknown."""

    n: int
    threshold: float
    expected_events: float
    expected_auroc: float | None
    expected_precision: float | None
    expected_recall: float | None
    flagged: int
    method: str = "CBPE (confidence-based performance estimation)"
    caveat: str = (
        "estimate from the scores alone; valid only while the model stays calibrated,"
        " blind to changes in how inputs relate to outcomes"
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"kind": "estimate"}


@dataclass(frozen=True)
class WindowPerformance:
    """Performance of the predictions scored in ``[start, end)``."""

    start: datetime
    end: datetime
    performance: Performance


# --------------------------------------------------------------------------- joining


def join_outcomes(
    predictions: Iterable[PredictionPoint],
    outcomes: Iterable[OutcomePoint],
    *,
    policy: JoinPolicy = "last",
    groups: Mapping[int, Mapping[str, str]] | None = None,
) -> list[Labelled]:
    """Pair each outcome with one prediction of its encounter made before the outcome.

    Args:
        policy: which eligible prediction stands for the encounter: ``last`` (the most
            recent before the event: what a clinician saw last), ``first`` (earliest:
            the longest lead time) or ``max`` (highest: "was the patient ever flagged").
        groups: encounter id → subgroup labels (unit, sex, age band) for
            :func:`by_subgroup`.

    Encounters with no outcome yet, or no prediction before it, are left out.
    """
    by_encounter: dict[int, list[PredictionPoint]] = defaultdict(list)
    for p in predictions:
        by_encounter[p.encounter_id].append(p)
    joined: list[Labelled] = []
    for outcome in outcomes:
        cutoff = outcome.occurred_at or outcome.known_at
        eligible = [p for p in by_encounter.get(outcome.encounter_id, []) if p.scored_at < cutoff]
        if not eligible:
            continue
        chosen = _choose(eligible, policy)
        joined.append(
            Labelled(
                encounter_id=outcome.encounter_id,
                scored_at=chosen.scored_at,
                score=chosen.score,
                label=int(outcome.label),
                groups=(groups or {}).get(outcome.encounter_id, {}),
            )
        )
    return joined


def _choose(eligible: list[PredictionPoint], policy: JoinPolicy) -> PredictionPoint:
    if policy == "first":
        return min(eligible, key=lambda p: p.scored_at)
    if policy == "max":
        return max(eligible, key=lambda p: (p.score, p.scored_at))
    return max(eligible, key=lambda p: p.scored_at)


# --------------------------------------------------------------------------- realised


def calibration_fit(scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float] | None:
    """Calibration intercept and slope: logistic regression of outcome on logit(score).

    A slope below 1 means predictions too extreme (overfitting), above 1 too timid; the
    ideal is intercept 0, slope 1 (Cox 1958; Van Calster 2019). None when either class
    has fewer than :data:`MIN_CLASS_COUNT` members.
    """
    y = np.asarray(labels, dtype=int)
    if min(int(y.sum()), int(y.size - y.sum())) < MIN_CLASS_COUNT:
        return None
    p = np.clip(np.asarray(scores, dtype=float), _P_CLIP, 1 - _P_CLIP)
    x = np.log(p / (1 - p)).reshape(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # lbfgs convergence chatter
        fit = LogisticRegression(C=np.inf, max_iter=1000).fit(x, y)
    return float(fit.intercept_[0]), float(fit.coef_[0][0])


def evaluate(scores: Sequence[float], labels: Sequence[int], threshold: float) -> Performance:
    """Discrimination, calibration and the operating point of scores against outcomes."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    n, events = int(y.size), int(y.sum())
    enough = min(events, n - events) >= MIN_CLASS_COUNT
    flagged = s >= threshold
    tp = int(np.sum(flagged & (y == 1)))
    fit = calibration_fit(s.tolist(), y.tolist()) if enough else None
    expected = float(s.sum())
    return Performance(
        n=n,
        events=events,
        threshold=threshold,
        auroc=float(roc_auc_score(y, s)) if enough else None,
        observed_expected=events / expected if n and expected > 0 else None,
        calibration_intercept=fit[0] if fit else None,
        calibration_slope=fit[1] if fit else None,
        sensitivity=tp / events if events else None,
        ppv=tp / int(flagged.sum()) if flagged.any() else None,
        flagged=int(flagged.sum()),
    )


def evaluate_labelled(rows: Sequence[Labelled], threshold: float) -> Performance:
    return evaluate([r.score for r in rows], [r.label for r in rows], threshold)


def by_subgroup(rows: Sequence[Labelled], threshold: float, key: str) -> dict[str, Performance]:
    """Performance within each value of subgroup ``key`` (missing values: ``unknown``)."""
    buckets: dict[str, list[Labelled]] = defaultdict(list)
    for row in rows:
        buckets[row.groups.get(key, "unknown")].append(row)
    return {name: evaluate_labelled(group, threshold) for name, group in sorted(buckets.items())}


def rolling(
    rows: Sequence[Labelled],
    threshold: float,
    *,
    window: timedelta,
    step: timedelta,
    end: datetime,
    periods: int,
) -> list[WindowPerformance]:
    """Performance over ``periods`` windows of ``window`` ending every ``step`` up to ``end``.

    Windows are placed by when the prediction was made, so a fall in AUROC is dated to
    the predictions that were wrong, not to when the outcomes happened to be recorded.
    """
    out: list[WindowPerformance] = []
    for i in reversed(range(periods)):
        stop = end - i * step
        start = stop - window
        inside = [r for r in rows if start <= r.scored_at < stop]
        out.append(WindowPerformance(start, stop, evaluate_labelled(inside, threshold)))
    return out


# --------------------------------------------------------------------------- alert burden


def count_alerts(predictions: Iterable[PredictionPoint], threshold: float) -> int:
    """Alerts raised: per encounter, each time the score rises to or above the threshold.

    A score that stays above the threshold is one alert, not one per rescoring; that is
    what a nurse experiences as an interruption.
    """
    by_encounter: dict[int, list[PredictionPoint]] = defaultdict(list)
    for p in predictions:
        by_encounter[p.encounter_id].append(p)
    alerts = 0
    for series in by_encounter.values():
        above = False
        for p in sorted(series, key=lambda q: q.scored_at):
            now_above = p.score >= threshold
            alerts += now_above and not above
            above = now_above
    return alerts


def patient_days(
    stays: Iterable[tuple[datetime, datetime | None]], start: datetime, end: datetime
) -> float:
    """Days of stay overlapping ``[start, end)``; an open stay runs to ``end``."""
    total = 0.0
    for admitted, discharged in stays:
        lo = max(admitted, start)
        hi = min(discharged or end, end)
        if hi > lo:
            total += (hi - lo).total_seconds() / 86400
    return total


def alert_rate_per_100_patient_days(alerts: int, days: float) -> float | None:
    """Alerts per 100 patient-days, the usual unit of alarm burden."""
    return 100 * alerts / days if days > 0 else None


# --------------------------------------------------------------------------- estimate


def estimate_performance(scores: Sequence[float], threshold: float) -> PerformanceEstimate:
    """CBPE: expected AUROC, precision and recall from calibrated scores alone.

    With ``p_i`` the calibrated probability that patient ``i`` has the event:
    expected TP = Σ_{flagged} p, FP = Σ_{flagged} (1 − p), FN = Σ_{not flagged} p, and the
    expected AUROC is the expected number of correctly ordered (event, non-event) pairs
    over the expected number of such pairs, excluding a patient paired with itself.
    Ratios of expectations, as NannyML's CBPE does; accurate for windows of hundreds.
    """
    p = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
    flagged = p >= threshold
    tp = float(p[flagged].sum())
    fn = float(p[~flagged].sum())
    return PerformanceEstimate(
        n=int(p.size),
        threshold=threshold,
        expected_events=float(p.sum()),
        expected_auroc=expected_auroc(p),
        expected_precision=tp / int(flagged.sum()) if flagged.any() else None,
        expected_recall=tp / (tp + fn) if tp + fn > 0 else None,
        flagged=int(flagged.sum()),
    )


def expected_auroc(p: NDArray[np.float64]) -> float | None:
    """E[concordant pairs] / E[pairs] when each patient is an event with probability p."""
    if p.size < 2:
        return None
    levels, inverse = np.unique(p, return_inverse=True)
    pos = np.bincount(inverse, weights=p, minlength=levels.size)
    neg = np.bincount(inverse, weights=1 - p, minlength=levels.size)
    self_pairs = float(np.sum(p * (1 - p)))
    below = np.concatenate(([0.0], np.cumsum(neg)[:-1]))
    # Same-score pairs count half (ties), minus each patient paired with itself.
    concordant = float(np.sum(pos * below) + 0.5 * (np.sum(pos * neg) - self_pairs))
    pairs = float(pos.sum() * neg.sum()) - self_pairs
    return concordant / pairs if pairs > 0 else None


def summarise(
    rows: Sequence[Labelled],
    threshold: float,
    *,
    subgroup_keys: Sequence[str] = (),
) -> dict[str, Any]:
    """Overall and per-subgroup performance as one JSON-ready dict."""
    return {
        "overall": evaluate_labelled(rows, threshold).to_dict(),
        "subgroups": {
            key: {name: perf.to_dict() for name, perf in by_subgroup(rows, threshold, key).items()}
            for key in subgroup_keys
        },
    }
