"""The model lifecycle commands on a small `tabular` table, through the real CLI and the
real PostgreSQL: what a platform engineer types, and what must come back (one clear line
and exit code 2 for a mistake; no ``nan`` where a number cannot be had)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.model_cli import SMALL_TASK, model_env, refused, run_cli, small_table

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(pg_url: str, tmp_path: Path) -> tuple[dict[str, str], str, Path]:
    env = model_env(pg_url, tmp_path)
    task = tmp_path / "task.yaml"
    task.write_text(SMALL_TASK)
    data = small_table(tmp_path / "train.csv", 300, seed=1)
    res = run_cli(
        env,
        *("train", "--task", "tabular", "--task-file", str(task), "--data", str(data)),
        *("--budget", "fast", "--json"),
    )
    assert res.exit_code == 0, res.output
    return env, json.loads(res.output)["version"], task


def test_evaluate_says_not_computable_instead_of_nan(
    trained: tuple[dict[str, str], str, Path], tmp_path: Path
) -> None:
    """Eight unseen rows: H needs ten, so it cannot be had; it printed ``nan  [nan, nan]``."""
    env, version, task = trained
    few = small_table(tmp_path / "few.csv", 8, seed=2)
    res = run_cli(env, "evaluate", "--model", version, "--task-file", str(task), "--data", str(few))
    assert res.exit_code == 0, res.output
    assert "nan" not in res.output.lower(), res.output
    assert "inf" not in res.output.lower(), res.output
    assert "hl_h                   not computable" in res.output
    res = run_cli(
        env,
        *("evaluate", "--model", version, "--task-file", str(task), "--data", str(few)),
        "--json",
    )
    assert json.loads(res.output)["hl_h"] is None


def test_report_to_a_folder_that_cannot_hold_it_is_a_clear_error(
    trained: tuple[dict[str, str], str, Path], tmp_path: Path
) -> None:
    """It was an internal error (FileNotFoundError, IsADirectoryError)."""
    env, version, _task = trained
    missing = tmp_path / "no-such-folder" / "card.html"
    refused(
        run_cli(env, "report", "--model", version, "--out", str(missing)),
        f"--out {missing}: cannot write the report (No such file or directory)",
    )
    refused(
        run_cli(env, "report", "--model", version, "--out", str(tmp_path)),
        "cannot write the report (Is a directory)",
    )
    card = tmp_path / "card.html"
    res = run_cli(env, "report", "--model", version, "--out", str(card))
    assert res.exit_code == 0, res.output
    assert version in card.read_text()


def test_a_misspelt_task_or_a_missing_alias_says_so(pg_url: str, tmp_path: Path) -> None:
    """`models list --task icu-mortalty` listed nothing with exit 0 (an empty registry, to
    whoever read it), and `--model champion` of a task without one said "model
    'champion' is not registered"."""
    env = model_env(pg_url, tmp_path)
    res = run_cli(env, "models", "list", "--task", "icu-mortalty")
    assert res.exit_code == 2, res.output
    assert "unknown task 'icu-mortalty'; choose one of icu-mortality" in res.output
    for args in (
        ("models", "show", "challenger", "--task", "tabular"),
        ("report", "--model", "challenger", "--task", "tabular"),
    ):
        refused(run_cli(env, *args), "tabular has no challenger")
    refused(
        run_cli(env, "models", "show", "champion", "--task", "icu-mortality"),
        "icu-mortality has no champion; see `vitalcast models list --task icu-mortality`",
    )
