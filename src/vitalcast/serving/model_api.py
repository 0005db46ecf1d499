"""Model registry API: which versions exist, how they measured, which one serves.

Registry metadata only (version, task, alias, threshold, validation metrics, artifact
digest, dates): no patient data, so reads are not audited as patient access. The detail of
a loaded version adds its input features and categories, which is what a caller of
``POST /predict`` needs to build a request.
"""

from __future__ import annotations

import math
from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from vitalcast.errors import NotFound
from vitalcast.modeling.tables import ModelVersion
from vitalcast.security.permissions import Permission, requires
from vitalcast.serving.context import db
from vitalcast.serving.openapi import operation
from vitalcast.serving.schemas import ModelDetail, ModelList, ModelsQuery, parse_query
from vitalcast.serving.state import get_state

model_api = Blueprint("model_api", __name__)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity; a metric that could not be computed is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _summary(row: ModelVersion) -> dict[str, Any]:
    return {
        "version": row.version,
        "task": row.task,
        "alias": row.alias,
        "threshold": row.threshold,
        "metrics": _finite(row.metrics or {}),
        "sha256": row.sha256,
        "created_at": row.created_at.isoformat(),
        "promoted_at": row.promoted_at.isoformat() if row.promoted_at else None,
    }


@model_api.get("/models")
@requires(Permission.MODELS_READ)
@operation("Registered model versions", ModelList, query=ModelsQuery, tags=("models",))
def models() -> Response:
    """Every registered version, newest first (``?task=`` to filter)."""
    query = parse_query(ModelsQuery)
    stmt = select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    if query.task:
        stmt = stmt.where(ModelVersion.task == query.task)
    return jsonify({"items": [_summary(r) for r in db().scalars(stmt)]})


@model_api.get("/models/<version>")
@requires(Permission.MODELS_READ)
@operation("One model version", ModelDetail, tags=("models",))
def model(version: str) -> Response:
    """One version's metadata; its input features when this process has it loaded."""
    row = db().scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise NotFound("no model version with that name")
    state = get_state()
    served = (state.predictor, state.challenger, *state.task_champions.values())
    loaded = next((p for p in served if p and p.model_version_id == row.id), None)
    body = _summary(row) | {
        "loaded": loaded is not None,
        "feature_names": loaded.feature_names if loaded else None,
        "categories": _finite(dict(loaded.scorer.categories)) if loaded else None,
    }
    return jsonify(body)
