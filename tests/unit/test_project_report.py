"""docs/project-report.md is the rendering of the saved results, not typed figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_project_report_is_rendered_from_saved_results() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "project_report.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_every_saved_result_says_how_it_was_measured() -> None:
    import json

    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        record = json.loads(path.read_text())
        assert record["name"] == path.stem, path
        assert record["command"].startswith(".venv/bin/python bench/"), path
        assert record["measured_at"], path
        assert record["figures"], path
        assert "load_average_at_end" in record["machine"], path
