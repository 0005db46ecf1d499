"""The model's input frame: the same values pandas' column-wise conversion gave, faster."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vitalcast.modeling.registry import LoadedModel

NAMES = ["hr_last", "lactate_last_all", "unit", "age", "gcs_min"]


def _model() -> LoadedModel:
    return LoadedModel(
        version="v",
        task="icu-mortality",
        threshold=0.3,
        feature_names=NAMES,
        categorical=["unit"],
        pipeline=None,
        sidecar={},
        path=Path("model.joblib"),
        sha256="0" * 64,
    )


def _columnwise(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The former implementation, column by column through pandas."""
    df = pd.DataFrame.from_records(rows, columns=NAMES)
    numeric = [c for c in NAMES if c != "unit"]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce").astype(float)
    df["unit"] = df["unit"].astype(object)
    return df


def test_frame_matches_pandas_conversion_for_every_kind_of_value() -> None:
    rows: list[dict[str, Any]] = [
        {"hr_last": 88, "lactate_last_all": 1.8, "unit": "MICU", "age": 70, "gcs_min": 15.0},
        {"hr_last": None, "lactate_last_all": math.nan, "unit": None, "age": "71"},
        {"hr_last": "not a number", "lactate_last_all": np.float32(2.5), "unit": "CSRU"},
        {"hr_last": np.int64(90), "gcs_min": " 9 "},
        {},
    ]
    model = _model()
    # Missing categorical inputs are None whatever form they came in, in a frame of many
    # rows or of one (pandas turned an explicit None into NaN beside absent keys but kept
    # a lone one): training frames hold None, and the fitted encoder treats None and NaN
    # differently. Numeric columns are what pandas' column-wise conversion gave.
    units = ["MICU", None, "CSRU", None, None]
    for batch, want_units in [
        (rows, units),
        *(([r], [u]) for r, u in zip(rows, units, strict=True)),
    ]:
        got = model.frame_of(batch)
        want = _columnwise(batch)
        want["unit"] = pd.Series(want_units, dtype=object)
        pd.testing.assert_frame_equal(got, want)
        assert list(got.columns) == NAMES
        assert got["unit"].dtype == object


def test_one_row_and_no_rows() -> None:
    model = _model()
    one = model.frame({"hr_last": 80.0})
    assert one.shape == (1, len(NAMES))
    assert one.at[0, "hr_last"] == 80.0
    assert math.isnan(one.at[0, "age"])
    empty = model.frame_of([])
    assert list(empty.columns) == NAMES
    assert len(empty) == 0
