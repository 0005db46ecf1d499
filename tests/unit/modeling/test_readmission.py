"""readmission-30d on real Diabetes 130 rows: cohort rule, history without look-ahead,
the patient-level split, and a clear error for a file of another format.

CI-sized: the first 4,000 encounters of the real file (read through the CSV adapter, as
training reads the whole file).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from vitalcast.features.encounter import EXCLUDED_DISPOSITIONS
from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.registry import load_model
from vitalcast.modeling.service import train_and_register
from vitalcast.modeling.tabular import load_readmission, read_id_names
from vitalcast.modeling.tasks import TaskError, get_task
from vitalcast.modeling.train import FAST_BUDGET

pytestmark = pytest.mark.shared_data

N_ROWS = 4000


@pytest.fixture(scope="module")
def head_csv(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The header and first N_ROWS encounters of the real file."""
    src = shared_data / "diabetes130" / "diabetic_data.csv.gz"
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(N_ROWS + 1)]
    out = tmp_path_factory.mktemp("d130") / "head.csv"
    out.write_text("".join(lines), encoding="utf-8")
    return out


def _rows(path: Path) -> list[list[str]]:
    return [line.rstrip("\n").split(",") for line in path.read_text().splitlines(True)]


def test_cohort_excludes_death_and_hospice(head_csv: Path) -> None:
    rows = _rows(head_csv)
    col = rows[0].index("discharge_disposition_id")
    excluded = sum(int(r[col]) in EXCLUDED_DISPOSITIONS for r in rows[1:])
    assert excluded > 0  # the sample contains such encounters
    ds = load_readmission(head_csv)
    assert len(ds.y) == N_ROWS - excluded
    kept = {int(v) for v in ds.X["discharge_disposition_id"]}
    assert not kept & EXCLUDED_DISPOSITIONS
    assert f"{excluded} encounters ending in death or hospice excluded" in ds.notes


def test_history_uses_earlier_encounters_only(head_csv: Path, tmp_path: Path) -> None:
    """A patient's later encounter and its label never change an earlier encounter's
    features; the later encounter does see the earlier one."""
    rows = _rows(head_csv)
    header = rows[0]
    pcol, lcol = header.index("patient_nbr"), header.index("readmitted")
    dcol = header.index("discharge_disposition_id")
    first_seen: dict[str, int] = {}
    repeat = None
    for i, r in enumerate(rows[1:], start=1):
        if int(r[dcol]) in EXCLUDED_DISPOSITIONS:
            continue
        if r[pcol] in first_seen:
            repeat = (first_seen[r[pcol]], i)
            break
        first_seen[r[pcol]] = i
    assert repeat is not None, "the sample has no patient with two encounters"
    base = load_readmission(head_csv)
    # Flip the later encounter's label: nothing about the earlier encounter may change.
    changed = [list(r) for r in rows]
    changed[repeat[1]][lcol] = "NO" if rows[repeat[1]][lcol] == "<30" else "<30"
    altered = tmp_path / "altered.csv"
    altered.write_text("\n".join(",".join(r) for r in changed) + "\n", encoding="utf-8")
    other = load_readmission(altered)
    earlier = np.flatnonzero(base.groups == f"diabetes130:{rows[repeat[0]][pcol]}")
    first, second = earlier[0], earlier[1]
    assert base.X.iloc[second]["prior_encounters"] == base.X.iloc[first]["prior_encounters"] + 1
    np.testing.assert_array_equal(
        base.X.iloc[first][base.numeric].to_numpy(dtype=float),
        other.X.iloc[first][other.numeric].to_numpy(dtype=float),
    )
    assert base.y[second] != other.y[second]


def test_patient_level_split_is_disjoint(head_csv: Path) -> None:
    task = get_task("readmission-30d")
    train = load_dataset(task, session=None, data=head_csv, part="train")
    held = load_dataset(task, session=None, data=head_csv, part="holdout")
    assert not set(train.groups.tolist()) & set(held.groups.tolist())
    assert 0.1 < len(held.y) / (len(held.y) + len(train.y)) < 0.3


def test_both_sides_of_the_split_keep_the_cohort_rule(head_csv: Path) -> None:
    """``evaluate`` scores the hold-out side: it must exclude death and hospice too, and
    the two sides together are exactly the cohort."""
    task = get_task("readmission-30d")
    cohort = load_readmission(head_csv)
    sides = [load_dataset(task, session=None, data=head_csv, part=p) for p in ("train", "holdout")]
    for side in sides:
        kept = {int(v) for v in side.X["discharge_disposition_id"]}
        assert kept
        assert not kept & EXCLUDED_DISPOSITIONS
    assert sum(len(side.y) for side in sides) == len(cohort.y)


