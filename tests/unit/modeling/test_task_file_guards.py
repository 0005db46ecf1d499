"""A `tabular` task file and its CSV train the model they describe, or are refused with
one clear message: never a label read as 0 because nobody said what it meant, never a
typo'd key ignored, never an internal error on a file that is not text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.tasks import TaskError, get_task

TASK = """\
label: died
id_column: pid
features:
  numeric: [age]
  categorical: [sex]
"""


def _csv(folder: Path, labels: list[str]) -> Path:
    path = folder / "rows.csv"
    path.write_text(
        "pid,age,sex,died\n"
        + "".join(f"P{i},{50 + i},{'MF'[i % 2]},{v}\n" for i, v in enumerate(labels))
    )
    return path


def _load(folder: Path, task: str, labels: list[str]) -> np.ndarray:
    task_file = folder / "task.yaml"
    task_file.write_text(task)
    ds = load_dataset(
        get_task("tabular"), session=None, task_file=task_file, data=_csv(folder, labels)
    )
    return ds.y


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        # A third class was a silent 0: a model trained and validated on wrong outcomes.
        (["0", "1", "2", "0", "1"], "is not binary: besides the positive value"),
        # A missing marker the file writes its own way, likewise.
        (["0", "1", "NULL", "0"], "values: '0', '1', 'NULL'"),
        # yes/no or 1.0/0.0 against the default positive "1": said what to set.
        (["yes", "no", "yes"], "holds none of the positive value(s) '1': 'no', 'yes'"),
        (["1.0", "0.0"], "Set `positive` to the value(s) meaning 1"),
    ],
)
def test_a_label_that_is_not_binary_is_refused(
    tmp_path: Path, labels: list[str], message: str
) -> None:
    with pytest.raises(TaskError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _load(tmp_path, TASK, labels)


def test_declared_values_read_as_written(tmp_path: Path) -> None:
    task = TASK + 'positive: "yes"\n'
    assert _load(tmp_path, task, ["yes", "no", " yes"]).tolist() == [1, 0, 1]
    task = TASK + 'positive: "yes"\nnegative: ["no", "n"]\n'
    assert _load(tmp_path, task, ["yes", "n", "no"]).tolist() == [1, 0, 0]
    with pytest.raises(TaskError, match="1 rows hold a value in neither `positive` nor"):
        _load(tmp_path, task, ["yes", "n", "maybe"])


def test_label_values_are_not_listed_when_they_could_be_identifiers(tmp_path: Path) -> None:
    """A label pointed at the wrong column must not print that column's values."""
    with pytest.raises(TaskError, match=r"\(9 values\)") as info:
        _load(tmp_path, TASK, [f"MRN{i}" for i in range(9)])
    assert "MRN" not in str(info.value)


def test_yaml_booleans_are_refused_with_the_fix(tmp_path: Path) -> None:
    """``positive: yes`` is YAML for true, which no cell of the file says."""
    with pytest.raises(TaskError, match=r'`positive` holds the YAML boolean true.*"yes"'):
        _load(tmp_path, TASK + "positive: yes\n", ["yes", "no"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # Ignored before: one patient's rows on both sides of every fold.
        ("id_colum: pid\n", "unknown key\\(s\\) id_colum; a task file may say"),
        ('positve: "yes"\n', "unknown key\\(s\\) positve"),
    ],
)
def test_unknown_keys_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        _load(tmp_path, TASK + extra, ["0", "1"])


def test_unknown_feature_kind_is_refused(tmp_path: Path) -> None:
    task = TASK.replace("  categorical: [sex]\n", "  categorical: [sex]\n  numerc: [pid]\n")
    with pytest.raises(TaskError, match=r"unknown key\(s\) features\.numerc"):
        _load(tmp_path, task, ["0", "1"])


def test_a_bare_na_value_is_one_value(tmp_path: Path) -> None:
    """``na_values: missing`` was read one character at a time (m, i, s...)."""
    y = _load(tmp_path, TASK + "na_values: missing\n", ["0", "1", "missing", "1"])
    assert y.tolist() == [0, 1, 1]


def test_a_task_file_that_is_not_text_is_a_clear_error(tmp_path: Path) -> None:
    task_file = tmp_path / "task.yaml"
    task_file.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TaskError, match=r"task\.yaml: the task file is not UTF-8 text"):
        load_dataset(
            get_task("tabular"), session=None, task_file=task_file, data=_csv(tmp_path, ["0"])
        )


def test_a_label_of_one_class_loads_for_the_callers_to_refuse(tmp_path: Path) -> None:
    """Evaluation data without an event is refused by `evaluate` in its own words."""
    assert _load(tmp_path, TASK, ["0", "0"]).tolist() == [0, 0]


