"""The operator's commands beside `models`: a named tabular task (`tabular:NAME`) is
refused with one line where it cannot apply, and a mistyped task is refused at all
(real PostgreSQL, the real CLI).

`score-batch --task tabular:heart` with a champion ended in "internal error (KeyError)";
`monitor run --task icu-mortalty` (or `tabular:Heart`) monitored nothing and exited 0, so
a scheduled job with a typo reported healthy forever.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sqlalchemy.orm import Session

from tests.model_cli import model_env, refused, run_cli
from vitalcast.db import create_db_engine
from vitalcast.modeling.registry import save_model
from vitalcast.modeling.service import register_version


def _named_champion(pg_url: str, registry: Path) -> str:
    """A small `tabular:heart` model, registered (and so champion) in the database."""
    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(40, 2)), columns=["age", "chol"])
    version, path, sha, _ = save_model(
        registry,
        LogisticRegression().fit(X, X["age"] > 0),
        task="tabular:heart",
        feature_names=["age", "chol"],
        categorical=[],
        threshold=0.5,
        metrics={"auroc": 0.5},
        fingerprint="f",
        reference={},
        publish=False,
    )
    engine = create_db_engine(pg_url)
    try:
        with Session(engine) as session:
            alias = register_version(
                session,
                version=version,
                task="tabular:heart",
                path=path,
                sha256=sha,
                threshold=0.5,
                metrics={"auroc": 0.5},
            )
            session.commit()
    finally:
        engine.dispose()
    assert alias == "champion"
    return version


def test_score_batch_refuses_a_task_that_does_not_score_stays(pg_url: str, tmp_path: Path) -> None:
    env = model_env(pg_url, tmp_path)
    _named_champion(pg_url, Path(env["VITALCAST_REGISTRY_DIR"]))
    out = str(tmp_path / "scores")
    for task in ("tabular:heart", "tabular"):
        res = run_cli(env, "score-batch", "--task", task, "--output", out)
        refused(res, f"score-batch scores ICU stays; {task}'s champion scores other inputs")
    refused(
        run_cli(env, "score-batch", "--task", "tabular:Heart", "--output", out),
        "a task file's name must be 1 to 48 lower-case letters",
    )
    assert not Path(out).exists()


def test_monitoring_commands_refuse_a_mistyped_task(pg_url: str, tmp_path: Path) -> None:
    env = model_env(pg_url, tmp_path)
    _named_champion(pg_url, Path(env["VITALCAST_REGISTRY_DIR"]))
    for args in (("monitor", "run"), ("monitor", "drift"), ("retrain",)):
        refused(run_cli(env, *args, "--task", "icu-mortalty"), "unknown task 'icu-mortalty'")
        refused(run_cli(env, *args, "--task", "tabular:Heart"), "lower-case letters")
    res = run_cli(env, "monitor", "run", "--task", "tabular:heart")
    assert res.exit_code == 0, res.output
    assert "champion registered and verified" in res.output
