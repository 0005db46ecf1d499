"""Task loaders for tables: Diabetes 130 readmission and YAML-described CSV tasks.

Diabetes 130 is read through the CSV ingestion adapter and its shipped profile (one
parser; features from :mod:`vitalcast.features.encounter`). A YAML-described table is
read with pandas (``keep_default_na=False``: a literal category such as ``None`` is a
value, not missing).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from vitalcast.features.encounter import (
    READMISSION_CATEGORICAL,
    READMISSION_NUMERIC,
    EncounterInput,
    PriorHistory,
    admission_type_name,
    after_encounter,
    diagnoses_by_slot,
    encounter_order,
    in_readmission_cohort,
    readmission_features,
)
from vitalcast.modeling.datasets import Dataset
from vitalcast.modeling.tasks import TABULAR, TASKS, Task, TaskError, named_tabular


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(path, low_memory=False, **kwargs)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path.name}: cannot read as CSV ({exc})") from None


ID_MAPPING_FILE = "IDs_mapping.csv"


def read_id_names(path: Path) -> dict[str, dict[int, str]]:
    """Diabetes 130's ``IDs_mapping.csv``: for each ``*_id`` column, code -> name.

    The file stacks one two-column table per id column, each under its own header row
    (``admission_type_id,description``) and separated by an empty row. Empty when the
    file is absent or unreadable: names are a courtesy to readers, never required.
    """
    tables: dict[str, dict[int, str]] = {}
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError):
        return tables
    current: dict[int, str] | None = None
    for row in rows:
        if len(row) < 2 or not row[0].strip():
            current = None
            continue
        key, name = row[0].strip(), row[1].strip()
        if current is None:
            current = tables.setdefault(key, {})
        elif key.isdigit():
            placeholder = _PLACEHOLDER_NAMES.get(name.lower())
            current[int(key)] = f"{placeholder} (code {key})" if placeholder else name
    return tables


# The code tables' names for "no value" (codes 5, 6, 8, 15, 17, 18, 20, 25, 26...): read by a
# clinician as "Discharged to: NULL", they look like a software fault, not missing data.
_PLACEHOLDER_NAMES = {
    "null": "not recorded",
    "not available": "not recorded",
    "not mapped": "not mapped in the source",
    "unknown/invalid": "unknown or invalid",
}


def _value_names(id_names: dict[str, dict[int, str]]) -> dict[str, dict[str, str]]:
    """The code tables keyed as the features hold their values (text), including the
    previous stay's disposition, which uses the disposition table."""
    tables = {col: {str(k): v for k, v in names.items()} for col, names in id_names.items()}
    if "discharge_disposition_id" in tables:
        tables["prev_discharge_disposition_id"] = tables["discharge_disposition_id"]
    return tables