def test_wrong_format_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "other.csv"
    bad.write_text("id,age,label\n1,50,0\n2,60,1\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"not Diabetes 130 data: .*patient_nbr"):
        load_readmission(bad)
    binary = tmp_path / "binary.csv.gz"
    binary.write_bytes(b"\x00\xff\x10 not a csv")
    with pytest.raises(TaskError, match="not Diabetes 130 data"):
        load_readmission(binary)


def test_subgroups_are_named_admission_types(
    head_csv: Path, shared_data: Path, tmp_path: Path
) -> None:
    """Reports group readmission-30d by the data set's admission types (the codes are not
    ICU units), named by the code table the data set ships beside its file, and by code
    when that table is absent."""
    rows = _rows(head_csv)
    col = rows[0].index("admission_type_id")
    codes = {int(r[col]) for r in rows[1:] if r[col]}
    by_code = load_readmission(head_csv)  # no IDs_mapping.csv beside it
    assert "unit" not in by_code.meta
    assert set(by_code.meta["admission_type"]) == {f"code {c}" for c in codes}
    sample = tmp_path / "head.csv"
    sample.write_bytes(head_csv.read_bytes())
    mapping = shared_data / "diabetes130" / "IDs_mapping.csv"
    (tmp_path / "IDs_mapping.csv").write_bytes(mapping.read_bytes())
    names = set(load_readmission(sample).meta["admission_type"])
    assert {"Emergency", "Elective"} <= names
    assert len(names) == len(codes)  # each code its own named group
    # The table's placeholders ("NULL", "Not Mapped") read as missing data, with the code.
    tables = read_id_names(mapping)
    assert tables["discharge_disposition_id"][18] == "not recorded (code 18)"
    assert tables["discharge_disposition_id"][25] == "not mapped in the source (code 25)"
    assert tables["admission_source_id"][9] == "not recorded (code 9)"
    assert tables["admission_type_id"][1] == "Emergency"
    shown = {n for t in tables.values() for n in t.values()}
    assert not shown & {"NULL", "Not Mapped", "Not Available", "Unknown/Invalid"}


def test_explanations_speak_clinical_words_and_name_coded_values(
    head_csv: Path, shared_data: Path, tmp_path: Path
) -> None:
    """A readmission explanation names its features in clinical words (never a column
    name such as ``number_inpatient`` or ``icd9_428``) and a coded value by the data set's
    code table, which the model carries in its sidecar."""
    sample = tmp_path / "head.csv"
    sample.write_bytes(head_csv.read_bytes())
    mapping = shared_data / "diabetes130" / "IDs_mapping.csv"
    (tmp_path / "IDs_mapping.csv").write_bytes(mapping.read_bytes())
    data = load_readmission(sample)
    out = train_and_register(
        "readmission-30d",
        session=None,
        registry_dir=tmp_path / "registry",
        dataset=data,
        budget=FAST_BUDGET,
        n_splits=3,
        n_boot=0,
    )
    model = load_model(out.artifact_path, out.sha256)
    assert model.sidecar["value_names"]["discharge_disposition_id"]["1"] == ("Discharged to home")
    rows = data.X.head(40)
    contributions = model.explainer.contributions(rows).values
    raw_names = set(model.feature_names)
    seen: set[str] = set()
    for i in range(len(rows)):
        for factor in model.factors(rows.iloc[i].to_dict(), contributions[i], top=8):
            assert factor.label not in raw_names, factor.label
            assert "_" not in factor.text, factor.text
            seen.add(factor.feature)
    assert len(seen) >= 8
    # A coded disposition is shown by its name, and the factor keeps the code.
    names = model.sidecar["value_names"]
    only_disposition = np.eye(len(model.feature_names))[
        model.feature_names.index("discharge_disposition_id")
    ]
    row = {**rows.iloc[0].to_dict(), "discharge_disposition_id": "1"}
    (factor,) = model.factors(row, only_disposition, top=1)
    assert factor.value == "1"
    assert factor.text == f"Discharged to: {names['discharge_disposition_id']['1']}"


def test_every_readmission_feature_has_clinical_words() -> None:
    from vitalcast.features.encounter import READMISSION_CATEGORICAL, READMISSION_NUMERIC
    from vitalcast.features.labels import feature_label

    for name in (*READMISSION_NUMERIC, *READMISSION_CATEGORICAL):
        label = feature_label(name)
        assert label != name.replace("_", " "), name  # the fallback for unknown names
        assert "_" not in label, label
