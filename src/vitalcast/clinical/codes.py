"""The clinical vocabulary: variables, their LOINC codes, UCUM units and plausible ranges.

One table serves every layer: ingestion maps source names to codes and checks ranges,
features name their columns after ``VariableSpec.key``, explanations speak in
``VariableSpec.label``, and the synthetic generator draws values within the ranges.

Plausibility ranges are deliberately wide physiological limits, not normal ranges: they
reject device artefacts (a heart rate of 0, a temperature of -17.8 °C in PhysioNet 2012)
without touching real, extreme values of critically ill patients.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["vital", "lab", "intervention", "descriptor", "output"]

LOINC = "http://loinc.org"
LOCAL = "urn:vitalcast:codes"


@dataclass(frozen=True, slots=True)
class VariableSpec:
    """One clinical variable of the canonical store."""

    key: str  # short feature-friendly name, e.g. "hr"
    code: str  # LOINC code (or a local code where LOINC has no numeric equivalent)
    unit: str  # the one canonical UCUM unit for this code
    label: str  # clinical words for clinicians
    display_unit: str  # unit as clinicians write it
    kind: Kind
    low: float  # plausible range, inclusive unless low_exclusive; outside it: quarantined
    high: float
    physionet: str | None = None  # the PhysioNet 2012 parameter name
    system: str = LOINC
    low_exclusive: bool = False  # True where the low limit itself is an artefact (HR 0)


# fmt: off
VARIABLES: tuple[VariableSpec, ...] = (
    # Vital signs
    VariableSpec("hr", "8867-4", "/min", "Heart rate", "bpm", "vital", 0, 300, "HR", low_exclusive=True),
    VariableSpec("resp_rate", "9279-1", "/min", "Respiratory rate", "/min", "vital", 0, 80, "RespRate", low_exclusive=True),
    VariableSpec("temp", "8310-5", "Cel", "Temperature", "°C", "vital", 25, 45, "Temp"),
    VariableSpec("sbp", "8480-6", "mm[Hg]", "Systolic BP (cuff)", "mmHg", "vital", 0, 300, "NISysABP", low_exclusive=True),
    VariableSpec("dbp", "8462-4", "mm[Hg]", "Diastolic BP (cuff)", "mmHg", "vital", 0, 250, "NIDiasABP", low_exclusive=True),
    VariableSpec("map", "8478-0", "mm[Hg]", "Mean arterial pressure (cuff)", "mmHg", "vital", 0, 250, "NIMAP", low_exclusive=True),
    VariableSpec("art_sbp", "76215-3", "mm[Hg]", "Systolic BP (arterial line)", "mmHg", "vital", 0, 300, "SysABP", low_exclusive=True),
    VariableSpec("art_dbp", "76213-8", "mm[Hg]", "Diastolic BP (arterial line)", "mmHg", "vital", 0, 250, "DiasABP", low_exclusive=True),
    VariableSpec("art_map", "76214-6", "mm[Hg]", "Mean arterial pressure (arterial line)", "mmHg", "vital", 0, 250, "MAP", low_exclusive=True),
    VariableSpec("spo2", "59408-5", "%", "Oxygen saturation (pulse oximetry)", "%", "vital", 30, 100),
    VariableSpec("gcs", "9269-2", "{score}", "Glasgow Coma Scale", "points", "vital", 3, 15, "GCS"),
    VariableSpec("fio2", "3150-0", "%", "Inspired oxygen (FiO₂)", "%", "intervention", 21, 100, "FiO2"),
    VariableSpec("mech_vent", "mech-vent", "1", "Mechanical ventilation", "", "intervention", 0, 1, "MechVent", system=LOCAL),
    VariableSpec("urine", "9187-6", "mL", "Urine output", "mL", "output", 0, 5000, "Urine"),
    VariableSpec("weight", "29463-7", "kg", "Body weight", "kg", "descriptor", 20, 350, "Weight"),
    VariableSpec("height", "8302-2", "cm", "Body height", "cm", "descriptor", 100, 230, "Height"),
    # Laboratory results
    VariableSpec("albumin", "1751-7", "g/dL", "Albumin", "g/dL", "lab", 0.5, 7, "Albumin"),
    VariableSpec("alp", "6768-6", "U/L", "Alkaline phosphatase", "U/L", "lab", 1, 5000, "ALP"),
    VariableSpec("alt", "1742-6", "U/L", "ALT", "U/L", "lab", 1, 15000, "ALT"),
    VariableSpec("ast", "1920-8", "U/L", "AST", "U/L", "lab", 1, 30000, "AST"),
    VariableSpec("bilirubin", "1975-2", "mg/dL", "Bilirubin (total)", "mg/dL", "lab", 0.05, 60, "Bilirubin"),
    VariableSpec("bun", "3094-0", "mg/dL", "Blood urea nitrogen", "mg/dL", "lab", 1, 300, "BUN"),
    VariableSpec("cholesterol", "2093-3", "mg/dL", "Cholesterol", "mg/dL", "lab", 20, 1000, "Cholesterol"),
    VariableSpec("creatinine", "2160-0", "mg/dL", "Creatinine", "mg/dL", "lab", 0.05, 30, "Creatinine"),
    VariableSpec("glucose", "2345-7", "mg/dL", "Glucose", "mg/dL", "lab", 10, 2000, "Glucose"),
    VariableSpec("hco3", "1963-8", "mmol/L", "Bicarbonate", "mmol/L", "lab", 2, 60, "HCO3"),
    VariableSpec("hct", "4544-3", "%", "Haematocrit", "%", "lab", 5, 75, "HCT"),
    VariableSpec("potassium", "2823-3", "mmol/L", "Potassium", "mmol/L", "lab", 1, 12, "K"),
    VariableSpec("lactate", "2524-7", "mmol/L", "Lactate", "mmol/L", "lab", 0.1, 30, "Lactate"),
    # PhysioNet documents Mg in mmol/L, but its values (mean 2.03) are mg/dL: normal serum
    # magnesium is 0.7-1.0 mmol/L = 1.7-2.4 mg/dL. We store the mass concentration.
    VariableSpec("magnesium", "19123-9", "mg/dL", "Magnesium", "mg/dL", "lab", 0.3, 10, "Mg"),
    VariableSpec("sodium", "2951-2", "mmol/L", "Sodium", "mmol/L", "lab", 90, 200, "Na"),
    VariableSpec("paco2", "2019-8", "mm[Hg]", "PaCO₂", "mmHg", "lab", 5, 200, "PaCO2"),
    VariableSpec("pao2", "2703-7", "mm[Hg]", "PaO₂", "mmHg", "lab", 10, 700, "PaO2"),
    VariableSpec("ph", "2744-1", "[pH]", "Arterial pH", "", "lab", 6.5, 8.0, "pH"),
    VariableSpec("platelets", "777-3", "10*3/uL", "Platelets", "×10³/µL", "lab", 1, 2500, "Platelets"),
    VariableSpec("sao2", "2708-6", "%", "Arterial O₂ saturation", "%", "lab", 30, 100, "SaO2"),
    VariableSpec("troponin_i", "10839-9", "ug/L", "Troponin I", "ng/mL", "lab", 0, 500, "TroponinI"),
    VariableSpec("troponin_t", "6598-7", "ug/L", "Troponin T", "ng/mL", "lab", 0, 100, "TroponinT"),
    VariableSpec("wbc", "6690-2", "10*3/uL", "White cell count", "×10³/µL", "lab", 0.05, 500, "WBC"),
)
# fmt: on

BY_KEY: dict[str, VariableSpec] = {v.key: v for v in VARIABLES}
BY_CODE: dict[str, VariableSpec] = {v.code: v for v in VARIABLES}
BY_PHYSIONET: dict[str, VariableSpec] = {v.physionet: v for v in VARIABLES if v.physionet}

# Blood-pressure panels whose components carry the values (FHIR vital-signs profile).
BP_PANEL_CODES = frozenset({"85354-9", "55284-4"})

# ICU types of PhysioNet 2012 (descriptor ICUType) and the unit names used in the store.
ICU_TYPES: dict[int, str] = {1: "CCU", 2: "CSRU", 3: "MICU", 4: "SICU"}

# Care-unit names (case and spacing aside) that say which ICU type of PhysioNet 2012 a
# stay is on. The challenge's ICUType is 1 coronary care, 2 cardiac surgery recovery, 3
# medical ICU, 4 surgical ICU, and its stays were admitted "to cardiac, medical, surgical,
# and trauma ICUs" (challenge description): trauma stays were surgical ICU stays. MIMIC-IV
# (same hospital, later years) spells units "Medical Intensive Care Unit (MICU)"; HL7 PV1-3
# and FHIR Encounter.location carry a hospital's own names. Only names that leave no
# doubt are here:
# - CVICU, MIMIC-IV's "Cardiac Vascular Intensive Care Unit", is BIDMC's cardiac surgery
#   recovery unit (the CSRU of MIMIC-II and PhysioNet 2012): CSRU.
# - Trauma SICU (TSICU) and Neuro SICU are surgical ICUs: SICU.
# - The mixed "Medical/Surgical Intensive Care Unit (MICU/SICU)" is deliberately absent:
#   it takes medical and surgical patients alike, whose mortality differs (PhysioNet
#   2012 sets A and B: in-hospital death 19.2 % of MICU, 14.6 % of SICU stays), and the
#   unit name cannot tell which a stay is. Either choice would be a guess stated as a
#   fact; unknown is what the model is told (see :func:`icu_type`).
# Every other name (a general ward, "Neuro Stepdown", "4 West") has no ICU type.
_ICU_TYPE_OF_NAME: dict[str, str] = {
    "ccu": "CCU",
    "coronary care unit": "CCU",
    "csru": "CSRU",
    "cardiac surgery recovery unit": "CSRU",
    "cvicu": "CSRU",
    "cardiac vascular intensive care unit": "CSRU",
    "micu": "MICU",
    "medical icu": "MICU",
    "medical intensive care unit": "MICU",
    "sicu": "SICU",
    "surgical icu": "SICU",
    "surgical intensive care unit": "SICU",
    "tsicu": "SICU",
    "trauma sicu": "SICU",
    "trauma surgical intensive care unit": "SICU",
    "neuro sicu": "SICU",
    "neuro surgical intensive care unit": "SICU",
}
# "Name (ABBREVIATION)", as MIMIC-IV writes its units.
_NAME_AND_ABBREVIATION = re.compile(r"^([^()]+?)\s*\(([^()]+)\)$")


def icu_type(unit: str | None) -> str | None:
    """The PhysioNet 2012 ICU type ("CCU", "CSRU", "MICU" or "SICU") of a stay on the
    care unit named ``unit``; None when the name does not say (or there is no name).

    Why: the stay model's unit features are PhysioNet's four ICU types. A stay whose unit
    was spelt otherwise ("Medical Intensive Care Unit (MICU)" from MIMIC-IV) had all four
    set to 0, a combination no training stay had, which told the model "none of these
    ICUs" rather than "not known". A name written as "Name (ABBR)" is recognised only
    when both parts are known and agree, so an unknown ward with a familiar abbreviation
    in brackets is not guessed. The stored unit name is never changed: the unit filter
    (``VITALCAST_STAY_UNITS``), users' units and the ward compare that name as it is.
    """
    if unit is None:
        return None
    name = " ".join(unit.split()).casefold()
    found = _ICU_TYPE_OF_NAME.get(name)
    if found is not None:
        return found
    parts = _NAME_AND_ABBREVIATION.match(name)
    if parts is None:
        return None
    full, abbreviation = (_ICU_TYPE_OF_NAME.get(p.strip()) for p in parts.groups())
    return full if full is not None and full == abbreviation else None


def is_plausible(spec: VariableSpec, value: float) -> bool:
    """Whether ``value`` (in the canonical unit) lies in the variable's plausible range."""
    if spec.low_exclusive:
        return spec.low < value <= spec.high
    return spec.low <= value <= spec.high


def plausible_range_text(spec: VariableSpec) -> str:
    """The plausible range in words that say whether its low limit is allowed: "0-300"
    would tell a reader that a heart rate of 0 passes, and :func:`is_plausible` refuses it."""
    if spec.low_exclusive:
        return f"above {spec.low:g}, up to {spec.high:g}"
    return f"{spec.low:g}-{spec.high:g}"
