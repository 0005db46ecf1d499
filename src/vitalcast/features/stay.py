"""Features of one stay as of a time ``t``: the single code path for training and serving.

Only observations with ``effective_at <= as_of`` are used, so a score at hour 7 sees what a
clinician could have seen at hour 7 (no look-ahead), and none from before the admission:
the windows are "this stay" (training's PhysioNet stays start at 00:00 and hold no earlier
value). Missing values are NaN; the model's
preprocessing imputes them and adds missingness indicators, fitted inside training folds.

Per variable and window (whole stay so far, last 24 h, last 6 h) we compute summary
statistics; the choice follows the 2012 challenge's strongest entries (extremes, latest
value and trend of each variable over the stay) plus short windows that make a score
responsive to recent deterioration.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise

from vitalcast.clinical.codes import (
    BY_KEY,
    ICU_TYPES,
    VARIABLES,
    VariableSpec,
    icu_type,
    is_plausible,
    plausible_range_text,
)

ObservationTuple = tuple[str, float, datetime]
NAN = math.nan

# Height is a descriptor only; every other variable of the vocabulary is a time series.
TIME_SERIES_VARIABLES: tuple[str, ...] = tuple(v.key for v in VARIABLES if v.key != "height")
_KEY_BY_CODE: dict[str, str] = {v.code: v.key for v in VARIABLES if v.key != "height"}
_OUTPUT_KEYS = frozenset(v.key for v in VARIABLES if v.kind == "output")
_HEIGHT_CODE, _WEIGHT_CODE = BY_KEY["height"].code, BY_KEY["weight"].code

# (window name, length in hours; None = whole stay so far)
WINDOWS: tuple[tuple[str, float | None], ...] = (("all", None), ("24h", 24.0), ("6h", 6.0))
_STATS: dict[str, tuple[str, ...]] = {
    "all": ("last", "min", "max", "mean", "count", "slope", "hours_since_last"),
    "24h": ("min", "max", "mean", "count"),
    "6h": ("mean", "count"),
}

_UNITS = tuple(ICU_TYPES.values())  # CCU, CSRU, MICU, SICU
DESCRIPTOR_FEATURES: tuple[str, ...] = (
    "age_years",
    "sex_male",
    "height_cm",
    "weight_kg",
    "bmi",
    *(f"unit_{u.lower()}" for u in _UNITS),
    "hours_since_admission",
)
# Derived bedside indices: PaO2/FiO2 (Berlin ARDS definition), shock index (HR/SBP), and
# urine output per kg per hour over the last 24 h (KDIGO oliguria < 0.5 mL/kg/h).
DERIVED_FEATURES: tuple[str, ...] = ("pf_ratio_last", "shock_index_last", "urine_ml_kg_h_24h")


def _variable_feature_names() -> tuple[str, ...]:
    names: list[str] = []
    for key in TIME_SERIES_VARIABLES:
        for window, _hours in WINDOWS:
            stats = _STATS[window] + (("sum",) if key in _OUTPUT_KEYS else ())
            names.extend(f"{key}_{stat}_{window}" for stat in stats)
    return tuple(names)


FEATURE_NAMES: tuple[str, ...] = DESCRIPTOR_FEATURES + DERIVED_FEATURES + _variable_feature_names()


def feature_names(task: str = "icu-mortality") -> tuple[str, ...]:
    """The ordered candidate feature names of a time-series task.

    A trained model may use a subset (columns that were empty in its training data are
    dropped); its registry sidecar holds the authoritative list.
    """
    if task != "icu-mortality":
        raise KeyError(f"task {task!r} has no time-series feature definition")
    return FEATURE_NAMES


# Feature name -> (variable, statistic) of every time-series feature, and the descriptor
# features that are a variable's measurement.
_FEATURE_STAT: dict[str, tuple[VariableSpec, str]] = {
    f"{key}_{stat}_{window}": (BY_KEY[key], stat)
    for key in TIME_SERIES_VARIABLES
    for window, _hours in WINDOWS
    for stat in _STATS[window] + (("sum",) if key in _OUTPUT_KEYS else ())
}
_FEATURE_STAT.update(
    {"height_cm": (BY_KEY["height"], "last"), "weight_kg": (BY_KEY["weight"], "last")}
)
_VALUE_STATS = frozenset({"last", "min", "max", "mean"})
_NON_NEGATIVE_STATS = frozenset({"count", "sum", "hours_since_last"})


def feature_bounds(name: str) -> dict[str, float]:
    """The JSON Schema bounds (``minimum``, ``exclusiveMinimum``, ``maximum``) a value of
    the feature ``name`` keeps, by :func:`implausible`'s rule; empty when it has none.
    Published in the OpenAPI document so that what the schema admits is what the API
    scores."""
    known = _FEATURE_STAT.get(name)
    if known is None:
        return {}
    spec, stat = known
    if stat in _VALUE_STATS:
        low = "exclusiveMinimum" if spec.low_exclusive else "minimum"
        return {low: spec.low, "maximum": spec.high}
    if stat in _NON_NEGATIVE_STATS:
        return {"minimum": 0.0}
    return {}


def implausible(name: str, value: float) -> str | None:
    """Why ``value`` cannot be the feature ``name`` of any stay; None when it can.

    Every observation a stay's features are computed from passed the ingestion rules (in
    the canonical unit, inside the variable's plausible range), so a latest, lowest,
    highest or average value outside that range, or a negative count, total or age of a
    measurement, is no stay's feature: a feature vector sent with a temperature of 98.6
    (°F) or an FiO₂ of 0.4 (a fraction) was scored as 98.6 °C and 0.4 %. The reason names
    the range and unit, never the value (it may be patient data).
    """
    known = _FEATURE_STAT.get(name)
    if known is None:
        return None
    spec, stat = known
    if stat in _VALUE_STATS and not is_plausible(spec, value):
        unit = f" {spec.display_unit}" if spec.display_unit else ""
        return (
            f"outside the plausible range of {spec.label} ({plausible_range_text(spec)}{unit});"
            " is it in another unit?"
        )
    if stat in _NON_NEGATIVE_STATS and value < 0:
        return "must be 0 or more"
    return None


@dataclass(frozen=True, slots=True)
class StayInput:
    """What the features of one stay are computed from (canonical units, UTC times)."""

    admitted_at: datetime
    age_years: float | None
    sex: str
    unit: str | None
    height_cm: float | None
    weight_kg: float | None
    observations: Sequence[ObservationTuple] = field(default_factory=tuple)


def stay_features(stay: StayInput, as_of: datetime) -> dict[str, float]:
    """Features of ``stay`` from observations with ``effective_at <= as_of`` only."""
    t_end = (as_of - stay.admitted_at).total_seconds() / 3600.0
    series: dict[str, tuple[list[float], list[float]]] = {}
    admitted = stay.admitted_at
    # Descriptors charted as observations (see _descriptors): the first height, and a
    # weight at the admission instant when the stay has no admission weight.
    height: tuple[datetime, float] | None = None
    admission_weight: float | None = None
    for code, value, at in stay.observations:
        # Before admission: a value the source sent with the stay (an emergency-department
        # sample, an admission time corrected later) is not of "this stay". The CDS Hooks
        # path never had it; the stored-patient path counted it, at a negative hour.
        if at > as_of or at < admitted or value is None or value != value:
            continue
        if code == _HEIGHT_CODE and (height is None or at < height[0]):
            height = (at, float(value))
        if (
            code == _WEIGHT_CODE
            and at == admitted
            and stay.weight_kg is None
            and admission_weight is None
        ):
            admission_weight = float(value)
            continue  # the descriptor, not part of the weight series
        key = _KEY_BY_CODE.get(code)
        if key is None:
            continue
        pair = series.get(key)
        if pair is None:
            pair = series[key] = ([], [])
        pair[0].append((at - admitted).total_seconds() / 3600.0)
        pair[1].append(float(value))
    out: dict[str, float] = {}
    _descriptors(stay, t_end, out, None if height is None else height[1], admission_weight)
    empty: tuple[list[float], list[float]] = ([], [])
    for key in TIME_SERIES_VARIABLES:
        ts, vs = series.get(key, empty)
        if ts and any(b < a for a, b in pairwise(ts)):
            order = sorted(range(len(ts)), key=ts.__getitem__)
            ts, vs = [ts[i] for i in order], [vs[i] for i in order]
        extra = ("sum",) if key in _OUTPUT_KEYS else ()
        for window, hours in WINDOWS:
            lo = 0 if hours is None else bisect_right(ts, t_end - hours)
            _window_stats(ts, vs, lo, t_end, _STATS[window] + extra, f"_{window}", key, out)
    _derived(out, t_end)
    return out


def _descriptors(
    stay: StayInput,
    t_end: float,
    out: dict[str, float],
    measured_height: float | None,
    admission_weight: float | None,
) -> None:
    """Age, sex, height, weight, BMI, unit and the hour of the stay.

    Height and weight are the stay's admission descriptors: PhysioNet 2012 records them
    as rows at 00:00, which its adapter puts on the encounter. A source without such
    descriptors (FHIR, HL7 v2, the API) charts them as observations, so for a stay
    without them the first height measured so far stands in for the height, and a weight
    charted at the admission instant is the admission weight (and, as in PhysioNet, not
    part of the weight series). The rule reads the same as PhysioNet's, so it changes no
    PhysioNet stay (none of sets A and B has a height row beside its descriptor or a
    second 00:00 weight where the descriptor is missing), and the stored-patient path,
    CDS Hooks and training share it. Before, the stored path scored FHIR and HL7 stays
    without height, admission weight and BMI although the data was there.
    """
    out["age_years"] = _num(stay.age_years)
    out["sex_male"] = {"male": 1.0, "female": 0.0}.get(stay.sex, NAN)
    height = _num(stay.height_cm if stay.height_cm is not None else measured_height)
    weight = _num(stay.weight_kg if stay.weight_kg is not None else admission_weight)
    out["height_cm"], out["weight_kg"] = height, weight
    # BMI only for plausible heights: PhysioNet heights are often missing or mis-keyed.
    out["bmi"] = weight / (height / 100.0) ** 2 if 120 <= height <= 230 and weight > 0 else NAN
    # The unit's PhysioNet ICU type (clinical/codes.py, icu_type): a stay on a unit whose
    # name does not say one has its four flags unknown, as a stay without a unit, never
    # all 0 (no training stay was on none of the four).
    kind = icu_type(stay.unit)
    for unit in _UNITS:
        out[f"unit_{unit.lower()}"] = NAN if kind is None else float(kind == unit)
    out["hours_since_admission"] = t_end


def _num(value: float | None) -> float:
    return NAN if value is None else float(value)


def _window_stats(
    ts: list[float],
    vs: list[float],
    lo: int,
    t_end: float,
    stats: tuple[str, ...],
    suffix: str,
    key: str,
    out: dict[str, float],
) -> None:
    window_v = vs[lo:]
    n = len(window_v)
    for stat in stats:
        name = f"{key}_{stat}{suffix}"
        if stat == "count":
            out[name] = float(n)
        elif n == 0:
            out[name] = 0.0 if stat == "sum" else NAN
        elif stat == "last":
            out[name] = window_v[-1]
        elif stat == "first":
            out[name] = window_v[0]
        elif stat == "min":
            out[name] = min(window_v)
        elif stat == "max":
            out[name] = max(window_v)
        elif stat == "mean":
            out[name] = math.fsum(window_v) / n
        elif stat == "sum":
            out[name] = math.fsum(window_v)
        elif stat == "hours_since_last":
            out[name] = t_end - ts[-1]
        elif stat == "slope":
            out[name] = _slope(ts[lo:], window_v)


def _slope(ts: list[float], vs: list[float]) -> float:
    """Least-squares change per hour; NaN with fewer than two distinct times."""
    n = len(ts)
    if n < 2:
        return NAN
    mt = math.fsum(ts) / n
    mv = math.fsum(vs) / n
    sxx = math.fsum((t - mt) ** 2 for t in ts)
    if sxx <= 1e-12:
        return NAN
    return math.fsum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / sxx


def _derived(out: dict[str, float], t_end: float) -> None:
    pao2, fio2 = out["pao2_last_all"], out["fio2_last_all"]
    out["pf_ratio_last"] = pao2 / (fio2 / 100.0) if fio2 > 0 else NAN  # NaN propagates
    sbp = out["art_sbp_last_all"]
    if sbp != sbp:
        sbp = out["sbp_last_all"]
    hr = out["hr_last_all"]
    out["shock_index_last"] = hr / sbp if sbp > 0 else NAN
    weight = out["weight_kg"]
    if weight != weight:
        weight = out["weight_min_all"]
    hours = min(24.0, t_end)
    if out["urine_count_24h"] > 0 and weight > 0 and hours > 0:
        out["urine_ml_kg_h_24h"] = out["urine_sum_24h"] / weight / hours
    else:
        out["urine_ml_kg_h_24h"] = NAN
