"""``vitalcast score-batch``: score a whole population on Apache Spark."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import click

from vitalcast.errors import ModelUnavailable
from vitalcast.modeling.cli import TASK
from vitalcast.modeling.tasks import TaskError, get_task


@click.command("score-batch")
@click.option(
    "--task",
    type=TASK,
    default="icu-mortality",
    show_default=True,
    help="Task whose champion scores (a task scored on stays).",
)
@click.option(
    "--as-of",
    type=click.DateTime(["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="Score as of this UTC time (default: now).",
)
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Parquet stays (columns as vitalcast.batch.source.STAY_SCHEMA); default: the store.",
)
@click.option("--all-stays", is_flag=True, help="Also stays discharged before --as-of.")
@click.option(
    "--master",
    default=None,
    help="Spark master for a local run, e.g. local[4] (omit under spark-submit).",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Parquet directory (or gs:// / s3:// URL on a cluster) for the scores.",
)
@click.pass_context
def score_batch_command(
    ctx: click.Context,
    task: str,
    as_of: datetime | None,
    input_path: Path | None,
    all_stays: bool,
    master: str | None,
    output: Path,
) -> None:
    """Score every stay with the task's champion on Spark (same scores as the API)."""
    if get_task(task).kind != "timeseries":
        # The stays' features are a stay model's inputs; another task's champion (a task
        # file's table, a discharge's readmission) scores other inputs, on request.
        raise TaskError(
            f"score-batch scores ICU stays; {task}'s champion scores other inputs (POST"
            " /api/v1/predict and /predict/batch)"
        )
    from vitalcast.batch.source import count_outside, stays_frame
    from vitalcast.batch.spark import ModelRef, score_population, spark_session
    from vitalcast.cli import get_settings
    from vitalcast.db import create_db_engine
    from vitalcast.db.session import make_session_factory
    from vitalcast.modeling.registry import Registered
    from vitalcast.modeling.service import get_champion
    from vitalcast.serving.scoring import served_population

    started = time.monotonic()
    settings = get_settings(ctx)
    moment = (as_of.replace(tzinfo=UTC) if as_of else datetime.now(UTC)).replace(microsecond=0)
    engine = create_db_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        champion = get_champion(session, task)
        if champion is None:
            raise ModelUnavailable(f"no champion model for {task}; train and promote one first")
        ref = ModelRef(path=champion.artifact_path, registered=Registered.of(champion))
        version = champion.version
        population = served_population(settings, task)
        stays, outside = None, None
        if input_path is None:
            stays = stays_frame(
                session, as_of=moment, in_progress_only=not all_stays, population=population
            )
            outside = count_outside(
                session, as_of=moment, in_progress_only=not all_stays, population=population
            )
    engine.dispose()
    spark = spark_session(master)
    try:
        source = spark.read.parquet(str(input_path)) if input_path else stays
        assert source is not None
        scores = score_population(spark, source, ref, moment, population)
        scores.write.mode("overwrite").parquet(str(output))
        summary = spark.read.parquet(str(output)).groupBy("band").count().collect()
        scored = sum(row["count"] for row in summary)
        if outside is None:
            outside = source.count() - scored
    finally:
        spark.stop()
    bands = Counter({row["band"]: row["count"] for row in summary})
    click.echo(
        f"scored {scored} stays as of {moment.isoformat()} with {version}"
        f" ({', '.join(f'{b} {n}' for b, n in sorted(bands.items()))})"
        f" in {time.monotonic() - started:.1f} s -> {output}"
    )
    if outside and population is not None:
        stays_word = "stay" if outside == 1 else "stays"
        click.echo(
            f"{outside} {stays_word} outside the model's population not scored: {population.label}"
        )
