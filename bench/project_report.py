"""Render docs/project-report.md from the saved benchmark and evaluation results.

Usage (from the repository root)::

    .venv/bin/python bench/project_report.py          # rewrite docs/project-report.md
    .venv/bin/python bench/project_report.py --check  # exit 1 if the file is out of date

The prose lives in ``bench/project-report.md.j2``; every figure comes from a
``bench/results/*.json`` file written by a benchmark run with ``--save`` (see
``bench/_results.py``). A figure that was never measured renders as "not measured", never
as a number. ``tests/unit/test_project_report.py`` fails when the committed report differs
from this rendering.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import jinja2

import _results

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "project-report.md.j2"
OUTPUT = ROOT / "docs" / "project-report.md"

#: The benchmark and evaluation records the report draws on (bench/results/<name>.json).
SOURCES = (
    "model_icu_mortality",
    "model_readmission_30d",
    "train_icu_mortality",
    "ingest_physionet",
    "ingest_mqtt",
    "serving_hotpath",
    "serving_api",
    "ingest_to_event",
    "ward_page",
    "demo_startup",
    "drift_alarms",
    "landmark_calibration",
    "icu_input_shift",
)


class Missing:
    """Stands in for a figure that has not been measured; renders as such in any format."""

    def __getattr__(self, name: str) -> Missing:
        return self

    def __getitem__(self, key: object) -> Missing:
        return self

    def __format__(self, spec: str) -> str:
        return "not measured"

    def __str__(self) -> str:
        return "not measured"

    def __bool__(self) -> bool:
        return False


class Figures:
    """Attribute/item access into a saved record, with `Missing` for absent keys."""

    def __init__(self, data: Any) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        return self[name]

    def __getitem__(self, key: str) -> Any:
        if not isinstance(self._data, dict) or key not in self._data:
            return Missing()
        value = self._data[key]
        return Figures(value) if isinstance(value, dict) else value

    def __bool__(self) -> bool:
        return bool(self._data)

    def items(self) -> list[tuple[str, Any]]:
        if not isinstance(self._data, dict):
            return []
        return [(k, Figures(v) if isinstance(v, dict) else v) for k, v in self._data.items()]


def num(value: Any, spec: str = ",.0f") -> str:
    """A figure formatted for the report, or "not measured"."""
    if isinstance(value, Missing) or value is None:
        return "not measured"
    return format(value, spec)


def render() -> str:
    """The report as it follows from the saved results today."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["num"] = num
    records = {name: _results.load(name) for name in SOURCES}
    context = {
        name: Figures(record["figures"]) if record else Figures({})
        for name, record in records.items()
    }
    context["measured"] = {name: Figures(record or {}) for name, record in records.items()}
    return env.get_template(TEMPLATE.name).render(**context)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the file is current")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run bench/project_report.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