def load_readmission(path: Path) -> Dataset:
    """Diabetes 130 encounters at discharge, labelled readmitted within 30 days.

    The file is read by the CSV ingestion adapter with the shipped ``diabetes130``
    profile (the parser ``vitalcast ingest`` uses, in memory; rows it quarantines are
    counted in the notes), and every row's features come from
    :func:`vitalcast.features.encounter.readmission_features`, the function a scorer
    of stored encounters calls. Encounters ending in death or hospice are outside the
    cohort (Strack et al. 2014). Each patient's history counts only encounters before
    the current one, in ``encounter_id`` order (ids grow with time in this export).

    Raises:
        TaskError: the file cannot be read or is not Diabetes 130 data.
    """
    from vitalcast.errors import IngestError
    from vitalcast.ingest.files import read_csv_rows
    from vitalcast.ingest.sources.csv import load_profile, parse_rows

    profile = load_profile("diabetes130")
    try:
        rows = read_csv_rows(path, profile)
    except IngestError as exc:
        raise TaskError(f"not Diabetes 130 data: {exc}") from None
    batch = parse_rows(rows.rows, profile, name=path.name)
    del rows
    if not batch.encounters:
        raise TaskError(f"{path.name}: no Diabetes 130 encounter could be read")
    sex = {p.ref: p.sex for p in batch.patients}
    label = {o.encounter_ref: o.value for o in batch.outcomes if o.kind == "readmission_30d"}
    slots = profile.conditions.columns if profile.conditions else []
    coded: dict[str, list[tuple[str, str]]] = {}
    for c in batch.conditions:
        if c.encounter_ref is not None:
            coded.setdefault(c.encounter_ref, []).append((c.source_ref, c.code))
    encounters = sorted(batch.encounters, key=lambda e: encounter_order(e.admitted_at, e.ref))
    seen: dict[str, PriorHistory] = {}
    records: list[dict[str, float | str | None]] = []
    y: list[int] = []
    patients: list[str] = []
    excluded = 0
    for enc in encounters:
        history = seen.get(enc.patient_ref, PriorHistory())
        readmitted = label[enc.ref] == 1.0
        attributes = enc.attributes or {}
        los = None
        if enc.discharged_at is not None:
            los = (enc.discharged_at - enc.admitted_at).total_seconds() / 86400.0
        encounter = EncounterInput(
            length_of_stay_days=los,
            age_years=enc.age_years,
            sex=sex.get(enc.patient_ref, "unknown"),
            attributes=attributes,
            diagnoses=diagnoses_by_slot(coded.get(enc.ref, ()), slots),
            history=history,
        )
        # Every encounter (in the cohort or not) is part of later encounters' history.
        seen[enc.patient_ref] = after_encounter(history, encounter, readmitted)
        if not in_readmission_cohort(attributes):
            excluded += 1
            continue
        records.append(readmission_features(encounter))
        y.append(int(readmitted))
        patients.append(enc.patient_ref)
    numeric, categorical = list(READMISSION_NUMERIC), list(READMISSION_CATEGORICAL)
    X = pd.DataFrame.from_records(records, columns=numeric + categorical)
    X[numeric] = X[numeric].astype(float)
    for col in categorical:
        X[col] = X[col].astype(object).where(X[col].notna(), None)
    # Subgroups are named by the data set's own code table when it sits beside the file
    # (Diabetes 130 ships IDs_mapping.csv); otherwise by code.
    id_names = read_id_names(path.parent / ID_MAPPING_FILE)
    types = id_names.get("admission_type_id", {})
    meta = pd.DataFrame(
        {
            "sex": X["gender"].fillna("unknown").to_numpy(),
            "age_band": [age_band_label(a) for a in X["age_mid_years"]],
            "admission_type": [admission_type_name(v, types) for v in X["admission_type_id"]],
        }
    )
    notes = [f"{excluded} encounters ending in death or hospice excluded"]
    if batch.rejected:
        notes.append(f"{len(batch.rejected)} rows quarantined by the CSV adapter")
    return Dataset(
        X=X,
        y=np.asarray(y, dtype=np.int64),
        groups=np.asarray(patients),
        meta=meta,
        numeric=numeric,
        categorical=categorical,
        source=path.name,
        notes=notes,
        value_names=_value_names(id_names),
    )


