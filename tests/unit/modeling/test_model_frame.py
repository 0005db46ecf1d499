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
    # Together and one at a time: pandas keeps a lone None in an object column but turns it
    # into NaN beside absent keys, and the fitted encoders must see what they saw before.
    for batch in [rows, *([row] for row in rows)]:
        got = model.frame_of(batch)
        pd.testing.assert_frame_equal(got, _columnwise(batch))
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
