"""The fast predict path validates a flat feature object, lists every problem, and scores it."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from vitalcast.errors import InvalidInput
from vitalcast.serving.fastpath import handle_predict, predict_one
from vitalcast.serving.scorer import CompiledScorer, compile_model

NUMERIC = ["heart_rate_bpm", "lactate_mmol_l", "age_years"]
FEATURES = [*NUMERIC, "unit"]


@pytest.fixture(scope="module")
def scorer() -> CompiledScorer:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(80, 15, size=(300, 3)), columns=NUMERIC)
    frame["unit"] = rng.choice(np.array(["MICU", "SICU", "CCU"], dtype=object), size=300)
    y = (frame["heart_rate_bpm"] + rng.normal(0, 10, 300) > 85).astype(int)
    prep = ColumnTransformer(
        [
            ("num", Pipeline([("i", SimpleImputer()), ("s", StandardScaler())]), NUMERIC),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["unit"]),
        ]
    )
    model = Pipeline([("prep", prep), ("model", LogisticRegression())]).fit(frame, y)
    return compile_model(model, FEATURES)


def test_valid_row_is_scored_and_missing_inputs_listed(scorer: CompiledScorer) -> None:
    payload = {"heart_rate_bpm": 120, "lactate_mmol_l": None, "unit": "CCU"}
    result = predict_one(scorer, payload, model_version="v3")
    assert result["probability"] == scorer.score_row(payload)
    assert result["missing"] == ["lactate_mmol_l", "age_years"]
    assert result["model_version"] == "v3"


def test_every_problem_is_reported_at_once(scorer: CompiledScorer) -> None:
    payload = {
        "heart_rate": 120,
        "lactate_mmol_l": "2.1",
        "age_years": True,
        "unit": "Burns",
    }
    with pytest.raises(InvalidInput) as caught:
        predict_one(scorer, payload)
    details = {tuple(d["loc"]): d["msg"] for d in caught.value.details}
    assert details == {
        ("body", "heart_rate"): "unknown feature",
        ("body", "lactate_mmol_l"): "expected a number or null",
        ("body", "age_years"): "expected a number or null",
        ("body", "unit"): "unknown category; expected one of: CCU, MICU, SICU",
    }
    assert caught.value.message == "4 invalid feature(s); see details"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"[1, 2]", 422, "invalid_input"),
        (b"{not json", 400, "bad_request"),
        (b"{" + b" " * 70_000 + b"}", 413, "payload_too_large"),
    ],
)
def test_bad_bodies_get_canonical_errors(
    scorer: CompiledScorer, body: bytes, status: int, code: str
) -> None:
    got_status, got_body = handle_predict(scorer, body, request_id="req-1")
    error = orjson.loads(got_body)["error"]
    assert (got_status, error["code"], error["request_id"]) == (status, code, "req-1")
    assert error["message"]


def test_numbers_beyond_any_float_are_a_422_not_an_overflow(scorer: CompiledScorer) -> None:
    # JSON integers have no size limit; math.isfinite(10**400) raises OverflowError.
    with pytest.raises(InvalidInput) as caught:
        predict_one(scorer, {"age_years": 10**400, "heart_rate_bpm": -(10**400)})
    assert [d["loc"] for d in caught.value.details] == [
        ["body", "age_years"],
        ["body", "heart_rate_bpm"],
    ]


def test_handle_predict_round_trip(scorer: CompiledScorer) -> None:
    body = orjson.dumps({"heart_rate_bpm": 95.5, "age_years": 70, "unit": "MICU"})
    status, out = handle_predict(scorer, body, model_version="v1", request_id="r")
    result = orjson.loads(out)
    assert status == 200
    assert result["probability"] == pytest.approx(
        scorer.score_row({"heart_rate_bpm": 95.5, "age_years": 70, "unit": "MICU"}), abs=0
    )
    assert result["request_id"] == "r"
    assert result["missing"] == ["lactate_mmol_l"]
