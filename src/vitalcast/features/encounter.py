"""Features of one encounter at discharge (readmission-30d): one code path for training
and serving.

Input is the canonical encounter the CSV adapter (``ingest/profiles/diabetes130.yaml``)
or the store produces (length of stay, age, sex, tabular attributes, ICD-9 diagnoses),
plus the patient's history *before* this encounter. Nothing here reads a file or a
database, so training (file read through the adapter, in memory) and a scorer fed from
stored encounters compute the same numbers.

The history counts only earlier encounters of the same patient (encounter order), never
the current encounter's own outcome: a hospital knows at discharge how often it has
admitted the patient before and whether an earlier stay was followed by a readmission
within 30 days (that readmission happened at or before the current admission).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Strack et al. 2014 (Table 1 footnote): discharge dispositions meaning death (11, 19,
# 20, 21) or hospice (13, 14). Such encounters cannot be followed by a readmission and
# are outside the readmission-30d cohort, in training and in evaluation alike.
EXCLUDED_DISPOSITIONS: frozenset[int] = frozenset({11, 13, 14, 19, 20, 21})

MEDICATIONS: tuple[str, ...] = (
    "metformin",
    "repaglinide",
    "nateglinide",
    "chlorpropamide",
    "glimepiride",
    "acetohexamide",
    "glipizide",
    "glyburide",
    "tolbutamide",
    "pioglitazone",
    "rosiglitazone",
    "acarbose",
    "miglitol",
    "troglitazone",
    "tolazamide",
    "examide",
    "citoglipton",
    "insulin",
    "glyburide-metformin",
    "glipizide-metformin",
    "glimepiride-pioglitazone",
    "metformin-rosiglitazone",
    "metformin-pioglitazone",
)
# The common drugs keep their own dose-change category (No / Steady / Up / Down).
_MEDICATION_CATEGORIES = ("insulin", "metformin", "glipizide", "glyburide", "pioglitazone")
_ATTRIBUTE_NUMERIC = (
    "num_lab_procedures",
    "num_procedures",
    "num_medications",
    "number_outpatient",
    "number_emergency",
    "number_inpatient",
    "number_diagnoses",
)
_ATTRIBUTE_CATEGORICAL = (
    "race",
    "admission_type_id",
    "discharge_disposition_id",
    "admission_source_id",
    "payer_code",
    "medical_specialty",
    "max_glu_serum",
    "A1Cresult",
    "change",
    "diabetesMed",
)
ICD9_GROUPS: tuple[str, ...] = (
    "circulatory",
    "respiratory",
    "digestive",
    "diabetes",
    "injury",
    "musculoskeletal",
    "genitourinary",
    "neoplasms",
    "other",
)

READMISSION_NUMERIC: tuple[str, ...] = (
    "time_in_hospital",
    *_ATTRIBUTE_NUMERIC,
    "prior_visits_total",
    "prior_encounters",
    "prior_readmissions_30d",
    "is_readmission_30d",
    "age_mid_years",
    "medications_changed",
    "medications_on",
    *(f"diagnoses_{g}" for g in ICD9_GROUPS),
)
READMISSION_CATEGORICAL: tuple[str, ...] = (
    "gender",
    *_ATTRIBUTE_CATEGORICAL,
    "diag_1_group",
    "diag_2_group",
    "diag_3_group",
    *(f"med_{m}" for m in _MEDICATION_CATEGORIES),
)


@dataclass(frozen=True, slots=True)
class PriorHistory:
    """The patient's encounters before this one, as the health system knows them."""

    encounters: int = 0
    readmissions_30d: int = 0
    previous_readmitted_30d: bool = False


@dataclass(frozen=True, slots=True)
class EncounterInput:
    """What the features of one encounter at discharge are computed from."""

    length_of_stay_days: float | None
    age_years: float | None
    sex: str
    attributes: Mapping[str, Any]
    diagnoses: Sequence[str | None]  # ICD-9 codes by position (primary first); None: none
    history: PriorHistory = field(default_factory=PriorHistory)


def icd9_group(code: str | None) -> str:
    """ICD-9 chapter groups of Strack et al. 2014 (Table 2)."""
    if not code or code == "?":
        return "missing"
    if code[0] in "EV":
        return "other"
    try:
        x = float(code)
    except ValueError:
        return "other"
    if 250 <= x < 251:
        return "diabetes"
    for lo, hi, name in (
        (390, 460, "circulatory"),
        (785, 786, "circulatory"),
        (460, 520, "respiratory"),
        (786, 787, "respiratory"),
        (520, 580, "digestive"),
        (787, 788, "digestive"),
        (800, 1000, "injury"),
        (710, 740, "musculoskeletal"),
        (580, 630, "genitourinary"),
        (788, 789, "genitourinary"),
        (140, 240, "neoplasms"),
    ):
        if lo <= x < hi:
            return name
    return "other"


def in_readmission_cohort(attributes: Mapping[str, Any]) -> bool:
    """False for encounters that end in death or hospice (:data:`EXCLUDED_DISPOSITIONS`)."""
    return _int(attributes.get("discharge_disposition_id")) not in EXCLUDED_DISPOSITIONS


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float:
    try:
        return float("nan") if value is None else float(value)
    except (TypeError, ValueError):
        return float("nan")


def _category(value: Any) -> str | None:
    return None if value is None else str(value)


def readmission_features(enc: EncounterInput) -> dict[str, float | str | None]:
    """Features of one encounter at discharge: numbers (NaN when missing) and categories
    (None when missing), named as :data:`READMISSION_NUMERIC` and
    :data:`READMISSION_CATEGORICAL`."""
    a = enc.attributes
    out: dict[str, float | str | None] = {"time_in_hospital": _float(enc.length_of_stay_days)}
    for col in _ATTRIBUTE_NUMERIC:
        out[col] = _float(a.get(col))
    # All visits of the year before (Strack et al.'s strongest predictor family).
    out["prior_visits_total"] = sum(
        _float(a.get(c)) for c in ("number_outpatient", "number_emergency", "number_inpatient")
    )
    out["prior_encounters"] = float(enc.history.encounters)
    out["prior_readmissions_30d"] = float(enc.history.readmissions_30d)
    out["is_readmission_30d"] = float(enc.history.previous_readmitted_30d)
    out["age_mid_years"] = _float(enc.age_years)
    meds = [a.get(m) for m in MEDICATIONS if m in a]
    out["medications_changed"] = float(sum(v in ("Up", "Down") for v in meds))
    out["medications_on"] = float(sum(v is not None and v != "No" for v in meds))
    groups = [icd9_group(code) for code in enc.diagnoses]
    for g in ICD9_GROUPS:
        out[f"diagnoses_{g}"] = float(groups.count(g))
    out["gender"] = enc.sex
    for col in _ATTRIBUTE_CATEGORICAL:
        out[col] = _category(a.get(col))
    for i in range(3):
        out[f"diag_{i + 1}_group"] = groups[i] if i < len(groups) else "missing"
    for m in _MEDICATION_CATEGORIES:
        out[f"med_{m}"] = _category(a.get(m))
    return out
