"""What text PostgreSQL cannot hold, and where it is in a JSON document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitalcast.config import load_settings
from vitalcast.errors import ConfigError
from vitalcast.text_input import (
    LONE_SURROGATE,
    NUL,
    json_text_problems,
    shown,
    unit_name_problem,
    unstorable,
)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("plain", None),
        ("\U0001f600", None),  # outside the BMP: one character, not a surrogate pair
        (json.loads('"\\ud83d\\ude00"'), None),  # the same, read from an escaped pair
        ("a\x00b", NUL),
        ("\ud800", LONE_SURROGATE),
        ("x\udfff", LONE_SURROGATE),
        (json.loads('"\\ude00\\ud83d"'), LONE_SURROGATE),  # a pair in the wrong order
    ],
)
def test_unstorable(text: str, why: str | None) -> None:
    assert unstorable(text) == why
    if why is None:
        text.encode("utf-8")
    elif why == LONE_SURROGATE:
        with pytest.raises(UnicodeEncodeError):
            text.encode("utf-8")


def test_problems_are_located_in_document_order_and_bounded() -> None:
    doc = json.loads(
        '{"a": "\\ud800", "b": [1, {"\\udc00k": "ok", "c": "x\\u0000"}], "d": "\\ud83d\\ude00"}'
    )
    assert json_text_problems(doc, ["body"]) == [
        {"loc": ["body", "a"], "msg": LONE_SURROGATE},
        {"loc": ["body", "b", 1, "\ufffdk"], "msg": f"the name {LONE_SURROGATE}"},
        {"loc": ["body", "b", 1, "c"], "msg": NUL},
    ]
    many = ["\x00"] * 1000
    assert len(json_text_problems(many, ["body"], limit=20)) == 20
    deep: object = "\ud800"
    for _ in range(5000):  # walked without recursion
        deep = [deep]
    assert json_text_problems(deep, [])[0]["loc"] == [0] * 5000


def test_shown_names_are_utf8() -> None:
    assert shown("un\x00it\ud800") == "unit\ufffd"
    shown("\udfff").encode("utf-8")


def test_unit_names_share_one_rule_with_the_settings(tmp_path: Path) -> None:
    assert unit_name_problem("MICU") is None
    assert unit_name_problem("U" * 64) is None
    for bad in ("", "  ", "U" * 65, "MI\x00CU", "\ud800"):
        assert unit_name_problem(bad), bad
        with pytest.raises(ConfigError, match=r"VITALCAST_STAY_UNITS: .*unit names are 1 to 64"):
            load_settings(data_dir=tmp_path, stay_units=["MICU", bad])
