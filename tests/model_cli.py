"""Running the model commands (`train`, `evaluate`, `recalibrate`, `models`) as a user does:
click's runner in this process, against a test database and a registry under tmp_path."""

from __future__ import annotations

from pathlib import Path

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
