"""The stateless single-prediction fast path: flat JSON features in, probability out.

The prototype's ``POST /predict`` took a flat JSON object of features and answered with a
probability. This module does that in tens of microseconds: the body is parsed with orjson,
validated and encoded into the scorer's row vector in one pass over its keys (every problem
is collected and reported at once as a 422, never one at a time), and scored by the
compiled scorer; no DataFrame, no pydantic model per request.

What it deliberately does not do is authenticate, audit or store: ``/api/v1/predict`` wires
those around :func:`predict_one` (see ``docs/benchmarks.md`` for what they cost and how to
keep them off the critical path).

Input rules, strict on purpose because a silently dropped clinical value is worse than an
error: unknown keys are errors (a typo such as ``heart_rate`` for ``heart_rate_bpm`` would
otherwise score as "missing"); numbers must be JSON numbers (not strings, not booleans);
``null`` or an absent key means "not measured", which the model imputes and the response
lists under ``missing``; a categorical feature must be one of the categories the model was
fitted on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from vitalcast.errors import AppError, BadRequest, InvalidInput, PayloadTooLarge
from vitalcast.serving.scorer import CompiledScorer

# A flat object of a few hundred features is a few kB; anything far larger is not a row.
DEFAULT_MAX_BODY_BYTES = 64 * 1024

# No clinical feature (values, counts, slopes per hour, hours) comes near 1e9; far larger
# numbers are garbage, and near 1e308 they overflow the scaler's arithmetic.
MAX_ABS_VALUE = 1e9


def feature_errors(
    scorer: CompiledScorer, payload: dict[str, Any], x: np.ndarray
) -> list[dict[str, Any]]:
    """Encode ``payload`` into the row ``x`` (in place); every problem, located at
    ``["body", <feature>]``."""
    errors: list[dict[str, Any]] = []
    index = scorer.feature_index
    codes = scorer.category_codes
    for key, value in payload.items():
        i = index.get(key)
        if i is None:
            errors.append({"loc": ["body", key], "msg": "unknown feature"})
            continue
        if value is None:
            continue
        table = codes.get(key)
        if table is not None:
            code = table.get(value) if isinstance(value, str | int | float) else None
            if code is None or isinstance(value, bool):
                allowed = ", ".join(map(str, scorer.categories[key]))
                errors.append(
                    {"loc": ["body", key], "msg": f"unknown category; expected one of: {allowed}"}
                )
            else:
                x[i] = code
        elif isinstance(value, bool) or not isinstance(value, int | float):
            errors.append({"loc": ["body", key], "msg": "expected a number or null"})
        elif abs(value) > MAX_ABS_VALUE or not math.isfinite(value):
            # Magnitude first: a JSON integer can be arbitrarily long, and math.isfinite
            # (like float()) raises OverflowError on one beyond ~1e308; comparing an int
            # with a float is exact and never overflows. NaN fails the second test.
            errors.append(
                {"loc": ["body", key], "msg": f"expected a number between ±{MAX_ABS_VALUE:g}"}
            )
        else:
            x[i] = value
    return errors


def predict_one(
    scorer: CompiledScorer, payload: Any, *, model_version: str | None = None
) -> dict[str, Any]:
    """Validate a flat feature object and score it.

    Returns:
        ``{"probability", "missing", "model_version"}``; ``missing`` lists the features
        that were absent or null (imputed by the model), in feature order.

    Raises:
        InvalidInput: the body is not an object, or any key or value is invalid (all
            problems listed in ``details``, each with its ``loc``).
    """
    if not isinstance(payload, dict):
        raise InvalidInput(
            "expected a JSON object mapping feature names to values",
            details=[{"loc": ["body"], "msg": "expected an object"}],
        )
    x = np.full(scorer.n_features, math.nan)
    errors = feature_errors(scorer, payload, x)
    if errors:
        raise InvalidInput(f"{len(errors)} invalid feature(s); see details", details=errors)
    probability = scorer.score_row(x)
    missing = [name for name in scorer.feature_names if payload.get(name) is None]
    return {"probability": probability, "missing": missing, "model_version": model_version}


def decode_body(body: bytes, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Any:
    """Parse a JSON request body, refusing oversized (413) or malformed (400) input."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc


def handle_predict(
    scorer: CompiledScorer,
    body: bytes,
    *,
    model_version: str | None = None,
    request_id: str | None = None,
    max_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> tuple[int, bytes]:
    """HTTP status and JSON body for a raw request body: the whole fast endpoint, framework-free."""
    try:
        result = predict_one(
            scorer, decode_body(body, max_bytes=max_bytes), model_version=model_version
        )
    except AppError as exc:
        return exc.status, orjson.dumps(exc.to_dict(request_id))
    if request_id is not None:
        result["request_id"] = request_id
    return 200, orjson.dumps(result)
