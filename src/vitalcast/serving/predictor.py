"""The loaded champion model of a process, and how it scores one feature vector."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.errors import VitalcastError
from vitalcast.modeling.tables import ModelVersion
from vitalcast.modeling.tasks import STAY_TASK
from vitalcast.monitoring.drift import OTHER
from vitalcast.monitoring.metrics import observe_model_load
from vitalcast.serving._prep import Preprocessor, Uncompilable, compile_column_transformer
from vitalcast.serving.scorer import CompiledScorer, compile_model

if TYPE_CHECKING:
    from vitalcast.modeling.registry import LoadedModel
    from vitalcast.serving.state import AppState

logger = logging.getLogger(__name__)

DEFAULT_TASK = STAY_TASK


@dataclass(frozen=True)
class Score:
    """One scored feature vector."""

    probability: float
    band: str
    factors: list[dict[str, Any]]
    missing: list[str]


def nameable_categories(sidecar: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """Per categorical feature, the values a public document may name: those its drift
    reference names, i.e. held by at least ``drift.MIN_CATEGORY_COUNT`` training stays.

    Why: the OpenAPI document is public, and a category a model learnt from one or two
    rows of a hospital's table (a rare occupation, an identifier that slipped into a
    column) says who those rows are. A feature without a reference names none.
    """
    features = (sidecar.get("reference") or {}).get("features") or {}
    named: dict[str, frozenset[str]] = {}
    for name in sidecar.get("categorical") or []:
        profile = features.get(name) or {}
        named[name] = frozenset(str(c) for c in profile.get("categories") or {} if c != OTHER)
    return named


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
        self.nameable_categories = nameable_categories(model.sidecar)
        # The hot path: the fitted pipeline compiled to numpy once, at load time; equal to
        # predict_proba within 1e-9 (tests/unit/test_scorer.py), sklearn as the fallback.
        self.scorer = compile_model(model.pipeline, self.feature_names, frame_of=model.frame_of)
        if not self.scorer.compiled:
            logger.warning(
                "model not compiled; scoring through scikit-learn",
                extra={"version": self.version, "reason": self.scorer.fallback_reason},
            )
        # Explanations without a DataFrame: the explained pipeline's preprocessor compiled
        # like the scorer's, fed the same array form (tests/unit/modeling/test_training.py
        # checks the factors equal the scikit-learn path's). None: explain via pandas.
        self._explain_preps = _compiled_explainer_preps(model, self.scorer)
        # Build the explainer now (shap's TreeExplainer takes seconds for a boosted
        # model) so that no clinician's first request after a start or a promotion waits
        # for it: explaining a row with every input missing builds it once.
        self.score({}, explain=True)

    def score(self, features: Mapping[str, Any], *, explain: bool = True, top: int = 5) -> Score:
        """Probability, band and top factors for one row of raw values (None/NaN = missing)."""
        factors: list[dict[str, Any]] = []
        if self._explain_preps is None or not explain:
            probability = self.scorer.score_row(features)
            if explain:
                row = {name: features.get(name) for name in self.feature_names}
                ranked = sorted(self.model.explain(row), key=lambda f: -abs(f.contribution))
                factors = [_factor_dict(f) for f in ranked[:top]]
        else:
            x = self.scorer.encode(features)
            probability = self.scorer.score_row(x)
            zs = [prep.transform_row(x)[None, :] for prep in self._explain_preps]
            explainer = self.model.explainer
            hours = None
            if explainer.time_feature is not None:
                hours = x[[self.scorer.feature_index[explainer.time_feature]]]
            contrib = explainer.contributions_of(zs, lambda: np.array([probability]), hours)
            factors = [
                _factor_dict(f) for f in self.model.factors(features, contrib.values[0], top)
            ]
        missing = [name for name in self.feature_names if _is_missing(features.get(name))]
        return Score(probability, self.model.band(probability), factors, missing)


def _compiled_explainer_preps(
    model: LoadedModel, scorer: CompiledScorer
) -> list[Preprocessor] | None:
    """The explained members' preprocessors, compiled; None when that is not possible.

    The explainer explains every member pipeline (see ``modeling/explain.py``); their
    one-hot categories are the scorer's (``compile_model`` refuses members that disagree),
    so the scorer's array form of a row is each compiled preprocessor's input too.
    """
    if not scorer.compiled:
        return None
    names = list(model.feature_names)
    try:
        return [compile_column_transformer(prep, names) for prep in model.explainer.preps]
    except (Uncompilable, KeyError, AttributeError) as exc:
        logger.warning("explanations not compiled; explaining through scikit-learn: %s", exc)
        return None


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


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
        # What clinicians read: the feature in words with its value and unit.
        "text": factor.text,
    }


def servable(model: LoadedModel, *, model_version_id: int) -> Predictor:
    """``model`` as a :class:`Predictor`, or a :class:`RegistryError` saying why it cannot
    serve.

    An artifact can verify and load yet not be one serving can use (an estimator without
    vitalcast's preprocessing and explanation steps). Promoting it would leave every
    server on the previous model, logging the failure at each poll, while the registry
    names the new one; so a promotion builds the predictor first.
    """
    from vitalcast.modeling.registry import RegistryError

    try:
        return Predictor(model, model_version_id=model_version_id)
    except VitalcastError:
        raise
    except Exception as exc:  # a foreign estimator fails in scikit-learn's own ways
        raise RegistryError(
            f"{model.version} cannot be served ({type(exc).__name__}: {exc}); only models"
            " trained by `vitalcast train` can be promoted"
        ) from None


def load_predictor(sessions: sessionmaker[Session], task: str, alias: str) -> Predictor | None:
    """Load and verify the task's model under ``alias``; None (logged) when there is none."""
    from vitalcast.modeling.registry import Registered, load_model

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
    started = time.monotonic()
    try:
        model = load_model(Path(row.artifact_path), Registered.of(row))
        predictor = Predictor(model, model_version_id=row.id)
    except VitalcastError:
        logger.exception("model failed verification", extra={"version": row.version})
        return None
    observe_model_load(model_version=row.version, role=alias, seconds=time.monotonic() - started)
    logger.info("model loaded", extra={"task": task, "alias": alias, "version": row.version})
    return predictor


def load_champion(state: AppState, task: str = DEFAULT_TASK) -> Predictor | None:
    """The champion of ``task`` for this process."""
    return load_predictor(state.sessions, task, "champion")


def alias_versions(sessions: sessionmaker[Session], task: str) -> dict[str, int]:
    """Which model version row each alias of ``task`` points at now."""
    with sessions() as session:
        return aliases_in(session, task)


def aliases_in(session: Session, task: str) -> dict[str, int]:
    """Which model version row each alias of ``task`` points at, as ``session``'s
    transaction sees it (one read of the task's few registry rows)."""
    rows = session.execute(
        select(ModelVersion.alias, ModelVersion.id).where(
            ModelVersion.task == task, ModelVersion.alias.in_(("champion", "challenger"))
        )
    ).all()
    return {alias: version_id for alias, version_id in rows if alias}
