"""The loaded champion model of a process, and how it scores one feature vector."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.errors import VitalcastError
from vitalcast.modeling.tables import ModelVersion

if TYPE_CHECKING:
    from vitalcast.modeling.registry import LoadedModel
    from vitalcast.serving.state import AppState

logger = logging.getLogger(__name__)

DEFAULT_TASK = "icu-mortality"


@dataclass(frozen=True)
class Score:
    """One scored feature vector."""

    probability: float
    band: str
    factors: list[dict[str, Any]]
    missing: list[str]


class Predictor:
    """A verified model plus the metadata every response carries."""

    def __init__(self, model: LoadedModel, *, model_version_id: int) -> None:
        self.model = model
        self.model_version_id = model_version_id
        self.version: str = model.version
        self.task: str = model.task
        self.threshold: float = float(model.threshold)
        self.feature_names: list[str] = list(model.feature_names)
        self._known = frozenset(self.feature_names)

    def unknown_features(self, features: dict[str, Any]) -> list[str]:
        return sorted(k for k in features if k not in self._known)

    def score(self, features: dict[str, float], *, explain: bool = True, top: int = 5) -> Score:
        """Probability, band and top factors for one feature vector (NaN = missing)."""
        row = {name: float(features.get(name, math.nan)) for name in self.feature_names}
        probability = float(self.model.predict_proba_row(row))
        factors: list[dict[str, Any]] = []
        if explain:
            ranked = sorted(self.model.explain(row), key=lambda f: -abs(f.contribution))
            factors = [_factor_dict(f) for f in ranked[:top]]
        missing = [name for name, value in row.items() if math.isnan(value)]
        return Score(probability, self.model.band(probability), factors, missing)


def _factor_dict(factor: Any) -> dict[str, Any]:
    value = getattr(factor, "value", None)
    return {
        "feature": factor.feature,
        "label": factor.label,
        "value": None
        if value is None or (isinstance(value, float) and math.isnan(value))
        else value,
        "contribution": round(float(factor.contribution), 4),
        "direction": factor.direction,
    }


def load_predictor(sessions: sessionmaker[Session], task: str, alias: str) -> Predictor | None:
    """Load and verify the task's model under ``alias``; None (logged) when there is none."""
    from vitalcast.modeling.registry import load_model

    with sessions() as session:
        row = session.scalars(
            select(ModelVersion)
            .where(ModelVersion.task == task, ModelVersion.alias == alias)
            .order_by(ModelVersion.promoted_at.desc().nulls_last(), ModelVersion.id.desc())
            .limit(1)
        ).first()
    if row is None:
        logger.warning("no model registered", extra={"task": task, "alias": alias})
        return None
    try:
        model = load_model(Path(row.artifact_path), expected_sha256=row.sha256)
    except VitalcastError:
        logger.exception("model failed verification", extra={"version": row.version})
        return None
    logger.info("model loaded", extra={"task": task, "alias": alias, "version": row.version})
    return Predictor(model, model_version_id=row.id)


def load_champion(state: AppState, task: str = DEFAULT_TASK) -> Predictor | None:
    """The champion of ``task`` for this process."""
    return load_predictor(state.sessions, task, "champion")


def alias_versions(sessions: sessionmaker[Session], task: str) -> dict[str, int]:
    """Which model version row each alias of ``task`` points at now."""
    with sessions() as session:
        rows = session.execute(
            select(ModelVersion.alias, ModelVersion.id).where(
                ModelVersion.task == task, ModelVersion.alias.in_(("champion", "challenger"))
            )
        ).all()
    return {alias: version_id for alias, version_id in rows if alias}
