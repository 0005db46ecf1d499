"""The command runs the same way as a script and as ``python -m``."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["vitalcast", "vitalcast.cli"])
def test_python_dash_m_lists_every_command(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for command in ("demo", "serve", "ingest", "train", "evaluate", "audit", "monitor"):
        assert f"  {command} " in done.stdout, command
