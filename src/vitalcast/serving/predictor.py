"""The loaded champion model of a process, and how it scores one feature vector."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitalcast.errors import VitalcastError

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


def load_champion(state: AppState, task: str = DEFAULT_TASK) -> Predictor | None:
    """Load and verify the task's champion; None (logged) when there is none."""
    from vitalcast.modeling.registry import load_model
    from vitalcast.modeling.service import get_champion

    with state.sessions() as session:
        row = get_champion(session, task)
        if row is None:
            logger.warning("no champion model registered", extra={"task": task})
            return None
        try:
            model = load_model(Path(row.artifact_path), expected_sha256=row.sha256)
        except VitalcastError:
            logger.exception("champion model failed verification", extra={"version": row.version})
            return None
        logger.info("champion model loaded", extra={"task": task, "version": row.version})
        return Predictor(model, model_version_id=row.id)
