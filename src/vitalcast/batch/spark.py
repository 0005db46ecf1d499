"""The Spark job: score a population of stays in ``mapInPandas`` partitions.

Each executor process loads the registered model once, verifying its sha256 as the web
tier does (the registry must be readable from the executors: a mounted bucket or shared
filesystem on Dataproc/EMR). Each partition rebuilds every stay's
:class:`~vitalcast.features.StayInput`, computes :func:`~vitalcast.features.stay_features`
at the same ``as_of`` and scores the batch with the same pipeline; only the row-by-row
``predict_proba`` of the online path becomes one call per batch.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from vitalcast.batch.source import STAY_SCHEMA
from vitalcast.errors import VitalcastError
from vitalcast.features import StayInput, stay_features

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from vitalcast.modeling.registry import LoadedModel, Registered
    from vitalcast.modeling.tasks import Population

OUTPUT_SCHEMA = (
    "stay_id string, patient_id string, probability double, band string,"
    " model_version string, features_digest string, observations long"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MODELS: dict[tuple[str, str], LoadedModel] = {}


@dataclass(frozen=True)
class ModelRef:
    """Where executors find the model and what its registry row records (hashes of the
    artifact and sidecar, task, threshold), checked by each executor on load."""

    path: str
    registered: Registered


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def _optional(value: Any) -> Any:
    """None for SQL NULLs that arrive as None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def stay_of(row: Any) -> StayInput:
    """The feature input of one row of the stays frame."""
    return StayInput(
        admitted_at=from_us(row.admitted_at_us),
        age_years=_optional(row.age_years),
        sex=row.sex or "unknown",
        unit=_optional(row.unit),
        height_cm=_optional(row.height_cm),
        weight_kg=_optional(row.weight_kg),
        observations=tuple(
            (str(code), float(value), from_us(at))
            for code, value, at in zip(row.obs_codes, row.obs_values, row.obs_times_us, strict=True)
        ),
    )


def score_frame(batch: pd.DataFrame, model: LoadedModel, as_of: datetime) -> pd.DataFrame:
    """Score every stay of ``batch`` as of ``as_of`` (the online path's steps, batched)."""
    from vitalcast.serving.scoring import features_digest

    vectors: list[Mapping[str, Any]] = []
    digests: list[str] = []
    for row in batch.itertuples(index=False):
        features = stay_features(stay_of(row), as_of)
        vectors.append({n: float(features.get(n, math.nan)) for n in model.feature_names})
        digests.append(features_digest(features))
    probabilities: list[float] = (
        [float(p) for p in model.predict_proba(model.frame_of(vectors))] if vectors else []
    )
    return pd.DataFrame(
        {
            "stay_id": batch["stay_id"].astype(str).tolist(),
            "patient_id": batch["patient_id"].astype(str).tolist(),
            "probability": [float(p) for p in probabilities],
            "band": [model.band(float(p)) for p in probabilities],
            "model_version": [model.version] * len(vectors),
            "features_digest": digests,
            "observations": [len(codes) for codes in batch["obs_codes"]],
        }
    )


def _model(ref: ModelRef) -> LoadedModel:
    from vitalcast.modeling.registry import load_model

    key = (ref.path, ref.registered.sha256)
    if key not in _MODELS:
        _MODELS[key] = load_model(Path(ref.path), ref.registered)
    return _MODELS[key]


def partition_scorer(
    ref: ModelRef, as_of: datetime
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The function ``mapInPandas`` ships to the executors."""

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = _model(ref)
        for batch in batches:
            yield score_frame(batch, model, as_of)

    return score


def spark_session(master: str | None, *, app_name: str = "vitalcast-score-batch") -> SparkSession:
    """A session; ``master`` only for local runs (spark-submit sets it on a cluster)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise VitalcastError(
            "score-batch needs Apache Spark: pip install 'vitalcast[spark]' (and Java 17+)"
        ) from None

    builder = SparkSession.builder.appName(app_name).config(
        "spark.sql.execution.arrow.pyspark.enabled", "true"
    )
    if master:
        # Local mode: executors are this interpreter, on loopback only, without the UI.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (
            builder.master(master)
            .config("spark.pyspark.python", sys.executable)
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
        )
    return builder.getOrCreate()


def score_population(
    spark: SparkSession,
    stays: DataFrame | pd.DataFrame,
    ref: ModelRef,
    as_of: datetime,
    population: Population | None = None,
) -> DataFrame:
    """Scores of every stay inside ``population``, as a Spark DataFrame of
    :data:`OUTPUT_SCHEMA`."""
    frame = (
        spark.createDataFrame(stays, schema=STAY_SCHEMA)
        if isinstance(stays, pd.DataFrame)
        else stays
    )
    return inside(frame, population).mapInPandas(partition_scorer(ref, as_of), schema=OUTPUT_SCHEMA)


def inside(frame: DataFrame, population: Population | None) -> DataFrame:
    """The rows of a stays frame inside ``population``'s ages and units.

    The live path never scores a child's stay or, when ``VITALCAST_STAY_UNITS`` names
    the ICU units, another ward's; a data-lake export (``--input``) must not get those
    risks either. A frame carries no encounter kind, so an export must hold ICU and
    hospital stays only (the store's own frame is selected by kind in SQL). An unknown
    age does not exclude, as on the live path (Spark orders NaN above every number)."""
    if population is None:
        return frame
    from pyspark.sql import functions as sf

    keep = sf.lit(True)
    if population.min_age_years is not None:
        age = sf.col("age_years")
        keep = keep & (age.isNull() | (age >= population.min_age_years))
    if population.units:
        keep = keep & sf.col("unit").isin(sorted(population.units))
    return frame.where(keep)
