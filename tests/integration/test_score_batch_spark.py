"""``vitalcast score-batch`` on Spark (local mode) gives the online path's scores.

A synthetic cohort is stored in PostgreSQL and a model is trained and registered; then
every in-progress stay is scored twice at the same time: by the online path
(:func:`vitalcast.serving.scoring.score_encounter`, what the API runs) and by the real
``score-batch`` command, which runs the Spark job through ``mapInPandas``.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from tests.services import service_missing
from vitalcast.batch.source import stays_frame
from vitalcast.cli import main
from vitalcast.clinical.tables import Encounter
from vitalcast.config import Settings
from vitalcast.db import create_db_engine, session_scope
from vitalcast.db.session import make_session_factory
from vitalcast.ingest.service import store_batch
from vitalcast.modeling.registry import Registered, load_model
from vitalcast.modeling.service import get_champion, train_and_register
from vitalcast.modeling.train import FAST_BUDGET
from vitalcast.security.crypto import FieldCipher
from vitalcast.serving.predictor import Predictor
from vitalcast.serving.scoring import score_encounter
from vitalcast.synth import generate_cohort

pytestmark = [
    pytest.mark.slow,
    # PySpark 4 warns that it does not yet fully support pandas 3; this test is what
    # checks that the path vitalcast uses works with it.
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def test_spark_batch_scores_equal_the_online_scores(
    settings: Settings, cipher: FieldCipher, tmp_path: Path
) -> None:
    if shutil.which("java") is None:
        service_missing("Java 17+ (for Spark local mode)")
    engine = create_db_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)
    batch = generate_cohort(n_current=15, n_historic=240, seed=11, now=NOW)
    with session_scope(sessions) as session:
        store_batch(session, batch, source="synthetic", location="spark-test", cipher=cipher)
    with session_scope(sessions) as session:
        train_and_register(
            "icu-mortality",
            session=session,
            registry_dir=settings.resolved_registry_dir,
            budget=FAST_BUDGET,
            n_splits=3,
            n_boot=10,
        )

    # Two stays in progress outside the model's population: the live path never scores
    # them, and the batch job must not either (it scored every encounter before).
    with session_scope(sessions) as session:
        current = session.scalars(
            select(Encounter).where(Encounter.discharged_at.is_(None)).order_by(Encounter.id)
        ).all()
        current[0].age_years = 7.0
        current[1].kind = "outpatient"
        excluded = {current[0].public_id, current[1].public_id}

    online: dict[str, tuple[float, str]] = {}
    with session_scope(sessions) as session:
        champion = get_champion(session, "icu-mortality")
        assert champion is not None
        predictor = Predictor(
            load_model(Path(champion.artifact_path), Registered.of(champion)),
            model_version_id=champion.id,
        )
        for encounter in session.scalars(
            select(Encounter).where(
                Encounter.discharged_at.is_(None), Encounter.public_id.not_in(excluded)
            )
        ):
            prediction = score_encounter(session, predictor, encounter, as_of=NOW)
            online[encounter.public_id] = (prediction.score, prediction.features_digest)
        export = stays_frame(session, as_of=NOW)  # every stay in progress, as a lake holds
    engine.dispose()
    assert len(online) == 13

    output = tmp_path / "scores"
    result = CliRunner().invoke(
        main,
        [
            "score-batch",
            "--master",
            "local[2]",
            "--as-of",
            NOW.strftime("%Y-%m-%dT%H:%M"),
            "--output",
            str(output),
        ],
        obj={"settings": settings},
    )
    assert result.exit_code == 0, result.output
    assert f"scored 13 stays as of {NOW.isoformat()} with {champion.version}" in result.output
    assert (
        "2 stays outside the model's population not scored: ICU and hospital stays of"
        " patients aged 15 or over" in result.output
    )

    scores = pd.read_parquet(output).set_index("stay_id")
    assert set(scores.index) == set(online)  # the two outside are not among them
    assert (scores["model_version"] == champion.version).all()
    for stay_id, (probability, digest) in online.items():
        row = scores.loc[stay_id]
        assert row["features_digest"] == digest, stay_id  # identical features
        # One predict_proba call per batch instead of per row: equal to rounding error.
        assert row["probability"] == pytest.approx(probability, rel=0, abs=1e-12), stay_id
        assert row["band"] == predictor.model.band(probability)
    assert scores["probability"].nunique() > 1  # a real model, not a constant

    # A data-lake export (--input) carries no encounter kind: the child is still left out
    # by age; an export must hold ICU and hospital stays only (docs/deployment-guide.md).
    assert set(export["stay_id"]) == set(online) | excluded
    lake = tmp_path / "stays.parquet"
    export.to_parquet(lake)
    result = CliRunner().invoke(
        main,
        [
            *("score-batch", "--master", "local[2]", "--as-of", NOW.strftime("%Y-%m-%dT%H:%M")),
            *("--input", str(lake), "--output", str(tmp_path / "lake-scores")),
        ],
        obj={"settings": settings},
    )
    assert result.exit_code == 0, result.output
    assert "1 stay outside the model's population not scored" in result.output
    lake_scores = pd.read_parquet(tmp_path / "lake-scores")
    assert set(lake_scores["stay_id"]) == set(online) | {current[1].public_id}
