"""Running the model commands (`train`, `evaluate`, `recalibrate`, `models`) as a user does:
click's runner in this process, against a test database and a registry under tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result

from vitalcast.cli import main


def model_env(pg_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a CLI run: the database, and data and registry under tmp_path."""
    return {
        "VITALCAST_DATABASE_URL": pg_url,
        "VITALCAST_DATA_DIR": str(tmp_path / "var"),
        "VITALCAST_REGISTRY_DIR": str(tmp_path / "registry"),
        "VITALCAST_ENV": "test",
    }


def run_cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def refused(res: Result, message: str) -> None:
    """One clear line, exit code 2: a usage error, not a bug."""
    assert res.exit_code == 2, res.output
    assert message in res.output, res.output
    assert "internal error" not in res.output
    assert "Traceback" not in res.output


# A small table and its task file: a `tabular` model trains on it in seconds.
SMALL_TASK = """\
label: died
id_column: pid
features:
  numeric: [age, lactate]
  categorical: [sex]
"""


def small_table(path: Path, n: int, seed: int) -> Path:
    """``n`` synthetic patients of :data:`SMALL_TASK` (death more likely with age and in
    men), written to ``path``."""
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 10, n)
    male = rng.random(n) < 0.5
    risk = 1 / (1 + np.exp(-(0.08 * (age - 60) + 0.5 * male - 1)))
    died = (rng.random(n) < risk).astype(int)
    lactate = rng.normal(1, 0.3, n)
    path.write_text(
        "pid,age,sex,lactate,died\n"
        + "".join(
            f"P{seed}-{i},{age[i]:.1f},{'M' if male[i] else 'F'},{lactate[i]:.2f},{died[i]}\n"
            for i in range(n)
        )
    )
    return path
