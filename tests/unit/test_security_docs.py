"""docs/security.md stays true: the matrix is the code's, and every cited test exists."""

from __future__ import annotations

import re
from pathlib import Path

from vitalcast.security.permissions import permission_matrix_markdown

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
START, END = "<!-- permission-matrix:start -->", "<!-- permission-matrix:end -->"


def test_permission_matrix_matches_the_code() -> None:
    text = DOC.read_text()
    block = text.split(START, 1)[1].split(END, 1)[0]
    assert block.strip() == permission_matrix_markdown().strip(), (
        "regenerate with: python -m vitalcast.security.permissions"
    )


def test_every_cited_test_exists() -> None:
    cited = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", DOC.read_text())
    assert len(cited) >= 10, "the safeguard map cites too few tests"
    for path, name in cited:
        source = ROOT / path
        assert source.is_file(), path
        assert re.search(rf"^(async )?def {name}\(", source.read_text(), re.M), f"{path}::{name}"
