"""The promotion gate of the change-control plan: may a challenger replace the champion? (pure)

docs/maintenance-plan.md states the criteria in words; this module is their only
implementation. Both models are scored on the same temporal holdout (the most recent
period, never seen in training), one row per stay, and the challenger passes only if

1. there are enough holdout outcomes to judge (``min_events``);
2. its AUROC is not worse than the champion's by more than ``max_auroc_drop``;
3. its calibration slope lies in ``slope_range`` and its calibration-in-the-large
   (intercept with the logit as offset) within ``max_abs_intercept``;
4. in no subgroup (sex, age band, unit) large enough to measure is its AUROC worse than
   the champion's by more than ``max_subgroup_drop``.

Every criterion is evaluated and reported, pass or fail, so a refusal says exactly why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vitalcast.modeling.evaluate import auroc, calibration_intercept, calibration_slope


@dataclass(frozen=True)
class GatePolicy:
    """Acceptance criteria, fixed in advance (docs/maintenance-plan.md, section 4)."""

    min_events: int = 50
    max_auroc_drop: float = 0.01
    slope_range: tuple[float, float] = (0.9, 1.1)
    max_abs_intercept: float = 0.2
    max_subgroup_drop: float = 0.05
    min_subgroup_rows: int = 100
    min_subgroup_events: int = 10


@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict, with every criterion and the figures behind it."""

    passed: bool
    criteria: list[Criterion]
    champion: dict[str, float]
    challenger: dict[str, float]
    subgroups: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        """The failed criteria, in words."""
        return [c.detail for c in self.criteria if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"reasons": self.reasons}


def _headline(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {
        "auroc": auroc(y, p),
        "calibration_slope": calibration_slope(y, p),
        "calibration_intercept": calibration_intercept(y, p),
        "mean_risk": float(p.mean()) if len(p) else math.nan,
        "observed_rate": float(y.mean()) if len(y) else math.nan,
    }


def evaluate_gate(
    y: Sequence[int],
    champion: Sequence[float] | None,
    challenger: Sequence[float],
    *,
    subgroups: Mapping[str, Sequence[str]] | None = None,
    policy: GatePolicy | None = None,
) -> GateResult:
    """Judge ``challenger`` against ``champion`` on the same holdout rows.

    Args:
        y: holdout outcomes (0/1), one row per stay.
        champion: the champion's probabilities on those rows; None when there is no
            champion (first model: comparative criteria pass by definition).
        challenger: the challenger's probabilities.
        subgroups: subgroup key (``sex``, ``age_band``, ``unit``) → each row's value.
    """
    policy = policy or GatePolicy()
    yy = np.asarray(y, dtype=np.int64)
    new = np.asarray(challenger, dtype=float)
    old = None if champion is None else np.asarray(champion, dtype=float)
    mine = _headline(yy, new)
    theirs = _headline(yy, old) if old is not None else {}
    criteria: list[Criterion] = []
    events = int(yy.sum())
    criteria.append(
        Criterion(
            "holdout_size",
            events >= policy.min_events and events < len(yy),
            f"holdout has {events} events of {len(yy)} stays (need >= {policy.min_events})",
        )
    )
    if old is not None:
        drop = theirs["auroc"] - mine["auroc"]
        criteria.append(
            Criterion(
                "auroc",
                bool(drop <= policy.max_auroc_drop),
                f"AUROC {mine['auroc']:.3f} vs champion {theirs['auroc']:.3f}"
                f" (may be lower by at most {policy.max_auroc_drop})",
            )
        )
    lo, hi = policy.slope_range
    slope = mine["calibration_slope"]
    criteria.append(
        Criterion(
            "calibration_slope",
            bool(lo <= slope <= hi),
            f"calibration slope {slope:.2f} (must lie in {lo}–{hi})",
        )
    )
    intercept = mine["calibration_intercept"]
    criteria.append(
        Criterion(
            "calibration_in_the_large",
            bool(abs(intercept) <= policy.max_abs_intercept),
            f"calibration intercept {intercept:+.2f} (|value| <= {policy.max_abs_intercept})",
        )
    )
    by_group: dict[str, dict[str, float]] = {}
    if old is not None:
        for key, values in (subgroups or {}).items():
            labels = np.asarray([str(v) for v in values])
            for value in sorted(set(labels)):
                sel = labels == value
                n, k = int(sel.sum()), int(yy[sel].sum())
                if n < policy.min_subgroup_rows or k < policy.min_subgroup_events or k == n:
                    continue
                a_new, a_old = auroc(yy[sel], new[sel]), auroc(yy[sel], old[sel])
                name = f"{key}={value}"
                by_group[name] = {"n": n, "events": k, "challenger": a_new, "champion": a_old}
                criteria.append(
                    Criterion(
                        f"subgroup:{name}",
                        bool(a_old - a_new <= policy.max_subgroup_drop),
                        f"{name}: AUROC {a_new:.3f} vs champion {a_old:.3f}"
                        f" (may be lower by at most {policy.max_subgroup_drop})",
                    )
                )
    return GateResult(
        passed=all(c.passed for c in criteria),
        criteria=criteria,
        champion=theirs,
        challenger=mine,
        subgroups=by_group,
    )
