"""Clinical words for the readmission features (``features/encounter.py``).

An explanation that says ``icd9_428: 1`` or ``number_inpatient: 3`` asks the clinician to
know the Diabetes 130 export's column names; "Heart failure (ICD-9 428) coded: 1" and
"Inpatient admissions in the year before: 3" do not. The names below follow the export's
documentation (Strack et al. 2014, Table 1) and the ICD-9-CM category titles, shortened.
"""

from __future__ import annotations

from vitalcast.features.encounter import ICD9_CATEGORIES, ICD9_GROUPS, READMISSION_CATEGORICAL

# (label, unit) of each named feature.
_NAMED: dict[str, tuple[str, str]] = {
    "time_in_hospital": ("Length of this stay", "days"),
    "num_lab_procedures": ("Lab tests this stay", ""),
    "num_procedures": ("Procedures this stay (other than lab tests)", ""),
    "num_medications": ("Distinct medications given this stay", ""),
    "number_outpatient": ("Outpatient visits in the year before", ""),
    "number_emergency": ("Emergency visits in the year before", ""),
    "number_inpatient": ("Inpatient admissions in the year before", ""),
    "number_diagnoses": ("Diagnoses coded this stay", ""),
    "prior_visits_total": ("Visits of any kind in the year before", ""),
    "prior_encounters": ("Earlier stays on record", ""),
    "prior_readmissions_30d": ("Earlier readmissions within 30 days", ""),
    "is_readmission_30d": ("This stay began within 30 days of the last", ""),
    "age_mid_years": ("Age (middle of the 10-year band)", "years"),
    "medications_changed": ("Diabetes medications with a dose change", ""),
    "medications_on": ("Diabetes medications taken", ""),
    "prev_length_of_stay": ("Length of the previous stay", "days"),
    "prior_length_of_stay_total": ("Days in hospital over earlier stays", "days"),
    "prior_inpatient_visits_total": ("Inpatient admissions before earlier stays", ""),
    "prior_emergency_visits_max": ("Most emergency visits before an earlier stay", ""),
    "prev_num_medications": ("Medications given in the previous stay", ""),
    "prev_number_inpatient": ("Inpatient admissions before the previous stay", ""),
    "prev_number_diagnoses": ("Diagnoses coded in the previous stay", ""),
    "charlson_index": ("Charlson comorbidity index (coded diagnoses)", ""),
    "gender": ("Sex", ""),
    "race": ("Race (as recorded)", ""),
    "admission_type_id": ("Admission type", ""),
    "discharge_disposition_id": ("Discharged to", ""),
    "admission_source_id": ("Admitted from", ""),
    "payer_code": ("Payer", ""),
    "medical_specialty": ("Admitting specialty", ""),
    "max_glu_serum": ("Serum glucose test, highest", ""),
    "A1Cresult": ("HbA1c test result", ""),
    "change": ("Diabetes medication changed", ""),
    "diabetesMed": ("Diabetes medication prescribed", ""),
    "diag_1_group": ("Primary diagnosis group", ""),
    "diag_2_group": ("Secondary diagnosis group", ""),
    "diag_3_group": ("Additional diagnosis group", ""),
    "prev_discharge_disposition_id": ("Previous stay: discharged to", ""),
}

_CHARLSON = {
    "mi": "myocardial infarction",
    "chf": "congestive heart failure",
    "pvd": "peripheral vascular disease",
    "cvd": "cerebrovascular disease",
    "dementia": "dementia",
    "copd": "chronic pulmonary disease",
    "rheum": "rheumatic disease",
    "pud": "peptic ulcer disease",
    "liver_mild": "mild liver disease",
    "dm": "diabetes without complications",
    "dm_comp": "diabetes with complications",
    "hemiplegia": "hemiplegia or paraplegia",
    "renal": "renal disease",
    "cancer": "cancer",
    "liver_severe": "moderate or severe liver disease",
    "metastatic": "metastatic solid tumour",
    "hiv": "HIV/AIDS",
}

