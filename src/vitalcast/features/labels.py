"""Clinical words for feature names: what explanations show instead of ``lactate_last_all``.

The ICU stay features are named here; the readmission features in
:mod:`vitalcast.features.encounter_labels`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cache

from vitalcast.clinical.codes import BY_KEY, VariableSpec
from vitalcast.features.encounter_labels import (
    READMISSION_FLAGS,
    READMISSION_WORDS,
    readmission_value_words,
)
from vitalcast.features.stay import TIME_SERIES_VARIABLES

_STAT_WORDS = {
    "last": "latest",
    "first": "first",
    "min": "lowest",
    "max": "highest",
    "mean": "average",
    "count": "number of measurements",
    "sum": "total",
    "slope": "trend per hour",
    "hours_since_last": "hours since last measurement",
}
_WINDOW_WORDS = {"all": "this stay", "24h": "last 24 h", "6h": "last 6 h"}
_STATIC = {
    "age_years": ("Age", "years"),
    "sex_male": ("Sex (male)", ""),
    "height_cm": ("Height", "cm"),
    "weight_kg": ("Weight at admission", "kg"),
    "bmi": ("Body-mass index", "kg/m²"),
    "unit_ccu": ("Coronary care unit", ""),
    "unit_csru": ("Cardiac surgery recovery unit", ""),
    "unit_micu": ("Medical ICU", ""),
    "unit_sicu": ("Surgical ICU", ""),
    "hours_since_admission": ("Time since admission", "h"),
    "pf_ratio_last": ("PaO₂/FiO₂ ratio (latest)", "mmHg"),
    "shock_index_last": ("Shock index (HR/SBP, latest)", ""),
    "urine_ml_kg_h_24h": ("Urine output, last 24 h", "mL/kg/h"),
    **READMISSION_WORDS,
}
_FLAGS = frozenset({"sex_male", *READMISSION_FLAGS})


@cache
def _parse(name: str) -> tuple[VariableSpec, str, str] | None:
    for key in sorted(TIME_SERIES_VARIABLES, key=len, reverse=True):
        if name.startswith(key + "_"):
            stat, _, window = name[len(key) + 1 :].rpartition("_")
            if stat in _STAT_WORDS and window in _WINDOW_WORDS:
                return BY_KEY[key], stat, window
    return None


# A model's own words for its features, (label, unit) by name: a tabular task file's
# `labels` (the data team knows what its columns mean; vitalcast does not).
Words = Mapping[str, Sequence[str]]


def feature_label(name: str, words: Words | None = None) -> str:
    """``"lactate_max_24h"`` -> ``"Lactate, highest (last 24 h)"``; ``words`` first;
    unknown names with spaces for underscores."""
    if words and name in words:
        return str(words[name][0])
    if name in _STATIC:
        return _STATIC[name][0]
    parsed = _parse(name)
    if parsed is None:
        return name.replace("_", " ")
    spec, stat, window = parsed
    return f"{spec.label}, {_STAT_WORDS[stat]} ({_WINDOW_WORDS[window]})"


def _unit(name: str, words: Words | None = None) -> str:
    if words and name in words:
        return str(words[name][1]) if len(words[name]) > 1 else ""
    if name in _STATIC:
        return _STATIC[name][1]
    parsed = _parse(name)
    if parsed is None:
        return ""
    spec, stat, _window = parsed
    if stat == "count":
        return ""
    if stat == "hours_since_last":
        return "h"
    if stat == "slope":
        return f"{spec.display_unit}/h" if spec.display_unit else "per h"
    return spec.display_unit


def count_feature(name: str) -> str | None:
    """The number-of-measurements feature of a total (``urine_sum_24h`` ->
    ``urine_count_24h``); None for any other feature."""
    parsed = _parse(name)
    if parsed is None or parsed[1] != "sum":
        return None
    spec, _stat, window = parsed
    return f"{spec.key}_count_{window}"


def describe_feature(
    name: str,
    value: float | str | None,
    words: Words | None = None,
    *,
    count: float | None = None,
) -> str:
    """The feature and its value as a clinician would say it, e.g. ``Lactate, latest
    (this stay) 4.1 mmol/L`` or ``... not measured``.

    ``count``: for a total, its window's number of measurements (:func:`count_feature`).
    A total over no measurement is 0 for the model (nothing charted adds nothing), but
    "Urine output, total (last 24 h): 0 mL" reads as anuria; it says "none charted".
    """
    label = feature_label(name, words)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{label}: {_absent(name, words)}"
    if count == 0 and count_feature(name) is not None:
        return f"{label}: none charted"
    if isinstance(value, str):
        return f"{label}: {readmission_value_words(name, value)}"
    if name.startswith("unit_") or name in _FLAGS:
        return f"{label}: {'yes' if value >= 0.5 else 'no'}"
    unit = _unit(name, words)
    return f"{label}: {_number(value, signed='_slope_' in name)} {unit}".rstrip()


# Descriptors of the stay are recorded, not measured: "Age: not measured" is no sentence.
_RECORDED = frozenset(
    {"age_years", "sex_male", *(f"unit_{u}" for u in ("ccu", "csru", "micu", "sicu"))}
)


def _absent(name: str, words: Words | None) -> str:
    """What a missing value says. A trend is missing with one measurement as well as with
    none ("Lactate, trend per hour: not measured" beside a lactate of 4.1 misleads), and
    a descriptor (or a discharge's fact, as the patient page words it) is not measured
    but recorded."""
    if words and name in words:
        return "not measured"
    if name in _RECORDED or name in READMISSION_WORDS:  # a discharge's facts are recorded
        return "not recorded"
    parsed = _parse(name)
    if parsed is not None and parsed[1] == "slope":
        return "too few measurements for a trend"
    return "not measured"


def _number(value: float, *, signed: bool) -> str:
    """Three significant digits, but never the exponent form ``"%.3g"`` switches to from
    1000 on: a glucose of 1234 mg/dL read "1.23e+03 mg/dL", a day's urine output
    "2.45e+03 mL", a platelet count of 999.6 "1e+03". Such values are whole numbers."""
    shown = f"{value:+.3g}" if signed else f"{value:.3g}"
    if "e" in shown:
        shown = f"{value:+.0f}" if signed else f"{value:.0f}"
    return shown