def age_band_label(age: float) -> str:
    """The file's ten-year band from its midpoint (75 -> "[70-80)")."""
    if age != age:
        return "unknown"
    lo = int(age // 10 * 10)
    return f"[{lo}-{lo + 10})"


def _read_task_file(task_file: Path) -> dict[Any, Any]:
    """The task file's YAML mapping, refused unless it has ``label`` and ``features``."""
    try:
        spec = yaml.safe_load(task_file.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise TaskError(f"{task_file.name}: the task file is not UTF-8 text (YAML)") from None
    except (OSError, yaml.YAMLError) as exc:
        raise TaskError(f"{task_file.name}: cannot read the task file ({exc})") from None
    if not isinstance(spec, dict) or "label" not in spec or "features" not in spec:
        raise TaskError(f"{task_file.name}: a task file needs `label` and `features`")
    return spec


def task_of_file(task_file: Path) -> Task:
    """The task a task file describes: ``tabular:<name>`` for a file with a ``name``,
    else the one unnamed ``tabular`` task (whose champion every unnamed file shares).

    Raises:
        TaskError: unreadable file, or a name that cannot be a task name.
    """
    spec = _read_task_file(task_file)
    if "name" not in spec:
        return TASKS[TABULAR]
    name = spec["name"]
    if name is None:
        # `name:` with its value left out (a template not filled in) would otherwise be
        # the unnamed task, whose champion any other unnamed table can replace.
        raise TaskError(
            f"{task_file.name}: `name` is empty; give the task a name, such as `name: sepsis`,"
            " or remove the key"
        )
    if not isinstance(name, str):
        raise TaskError(f"{task_file.name}: `name` must be text, such as `name: sepsis`")
    try:
        return named_tabular(name)
    except TaskError as exc:
        raise TaskError(f"{task_file.name}: {exc}") from None


def load_tabular(task_file: Path, data: Path) -> Dataset:
    """A CSV described by a YAML task file.

    The YAML names the task (``name``, optional: see :func:`task_of_file`), ``label``
    (column), ``positive`` (the label value, or list of values,
    meaning 1; default 1), ``negative`` (optional: the value(s) meaning 0; without it the
    label may hold one value besides the positive ones, and any other label is refused,
    :func:`_binary_label`), ``id_column`` (optional; rows of one id never straddle folds),
    and ``features``:
    ``{numeric: [...], categorical: [...]}``, each column listed once and neither the
    label nor the id column among them (:func:`_check_feature_lists`). Optional, for
    explanations in the data's own words: ``labels`` (feature -> words, or
    ``[words, unit]``) and ``values`` (categorical feature -> {value: words}); the model
    keeps both in its sidecar.
    """
    spec = _read_task_file(task_file)
    feats = spec["features"] or {}
    if not isinstance(feats, dict):
        raise TaskError(
            f"{task_file.name}: `features` must be {{numeric: [...], categorical: [...]}}"
        )
    _check_keys(task_file.name, spec, feats)
    numeric = _column_list(feats.get("numeric"), "features.numeric", task_file.name)
    categorical = _column_list(feats.get("categorical"), "features.categorical", task_file.name)
    label = str(spec["label"])
    id_col = None if spec.get("id_column") is None else str(spec["id_column"])
    _check_feature_lists(task_file.name, numeric, categorical, label, id_col)
    df = _read_csv(
        data,
        dtype=str,
        keep_default_na=False,
        na_values=_values_of(spec, "na_values", ["", "?", "NA"], task_file.name),
    )
    missing = [
        c
        for c in [label, *numeric, *categorical, *([id_col] if id_col else [])]
        if c not in df.columns
    ]
    if missing:
        header = str(df.columns[0]) if len(df.columns) == 1 else ""
        sep = next((c for c in (";", "\t", "|") if c in header), None)
        hint = (
            f" (the header was read as one column: the file looks {sep!r}-separated;"
            " vitalcast reads comma-separated CSV)"
            if sep
            else ""
        )
        raise TaskError(f"{data.name}: columns not found: {', '.join(missing)}{hint}")
    df = df[df[label].notna()].reset_index(drop=True)
    positive = {v.strip() for v in _values_of(spec, "positive", ["1"], task_file.name)}
    y = _binary_label(
        df[label].astype(str).str.strip(),
        positive=positive,
        negative=(
            None
            if spec.get("negative") is None
            else {v.strip() for v in _values_of(spec, "negative", [], task_file.name)}
        ),
        where=f"{task_file.name}: the label column {label!r} of {data.name}",
    )
    X = pd.DataFrame(index=df.index)
    for c in numeric:
        X[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    for c in categorical:
        X[c] = df[c].astype(object).where(df[c].notna(), None)
    if id_col and df[id_col].isna().any():
        # Grouped folds cannot place a row of no patient (a TypeError deep in the split,
        # before), and guessing one would let a patient's rows straddle the folds.
        raise TaskError(
            f"{data.name}: {int(df[id_col].isna().sum())} rows have no {id_col!r} (the"
            " id_column); give every row its patient's id, or drop those rows"
        )
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
        value_names=_task_values(spec.get("values"), categorical, task_file.name),
        feature_words=_task_labels(spec.get("labels"), [*numeric, *categorical], task_file.name),
        # What the model predicts, in the sidecar and both model cards: a `tabular` task
        # is any table's, so its description cannot say which outcome.
        notes=[_outcome_note(label, positive, df[label].astype(str).str.strip()[y == 0])],
        outcome={"column": label, "positive": sorted(positive)},
    )


def _outcome_note(label: str, positive: set[str], negatives: pd.Series) -> str:
    """``outcome: column 'died', 1 where it is '1', 0 where it is '0'`` (the values are
    the task file's and a binary label's other one, never more than a few)."""
    neg = sorted(set(negatives))
    zero = f", 0 where it is {', '.join(map(repr, neg))}" if 0 < len(neg) <= 6 else ""
    one = ", ".join(map(repr, sorted(positive)))
    return f"outcome: column {label!r}, 1 where it is {one}{zero}"


# What a task file may say; anything else is a typo whose intent would be silently lost
# (``id_colum: patient`` trained with one patient's rows on both sides of every fold).
TASK_FILE_KEYS = frozenset(
    {
        "name",
        "label",
        "positive",
        "negative",
        "id_column",
        "na_values",
        "features",
        "labels",
        "values",
    }
)
FEATURE_KEYS = frozenset({"numeric", "categorical"})


def _check_keys(where: str, spec: dict[Any, Any], feats: dict[Any, Any]) -> None:
    """Refuse keys a task file does not know, naming them and the known ones.

    Why: an ignored ``positve: "yes"`` leaves the default positive value, an ignored
    ``id_colum`` lets one patient's rows straddle the folds (optimistic validation), an
    ignored ``features.numerc`` drops features; each trains a model other than the one
    described, without a word.
    """
    for keys, known, prefix in ((spec, TASK_FILE_KEYS, ""), (feats, FEATURE_KEYS, "features.")):
        unknown = sorted(str(k) for k in keys if k not in known)
        if unknown:
            raise TaskError(
                f"{where}: unknown key(s) {', '.join(prefix + k for k in unknown)}; a task file"
                f" may say {', '.join(prefix + k for k in sorted(known))}"
            )


def _values_of(spec: dict[Any, Any], key: str, default: list[str], where: str) -> list[str]:
    """A task file's value or list of values as the CSV text holds them.

    Refused: a YAML boolean (``positive: yes`` is read as ``true``, which no cell of the
    file says) and anything but text and numbers; a bare value is a list of one (before,
    ``na_values: NA`` was read one character at a time, as ``N`` and ``A``).
    """
    raw = spec.get(key)
    if raw is None:
        return list(default)
    values = raw if isinstance(raw, list) else [raw]
    for v in values:
        if isinstance(v, bool):
            raise TaskError(
                f"{where}: `{key}` holds the YAML boolean {str(v).lower()} (yes/no/true/false"
                f' unquoted); quote the value as the file writes it, e.g. {key}: "yes"'
            )
        if not isinstance(v, str | int | float):
            raise TaskError(f"{where}: `{key}` must be a value or a list of values")
    return [str(v) for v in values]


def _binary_label(
    labels: pd.Series, *, positive: set[str], negative: set[str] | None, where: str
) -> np.ndarray:
    """1 where the label is a positive value, 0 where it is the negative one.

    Refused: a label with more than one value besides the positive ones, or (with
    ``negative``) a value that is neither: every such row was a silent 0 before, so a
    third class (``2``) or a missing marker the file writes its own way (``NULL``) trained
    and validated as a negative outcome, and ``yes``/``no`` or ``1.0``/``0.0`` read against
    the default positive ``1`` ended in "1 class [0]" (said so, with the fix). A label of
    one class passes here: training and evaluation refuse it in their own words. The
    values are named only when there are a few (outcome codes): a label pointed at the
    wrong column must not print its identifiers.
    """
    y = labels.isin(positive).to_numpy()
    others = sorted(set(labels[~y]))
    if negative is not None:
        stray = [v for v in others if v not in negative]
    else:
        stray = others if len(others) > 1 else []
    seen = sorted(set(labels))
    shown = (
        f": {', '.join(repr(v[:20]) for v in seen)}" if len(seen) <= 6 else f" ({len(seen)} values)"
    )
    if stray and not y.any():
        raise TaskError(
            f"{where} holds none of the positive value(s) {', '.join(map(repr, sorted(positive)))}"
            f"{shown}. Set `positive` to the value(s) meaning 1 as the file writes them"
        )
    if stray:
        fix = (
            "add them to `negative` or to `na_values`"
            if negative is not None
            else "name the value meaning 0 with `negative`, list missing markers in"
            " `na_values`, or add values meaning 1 to `positive`"
        )
        rows = int(labels.isin(stray).sum())
        what = (
            f"{rows} rows hold a value in neither `positive` nor `negative`"
            if negative is not None
            else f"besides the positive value(s) it holds {len(stray)} others"
        )
        raise TaskError(f"{where} is not binary: {what} (values{shown}); {fix}")
    return np.asarray(y, dtype=np.int64)


def _check_feature_lists(
    where: str, numeric: list[str], categorical: list[str], label: str, id_col: str | None
) -> None:
    """Refuse feature lists that would train a wrong or leaking model.

    Why each: the label as a feature gives a model that reads the answer (AUROC 1.0 on
    every validation, useless at the bedside); the id column as a feature makes patient
    identifiers model inputs, kept verbatim as the one-hot encoder's categories, so they
    would reach the sidecar, the OpenAPI document and 422 messages; a column listed twice
    (or as both numeric and categorical) has no single meaning for the pipeline.

    Raises:
        TaskError: naming the column and what to change in the task file.
    """
    if not numeric and not categorical:
        raise TaskError(f"{where}: list at least one feature")
    listed = [*numeric, *categorical]
    if label in listed:
        raise TaskError(
            f"{where}: the label column {label!r} is listed as a feature; a model given the"
            " answer as an input learns nothing usable. Remove it from `features`"
        )
    if id_col is not None and id_col in listed:
        raise TaskError(
            f"{where}: the id_column {id_col!r} is listed as a feature; patient identifiers"
            " must not be model inputs (the model would keep them verbatim). Remove it from"
            " `features`"
        )
    both = sorted(set(numeric) & set(categorical))
    if both:
        raise TaskError(
            f"{where}: {', '.join(map(repr, both))} listed as both numeric and categorical;"
            " list each feature once"
        )
    twice = sorted({c for c in listed if listed.count(c) > 1})
    if twice:
        raise TaskError(f"{where}: {', '.join(map(repr, twice))} listed twice; list each once")


def _task_labels(raw: Any, features: list[str], where: str) -> dict[str, tuple[str, str]]:
    """A task file's ``labels``: feature -> words, or -> [words, unit]."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TaskError(f"{where}: `labels` must map features to words")
    words: dict[str, tuple[str, str]] = {}
    for name, value in raw.items():
        if str(name) not in features:
            raise TaskError(f"{where}: `labels` names {name!r}, which is not a listed feature")
        if isinstance(value, str):
            words[str(name)] = (value, "")
        elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
            words[str(name)] = (value[0], value[1])
        else:
            raise TaskError(f"{where}: `labels` of {name!r} must be words or [words, unit]")
    return words


def _task_values(raw: Any, categorical: list[str], where: str) -> dict[str, dict[str, str]]:
    """A task file's ``values``: categorical feature -> {value as in the file: words}."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TaskError(f"{where}: `values` must map categorical features to value names")
    names: dict[str, dict[str, str]] = {}
    for name, table in raw.items():
        if str(name) not in categorical:
            raise TaskError(f"{where}: `values` names {name!r}, which is not a categorical feature")
        if not isinstance(table, dict):
            raise TaskError(f"{where}: `values` of {name!r} must map values to words")
        names[str(name)] = {str(k): str(v) for k, v in table.items()}
    return names


def _column_list(value: Any, where: str, file_name: str) -> list[str]:
    """A list of column names; ``numeric: age`` (a bare string) would otherwise be read
    one character at a time, as the columns ``a``, ``g`` and ``e``."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(c, str | int | float) for c in value):
        raise TaskError(f"{file_name}: `{where}` must be a list of column names, like [age, sex]")
    return [str(c) for c in value]
