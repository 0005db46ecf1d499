"""Task loaders for tables: Diabetes 130 readmission and YAML-described CSV tasks.

Interim: these read the CSV with pandas directly. The CSV ingestion adapter lives on
another branch; once merged, these loaders should read through it (one parser).
Diabetes 130 marks missing values with ``?`` and uses the literal category ``None`` for
"test not done" (A1Cresult, max_glu_serum), hence ``keep_default_na=False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from vitalcast.modeling.datasets import Dataset
from vitalcast.modeling.tasks import TaskError

# Strack et al. 2014: encounters ending in death or hospice cannot be readmitted.
_EXCLUDED_DISPOSITIONS = {"11", "13", "14", "19", "20", "21"}
_MEDICATIONS = [
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
]
_NUMERIC = [
    "time_in_hospital",
    "num_lab_procedures",
    "num_procedures",
    "num_medications",
    "number_outpatient",
    "number_emergency",
    "number_inpatient",
    "number_diagnoses",
]
_CATEGORICAL = [
    "race",
    "gender",
    "age",
    "admission_type_id",
    "discharge_disposition_id",
    "admission_source_id",
    "payer_code",
    "medical_specialty",
    "max_glu_serum",
    "A1Cresult",
    "change",
    "diabetesMed",
]


def icd9_group(code: str) -> str:
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


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(path, low_memory=False, **kwargs)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path.name}: cannot read as CSV ({exc})") from None


def _history(df: pd.DataFrame) -> pd.DataFrame:
    """The patient's earlier encounters in this health system, known at this discharge.

    Rows must be sorted by ``encounter_id`` (ids grow with time in this export). Every
    column uses only encounters *before* the current one, never the current label:

    - ``prior_encounters``: how many earlier encounters (of any disposition);
    - ``prior_readmissions_30d``: how many earlier encounters were followed by a
      readmission within 30 days. An earlier encounter's readmission happened at or before
      the current admission (the current encounter is a later one), so it is known by now;
    - ``is_readmission_30d``: this admission itself came within 30 days of the previous
      discharge (the previous encounter is labelled ``<30``), which a hospital knows at
      admission.
    """
    by_patient = df.groupby("patient_nbr", sort=False)
    was_30 = (df["readmitted"] == "<30").astype(float)
    prior_30 = was_30.groupby(df["patient_nbr"], sort=False).cumsum() - was_30
    previous = by_patient["readmitted"].shift(1)
    return pd.DataFrame(
        {
            "prior_encounters": by_patient.cumcount().astype(float),
            "prior_readmissions_30d": prior_30.astype(float),
            "is_readmission_30d": (previous == "<30").astype(float),
        },
        index=df.index,
    )


def load_readmission(path: Path) -> Dataset:
    """Diabetes 130 encounters at discharge, labelled readmitted within 30 days."""
    df = _read_csv(path, dtype=str, keep_default_na=False, na_values=["?"])
    need = {"encounter_id", "patient_nbr", "readmitted", *(_NUMERIC), *(_CATEGORICAL)}
    missing = sorted(need - set(df.columns))
    if missing:
        raise TaskError(f"{path.name}: not Diabetes 130 data (missing {', '.join(missing[:5])})")
    before = len(df)
    df["encounter_id"] = df["encounter_id"].astype(np.int64)
    df = df.sort_values("encounter_id", kind="mergesort").reset_index(drop=True)
    history = _history(df)
    keep = ~df["discharge_disposition_id"].isin(_EXCLUDED_DISPOSITIONS).to_numpy()
    df = df[keep].reset_index(drop=True)
    X = pd.DataFrame(index=df.index)
    for col in _NUMERIC:
        X[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in history.columns:
        X[col] = history[col].to_numpy()[keep]
    X["age_mid_years"] = df["age"].str.extract(r"\[(\d+)-")[0].astype(float) + 5.0
    meds = [m for m in _MEDICATIONS if m in df]
    X["medications_changed"] = df[meds].isin(["Up", "Down"]).sum(axis=1).astype(float)
    X["medications_on"] = (df[meds] != "No").sum(axis=1).astype(float)
    categorical = list(_CATEGORICAL)
    for col in _CATEGORICAL:
        X[col] = df[col].astype(object).where(df[col].notna(), None)
    for i in (1, 2, 3):
        X[f"diag_{i}_group"] = df[f"diag_{i}"].fillna("").map(icd9_group).astype(object)
        categorical.append(f"diag_{i}_group")
    for m in ("insulin", "metformin", "glipizide", "glyburide", "pioglitazone"):
        if m in df:
            X[f"med_{m}"] = df[m].astype(object)
            categorical.append(f"med_{m}")
    numeric = [c for c in X.columns if c not in categorical]
    y = (df["readmitted"] == "<30").to_numpy(dtype=np.int64)
    meta = pd.DataFrame(
        {
            "sex": df["gender"].fillna("unknown").str.lower().to_numpy(),
            "age_band": df["age"].fillna("unknown").to_numpy(),
            "unit": df["admission_type_id"].fillna("unknown").to_numpy(),
        }
    )
    return Dataset(
        X=X[numeric + categorical],
        y=y,
        groups=df["patient_nbr"].to_numpy(),
        meta=meta,
        numeric=numeric,
        categorical=categorical,
        source=path.name,
        notes=[f"{before - len(df)} encounters ending in death or hospice excluded"],
    )


def load_tabular(task_file: Path, data: Path) -> Dataset:
    """A CSV described by a YAML task file.

    The YAML names ``label`` (column), ``positive`` (the label value, or list of values,
    meaning 1; default 1),
    ``id_column`` (optional; rows of one id never straddle folds), and ``features``:
    ``{numeric: [...], categorical: [...]}``.
    """
    try:
        spec = yaml.safe_load(task_file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TaskError(f"{task_file.name}: cannot read the task file ({exc})") from None
    if not isinstance(spec, dict) or "label" not in spec or "features" not in spec:
        raise TaskError(f"{task_file.name}: a task file needs `label` and `features`")
    feats = spec["features"] or {}
    numeric = [str(c) for c in feats.get("numeric", [])]
    categorical = [str(c) for c in feats.get("categorical", [])]
    df = _read_csv(
        data,
        dtype=str,
        keep_default_na=False,
        na_values=list(spec.get("na_values", ["", "?", "NA"])),
    )
    label, id_col = str(spec["label"]), spec.get("id_column")
    missing = [
        c
        for c in [label, *numeric, *categorical, *([id_col] if id_col else [])]
        if c not in df.columns
    ]
    if missing:
        raise TaskError(f"{data.name}: columns not found: {', '.join(missing)}")
    if not numeric and not categorical:
        raise TaskError(f"{task_file.name}: list at least one feature")
    df = df[df[label].notna()].reset_index(drop=True)
    raw_positive = spec.get("positive", "1")
    positive = (
        {str(v) for v in raw_positive} if isinstance(raw_positive, list) else {str(raw_positive)}
    )
    y = df[label].astype(str).str.strip().isin(positive).to_numpy(dtype=np.int64)
    X = pd.DataFrame(index=df.index)
    for c in numeric:
        X[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    for c in categorical:
        X[c] = df[c].astype(object).where(df[c].notna(), None)
    groups = df[id_col].to_numpy() if id_col else np.arange(len(df)).astype(str)
    meta = pd.DataFrame(index=df.index)
    return Dataset(
        X=X,
        y=y,
        groups=groups,
        meta=meta,
        numeric=numeric,
        categorical=categorical,
        source=data.name,
    )
