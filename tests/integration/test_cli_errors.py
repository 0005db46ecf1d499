"""Bad configuration stops the command with one clear line naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

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


@pytest.fixture
def buggy_commands() -> Iterator[None]:
    """Two commands on the real ``vitalcast`` group: one that hits a bug inside vitalcast's
    code with patient-looking input, and one that ends with its own exit code."""
    from vitalcast.cli import main
    from vitalcast.ingest.sources.mimic import shifted_offset

    @main.command("test-bug")
    def bug() -> None:
        shifted_offset("2180", "Jane Doe 4417")

    @main.command("test-exit")
    @click.pass_context
    def exit_3(ctx: click.Context) -> None:
        ctx.exit(3)

    yield
    main.commands.pop("test-bug")
    main.commands.pop("test-exit")


def test_a_bug_ends_with_one_line_naming_where_never_the_data(
    buggy_commands: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vitalcast.cli import main

    monkeypatch.delenv("VITALCAST_DEBUG", raising=False)
    result = CliRunner().invoke(main, ["test-bug"])
    assert result.exit_code == 1
    assert "Jane Doe" not in result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(
        "error: internal error (ValueError at vitalcast/ingest/sources/mimic.py:"
    ), lines[0]
    # click's own endings pass through untouched.
    assert CliRunner().invoke(main, ["test-exit"]).exit_code == 3
    # A developer can see the traceback.
    monkeypatch.setenv("VITALCAST_DEBUG", "1")
    debug = CliRunner().invoke(main, ["test-bug"])
    assert isinstance(debug.exception, ValueError)
