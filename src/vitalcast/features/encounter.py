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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Strack et al. 2014 (Table 1 footnote): discharge dispositions meaning death (11, 19,
# 20, 21) or hospice (13, 14). Such encounters cannot be followed by a readmission and
# are outside the readmission-30d cohort, in training and in evaluation alike.
EXCLUDED_DISPOSITIONS: frozenset[int] = frozenset({11, 13, 14, 19, 20, 21})


def admission_type_name(code: Any, names: Mapping[int, str]) -> str:
    """``"1"`` -> ``names[1]`` (e.g. "Emergency"); missing -> ``"unknown"``; a code
    without a name is kept as ``"code 9"`` so that it still forms its own group."""
    number = _int(code)
    if number is None:
        return "unknown"
    return names.get(number, f"code {number}")


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

# Charlson comorbidity categories (Deyo/Quan ICD-9-CM coding) and their weights.
CHARLSON_WEIGHTS: dict[str, int] = {
    "mi": 1,
    "chf": 1,
    "pvd": 1,
    "cvd": 1,
    "dementia": 1,
    "copd": 1,
    "rheum": 1,
    "pud": 1,
    "liver_mild": 1,
    "dm": 1,
    "dm_comp": 2,
    "hemiplegia": 2,
    "renal": 2,
    "cancer": 2,
    "liver_severe": 3,
    "metastatic": 6,
    "hiv": 6,
}

# 3-digit ICD-9 categories (leading zeros dropped, as the export writes them: "38" is
# septicaemia 038) seen at least 500 times over diag_1..3 on the training side of the
# patient split. Counted by label-free frequency only; they give the model the
# diagnoses the nine chapter groups merge (heart failure 428 vs hypertension 401).
ICD9_CATEGORIES: tuple[str, ...] = (
    "8",
    "38",
    "41",
    "162",
    "197",
    "198",
    "244",
    "250",
    "272",
    "276",
    "278",
    "280",
    "285",
    "287",
    "295",
    "296",
    "305",
    "401",
    "402",
    "403",
    "410",
    "411",
    "413",
    "414",
    "424",
    "425",
    "426",
    "427",
    "428",
    "433",
    "434",
    "435",
    "438",
    "440",
    "453",
    "458",
    "486",
    "491",
    "493",
    "496",
    "507",
    "511",
    "518",
    "530",
    "535",
    "560",
    "562",
    "571",
    "574",
    "577",
    "578",
    "584",
    "585",
    "599",
    "648",
    "682",
    "707",
    "715",
    "722",
    "724",
    "730",
    "733",
    "780",
    "785",
    "786",
    "787",
    "788",
    "789",
    "799",
    "820",
    "996",
    "997",
    "998",
    "V45",
    "V57",
    "V58",
)

# History from the patient's earlier encounters (numbers; NaN when there is none).
HISTORY_NUMERIC: tuple[str, ...] = (
    "prev_length_of_stay",
    "prior_length_of_stay_total",
    "prior_inpatient_visits_total",
    "prior_emergency_visits_max",
    "prev_num_medications",
    "prev_number_inpatient",
    "prev_number_diagnoses",
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
    *HISTORY_NUMERIC,
    *(f"charlson_{c}" for c in CHARLSON_WEIGHTS),
    "charlson_index",
    *(f"icd9_{c}" for c in ICD9_CATEGORIES),
)
READMISSION_CATEGORICAL: tuple[str, ...] = (
    "gender",
    *_ATTRIBUTE_CATEGORICAL,
    "diag_1_group",
    "diag_2_group",
    "diag_3_group",
    *(f"med_{m}" for m in _MEDICATION_CATEGORIES),
    "prev_discharge_disposition_id",
)


# What the next encounter reads of the previous one (see :func:`_history_features`).
PREVIOUS_ATTRIBUTES: tuple[str, ...] = (
    "num_medications",
    "number_inpatient",
    "number_diagnoses",
    "discharge_disposition_id",
)


@dataclass(frozen=True, slots=True)
class PreviousEncounter:
    """The patient's most recent earlier encounter, as recorded at its discharge: its
    length of stay and its :data:`PREVIOUS_ATTRIBUTES` only (training keeps one per
    patient, so not the whole attribute row)."""

    length_of_stay_days: float | None
    attributes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PriorHistory:
    """The patient's encounters before this one, as the health system knows them.

    Build it with :func:`after_encounter`, one encounter at a time in encounter order,
    so a stored-encounter scorer and the training loader fold the same history.
    """

    encounters: int = 0
    readmissions_30d: int = 0
    previous_readmitted_30d: bool = False
    length_of_stay_days_total: float = 0.0
    inpatient_visits_total: float = 0.0  # sum of earlier encounters' number_inpatient
    emergency_visits_max: float | None = None  # max of earlier number_emergency
    previous: PreviousEncounter | None = None


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
    x = _icd9_value(code)
    if x is None:
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


def _icd9_value(code: str) -> float | None:
    try:
        return float(code)
    except ValueError:
        return None


def charlson_conditions(codes: Sequence[str | None]) -> frozenset[str]:
    """Charlson comorbidity categories (keys of :data:`CHARLSON_WEIGHTS`) among ICD-9-CM
    codes, after Quan et al. 2005's enhanced ICD-9-CM coding.

    Why: the chapter groups put heart failure with hypertension and metastatic cancer
    with a benign neoplasm; Charlson's categories separate the conditions that carry
    risk after discharge. Only the three coded diagnoses exist here, so this is the
    comorbidity burden the encounter's coding shows, not a full history.
    """
    found: set[str] = set()
    for code in codes:
        if not code or code == "?":
            continue
        if code[0] == "V":
            if code.startswith("V434"):
                found.add("pvd")
            elif code.startswith("V427"):
                found.add("liver_mild")
            elif code.startswith(("V420", "V451", "V56")):
                found.add("renal")
            continue
        x = _icd9_value(code)
        if x is None:
            continue
        i = int(x)
        if i in (410, 412):
            found.add("mi")
        if i == 428 or 425.4 <= x < 426 or x in _CHF_EXTRA:
            found.add("chf")
        if i in (440, 441) or x in _PVD_EXTRA:
            found.add("pvd")
        if 430 <= i <= 438 or x == 362.34:
            found.add("cvd")
        if i == 290 or x in (294.1, 331.2):
            found.add("dementia")
        if 490 <= i <= 505 or x in (506.4, 508.1, 508.8, 416.8, 416.9):
            found.add("copd")
        if i in (714, 725) or x in (710.0, 710.1, 710.2, 710.3, 710.4):
            found.add("rheum")
        if 531 <= i <= 534:
            found.add("pud")
        if i in (570, 571) or x in _LIVER_MILD_EXTRA:
            found.add("liver_mild")
        if i == 250:
            fourth = round((x - 250) * 10, 3)
            found.add("dm_comp" if 4 <= fourth < 8 else "dm")
        if i in (342, 343) or 344.0 <= x <= 344.6 or x == 344.9:
            found.add("hemiplegia")
        if i in (582, 583, 585, 586, 588) or x in _RENAL_EXTRA:
            found.add("renal")
        if 140 <= i <= 172 or 174 <= i <= 195 or 200 <= i <= 208 or x == 238.6:
            found.add("cancer")
        if x in (456.0, 456.1, 456.2) or 572.2 <= x <= 572.8:
            found.add("liver_severe")
        if 196 <= i <= 199:
            found.add("metastatic")
        if 42 <= i <= 44:
            found.add("hiv")
    return frozenset(found)


_CHF_EXTRA = frozenset(
    {398.91, 402.01, 402.11, 402.91, 404.01, 404.03, 404.11, 404.13, 404.91, 404.93}
)
_PVD_EXTRA = frozenset({443.1, 443.2, 443.8, 443.9, 447.1, 557.1, 557.9, 785.4, 93.0, 437.3})
_LIVER_MILD_EXTRA = frozenset(
    {573.3, 573.4, 573.8, 573.9, 70.22, 70.23, 70.32, 70.33, 70.44, 70.54, 70.6, 70.9}
)
_RENAL_EXTRA = frozenset({403.01, 403.11, 403.91, 404.02, 404.03, 404.12, 404.13, 404.92, 404.93})


def icd9_category(code: str | None) -> str | None:
    """The 3-digit ICD-9 category of a code as the export writes it ("428.0" -> "428")."""
    if not code or code == "?":
        return None
    return code.split(".", 1)[0]


def after_encounter(
    history: PriorHistory, enc: EncounterInput, readmitted_30d: bool
) -> PriorHistory:
    """The history the patient's *next* encounter sees, once ``enc`` is over.

    ``readmitted_30d`` is ``enc``'s own outcome: it is known by the next admission (a
    readmission within 30 days is at or before it), never by ``enc``'s own discharge, so
    it only ever reaches later encounters. Pure: the same encounters in the same order
    give the same history, in training and in a scorer of stored encounters.
    """
    a = enc.attributes
    los = _float(enc.length_of_stay_days)
    emergency = _float(a.get("number_emergency"))
    best = history.emergency_visits_max
    if emergency == emergency:
        best = emergency if best is None else max(best, emergency)
    inpatient = _float(a.get("number_inpatient"))
    return PriorHistory(
        encounters=history.encounters + 1,
        readmissions_30d=history.readmissions_30d + int(readmitted_30d),
        previous_readmitted_30d=readmitted_30d,
        length_of_stay_days_total=history.length_of_stay_days_total + (los if los == los else 0.0),
        inpatient_visits_total=history.inpatient_visits_total
        + (inpatient if inpatient == inpatient else 0.0),
        emergency_visits_max=best,
        previous=PreviousEncounter(
            enc.length_of_stay_days, {k: a.get(k) for k in PREVIOUS_ATTRIBUTES}
        ),
    )


def encounter_order(admitted_at: datetime, ref: str) -> tuple[datetime, float, str]:
    """Sort key of encounters in the order their history is folded: admission time,
    then the number ending the source's encounter reference, then the reference.

    Diabetes 130 has no dates (every stay is anchored at one admission time), but its
    encounter ids grow with time; an export with dates is ordered by them. Training and
    the stored-encounter scorer both sort with this key, so they fold one history.
    """
    tail = ref.rsplit(":", 1)[-1]
    number = float(tail) if tail.isdigit() else float("inf")
    return admitted_at, number, ref


def diagnoses_by_slot(coded: Iterable[tuple[str, str]], slots: Sequence[str]) -> list[str | None]:
    """An encounter's ICD-9 codes by diagnosis position, from ``(source_ref, code)`` pairs.

    The CSV adapter writes a condition's ``source_ref`` as ``"<file>:<line> <column>"``:
    its column says which diagnosis it was (``diag_1`` is the primary). A position the
    record left empty is None. Codes whose column is not a slot (a FHIR Condition, say)
    fill the positions after the slotted ones, in the order given.

    A code is one diagnosis however many positions list it: only its first position
    keeps it. The store records a diagnosis once per encounter (one ``conditions`` row per
    code), so counting an export's repeated code twice in training would give features
    that no stored encounter can reproduce.
    """
    by_slot: dict[str, str] = {}
    unslotted: list[str] = []
    for source_ref, code in coded:
        column = source_ref.rsplit(" ", 1)[-1] if " " in source_ref else ""
        if column in slots and column not in by_slot:
            by_slot[column] = code
        else:
            unslotted.append(code)
    out: list[str | None] = []
    seen: set[str] = set()
    for slotted in [by_slot.get(col) for col in slots]:
        out.append(slotted if slotted not in seen else None)
        if slotted is not None:
            seen.add(slotted)
    for code in unslotted:
        if code in seen:
            continue
        seen.add(code)
        if None in out:
            out[out.index(None)] = code
        else:
            out.append(code)
    return out


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
    out.update(_history_features(enc.history))
    conditions = charlson_conditions(enc.diagnoses)
    for c in CHARLSON_WEIGHTS:
        out[f"charlson_{c}"] = float(c in conditions)
    out["charlson_index"] = float(sum(CHARLSON_WEIGHTS[c] for c in conditions))
    categories = [icd9_category(code) for code in enc.diagnoses]
    for c in ICD9_CATEGORIES:
        out[f"icd9_{c}"] = float(categories.count(c))
    return out


def _history_features(h: PriorHistory) -> dict[str, float | str | None]:
    """Earlier encounters' stays: how long, how sick, where the patient went after."""
    nan = float("nan")
    prev = h.previous
    pa: Mapping[str, Any] = prev.attributes if prev is not None else {}
    return {
        "prev_length_of_stay": _float(prev.length_of_stay_days) if prev is not None else nan,
        "prior_length_of_stay_total": h.length_of_stay_days_total,
        "prior_inpatient_visits_total": h.inpatient_visits_total,
        "prior_emergency_visits_max": (
            nan if h.emergency_visits_max is None else h.emergency_visits_max
        ),
        "prev_num_medications": _float(pa.get("num_medications")),
        "prev_number_inpatient": _float(pa.get("number_inpatient")),
        "prev_number_diagnoses": _float(pa.get("number_diagnoses")),
        "prev_discharge_disposition_id": _category(pa.get("discharge_disposition_id")),
    }