@pytest.mark.parametrize(
    ("features", "column"),
    [
        ("numeric: [age, empty]", "'empty'"),  # a column without a value
        ("numeric: [age, sex]", "'sex'"),  # text listed as numeric: every value missing
    ],
)
def test_a_feature_without_any_value_is_refused_at_training(
    tmp_path: Path, features: str, column: str
) -> None:
    """It was left out of the model without a word: fewer inputs than the task file says."""
    from vitalcast.modeling.service import train_and_register
    from vitalcast.modeling.train import FAST_BUDGET

    data = tmp_path / "rows.csv"
    data.write_text(
        "pid,age,sex,empty,died\n"
        + "".join(f"P{i},{50 + i % 30},{'MF'[i % 2]},,{int(i % 3 == 0)}\n" for i in range(60))
    )
    task_file = tmp_path / "task.yaml"
    task_file.write_text(f"label: died\nid_column: pid\nfeatures:\n  {features}\n")
    with pytest.raises(TaskError, match=f"rows.csv: {column} has no value in any row"):
        train_and_register(
            "tabular",
            session=None,
            registry_dir=tmp_path / "registry",
            task_file=task_file,
            data=data,
            budget=FAST_BUDGET,
        )
    assert not (tmp_path / "registry").exists()


def test_a_row_without_its_id_is_refused(tmp_path: Path) -> None:
    """It ended in an internal error (a TypeError in the grouped split)."""
    task_file = tmp_path / "task.yaml"
    task_file.write_text(TASK)
    data = tmp_path / "rows.csv"
    data.write_text("pid,age,sex,died\nP1,50,M,1\n,60,F,0\n?,70,F,0\n")
    with pytest.raises(TaskError, match=r"rows\.csv: 2 rows have no 'pid' \(the id_column\)"):
        load_dataset(get_task("tabular"), session=None, task_file=task_file, data=data)


def test_the_outcome_is_named_for_the_model_card(tmp_path: Path) -> None:
    """A `tabular` task is any table's: without this the model card never said what the
    model predicts."""
    task_file = tmp_path / "task.yaml"
    task_file.write_text(TASK + 'positive: "yes"\n')
    ds = load_dataset(
        get_task("tabular"), session=None, task_file=task_file, data=_csv(tmp_path, ["yes", "no"])
    )
    assert ds.notes == ["outcome: column 'died', 1 where it is 'yes', 0 where it is 'no'"]


def test_a_file_of_another_separator_says_so(tmp_path: Path) -> None:
    task_file = tmp_path / "task.yaml"
    task_file.write_text(TASK)
    data = tmp_path / "rows.csv"
    data.write_text("pid;age;sex;died\nP1;50;M;1\n")
    with pytest.raises(TaskError, match="the file looks ';'-separated"):
        load_dataset(get_task("tabular"), session=None, task_file=task_file, data=data)


def test_a_categorical_feature_of_too_many_values_is_refused(tmp_path: Path) -> None:
    """A column of one value per row (an admission number listed as categorical) built a
    dense one-hot frame of rows x rows and kept every value in the artifact; 20,000 rows
    used 3 GB and over 8 minutes before they were stopped. Refused before any fit, never
    naming a value."""
    from vitalcast.modeling.service import train_and_register
    from vitalcast.modeling.train import FAST_BUDGET

    n = 1200  # over MAX_CATEGORIES (1000)
    data = tmp_path / "rows.csv"
    data.write_text(
        "pid,age,adm,died\n"
        + "".join(f"P{i},{50 + i % 30},ADM{i:05d},{int(i % 3 == 0)}\n" for i in range(n))
    )
    task_file = tmp_path / "task.yaml"
    task_file.write_text(
        "label: died\nid_column: pid\nfeatures:\n  numeric: [age]\n  categorical: [adm]\n"
    )
    with pytest.raises(TaskError, match=f"'adm' has {n} distinct values") as info:
        train_and_register(
            "tabular",
            session=None,
            registry_dir=tmp_path / "registry",
            task_file=task_file,
            data=data,
            budget=FAST_BUDGET,
        )
    assert "ADM0" not in str(info.value)
    assert not (tmp_path / "registry").exists()


@pytest.mark.parametrize("value", ["", " ~", " null"])
def test_an_empty_name_is_refused_not_read_as_no_name(tmp_path: Path, value: str) -> None:
    """`name:` with the value left out used to be the unnamed task `tabular`, whose
    champion any other unnamed table's model replaces: the thing a name is there to stop."""
    from vitalcast.modeling.tabular import task_of_file

    task_file = tmp_path / "task.yaml"
    task_file.write_text(f"name:{value}\n{TASK}")
    with pytest.raises(TaskError, match="`name` is empty; give the task a name"):
        task_of_file(task_file)
    task_file.write_text(TASK)
    assert task_of_file(task_file).name == "tabular"
