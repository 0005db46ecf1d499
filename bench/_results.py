"""Where benchmarks leave their figures, so that documents are generated from them.

Each benchmark prints its figures for a human and, with ``--save``, writes them to
``bench/results/<name>.json`` together with the conditions they were measured under
(date, command, load average, cores). ``bench/project_report.py`` renders
docs/project-report.md from these files, and a test checks the committed report equals
that rendering: a figure in the report cannot be typed by hand or go stale silently.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def command_line() -> str:
    """The command that produced the figures, as someone would re-type it."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(Path.cwd())
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


def save(name: str, figures: dict[str, Any], *, load_at_start: float | None = None) -> Path:
    """Write one benchmark's figures and their measuring conditions; returns the path."""
    RESULTS.mkdir(exist_ok=True)
    record = {
        "name": name,
        "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "machine": {
            "cores": os.cpu_count(),
            "arch": platform.machine(),
            "python": platform.python_version(),
            "load_average_at_start": (
                round(load_at_start, 2) if load_at_start is not None else None
            ),
            "load_average_at_end": round(os.getloadavg()[0], 2),
        },
        "figures": figures,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"saved {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return path


def load(name: str) -> dict[str, Any] | None:
    """One benchmark's saved record, or None when it was never measured."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    return record