# ICD-9-CM 3-digit category titles, shortened (the export drops leading zeros: 8 is 008).
_ICD9_TITLES = {
    "8": "Intestinal infection, other organisms",
    "38": "Septicemia",
    "41": "Bacterial infection, site unspecified",
    "162": "Lung cancer",
    "197": "Secondary cancer, respiratory or digestive",
    "198": "Secondary cancer, other sites",
    "244": "Hypothyroidism",
    "250": "Diabetes mellitus",
    "272": "Lipid disorder",
    "276": "Fluid, electrolyte or acid-base disorder",
    "278": "Obesity or overweight",
    "280": "Iron-deficiency anemia",
    "285": "Other anemia",
    "287": "Purpura or other bleeding disorder",
    "295": "Schizophrenia",
    "296": "Mood disorder (bipolar or major depression)",
    "305": "Non-dependent drug or alcohol abuse",
    "401": "Essential hypertension",
    "402": "Hypertensive heart disease",
    "403": "Hypertensive kidney disease",
    "410": "Acute myocardial infarction",
    "411": "Other acute ischemic heart disease",
    "413": "Angina pectoris",
    "414": "Chronic ischemic heart disease",
    "424": "Heart valve disorder",
    "425": "Cardiomyopathy",
    "426": "Conduction disorder",
    "427": "Cardiac dysrhythmia",
    "428": "Heart failure",
    "433": "Precerebral artery occlusion or stenosis",
    "434": "Cerebral artery occlusion",
    "435": "Transient cerebral ischemia",
    "438": "Late effects of cerebrovascular disease",
    "440": "Atherosclerosis",
    "453": "Venous embolism or thrombosis",
    "458": "Hypotension",
    "486": "Pneumonia, organism unspecified",
    "491": "Chronic bronchitis",
    "493": "Asthma",
    "496": "Chronic airway obstruction",
    "507": "Aspiration pneumonitis",
    "511": "Pleurisy or pleural effusion",
    "518": "Other lung disease (incl. respiratory failure)",
    "530": "Esophageal disease",
    "535": "Gastritis or duodenitis",
    "560": "Intestinal obstruction",
    "562": "Diverticular disease",
    "571": "Chronic liver disease or cirrhosis",
    "574": "Gallstones",
    "577": "Pancreatic disease",
    "578": "Gastrointestinal hemorrhage",
    "584": "Acute kidney failure",
    "585": "Chronic kidney disease",
    "599": "Other urinary tract disorder (incl. infection)",
    "648": "Other condition complicating pregnancy",
    "682": "Cellulitis or abscess",
    "707": "Chronic skin ulcer",
    "715": "Osteoarthrosis",
    "722": "Intervertebral disc disorder",
    "724": "Other back disorder",
    "730": "Osteomyelitis",
    "733": "Other bone or cartilage disorder",
    "780": "General symptoms",
    "785": "Cardiovascular symptoms",
    "786": "Respiratory or chest symptoms",
    "787": "Digestive symptoms",
    "788": "Urinary symptoms",
    "789": "Abdominal or pelvic symptoms",
    "799": "Other ill-defined conditions",
    "820": "Fracture of the neck of the femur",
    "996": "Complication of a device, implant or graft",
    "997": "Complication affecting a body system",
    "998": "Other complication of a procedure",
    "V45": "Other post-procedural state",
    "V57": "Rehabilitation care",
    "V58": "Other aftercare",
}


def _build() -> dict[str, tuple[str, str]]:
    words = dict(_NAMED)
    for group in ICD9_GROUPS:
        words[f"diagnoses_{group}"] = (f"{group.capitalize()} diagnoses coded", "")
    for key, name in _CHARLSON.items():
        words[f"charlson_{key}"] = (f"Coded {name} (Charlson)", "")
    for code in ICD9_CATEGORIES:
        shown = code if code.startswith("V") else code.zfill(3)
        words[f"icd9_{code}"] = (f"{_ICD9_TITLES[code]} (ICD-9 {shown}) diagnoses coded", "")
    for name in READMISSION_CATEGORICAL:
        if name.startswith("med_"):
            words[name] = (f"{name.removeprefix('med_').capitalize()} this stay", "")
    return words


# Every readmission feature has its words (tests/unit/features/test_encounter.py).
READMISSION_WORDS: dict[str, tuple[str, str]] = _build()

# Features that are 0 or 1: shown as "yes" or "no".
READMISSION_FLAGS: frozenset[str] = frozenset(
    {"is_readmission_30d", *(f"charlson_{key}" for key in _CHARLSON)}
)

# What the export's dose-change and test-result categories mean.
_VALUE_WORDS: dict[str, dict[str, str]] = {
    "med": {
        "No": "not given",
        "Steady": "dose unchanged",
        "Up": "dose raised",
        "Down": "dose lowered",
    },
    "A1Cresult": {"None": "not measured", "Norm": "normal", ">7": "above 7 %", ">8": "above 8 %"},
    "max_glu_serum": {
        "None": "not measured",
        "Norm": "normal",
        ">200": "above 200 mg/dL",
        ">300": "above 300 mg/dL",
    },
    "change": {"Ch": "yes", "No": "no"},
    "diabetesMed": {"Yes": "yes", "No": "no"},
}


def readmission_value_words(name: str, value: str) -> str:
    """A category value as a clinician would read it (``Up`` -> ``dose raised``)."""
    table = _VALUE_WORDS.get("med" if name.startswith("med_") else name, {})
    return table.get(value, value)
