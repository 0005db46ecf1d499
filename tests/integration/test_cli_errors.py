"""Bad configuration stops the command with one clear line naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

VITALCAST = str(Path(sys.executable).with_name("vitalcast"))


def _run(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAST_")}
    clean |= {"VITALCAST_DATA_DIR": str(tmp_path)} | env
    return subprocess.run(
        [VITALCAST, *args], env=clean, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["db", "upgrade"],
            {"VITALCAST_DATABASE_URL": "mysql://u@h/d"},
            "error: VITALCAST_DATABASE_URL: unsupported scheme 'mysql'",
        ),
        (
            ["serve", "--port", "0"],
            {"VITALCAST_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"},
            "error: VITALCAST_DATABASE_URL: cannot connect to the database",
        ),
        (
            ["serve"],
            {"VITALCAST_ENV": "production", "VITALCAST_DATABASE_URL": "postgresql://u@h/d"},
            "error: VITALCAST_SECRET_KEY is required in production",
        ),
        (
            ["db", "upgrade"],
            {"VITALCAST_PORT": "eighty"},
            "error: VITALCAST_PORT:",
        ),
    ],
)
def test_bad_configuration_is_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    result = _run(args, env, tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(expected), lines[0]


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = _run(["--help"], {}, tmp_path)
    assert result.returncode == 0
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    from vitalcast.cli import main

    for name in main.commands:
        assert f"  {name}" in result.stdout
        assert f"vitalcast {name}" in readme, f"README does not mention `vitalcast {name}`"
