"""The patient page's drawing rules: which variables are states, settings, intervals or
lines, and the gap after which a line breaks (documented in vitalcast.web.charting)."""

from __future__ import annotations

import pytest

from vitalcast.clinical.codes import BY_KEY, VARIABLES
from vitalcast.web.charting import chart_rule, chart_variables


@pytest.mark.parametrize(
    ("key", "style", "gap_hours"),
    [
        ("hr", "line", 6.0),
        ("art_map", "line", 6.0),
        ("temp", "line", 12.0),
        ("gcs", "line", 12.0),
        ("fio2", "setting", 12.0),
        ("mech_vent", "state", 12.0),
        ("urine", "interval", 12.0),
        ("creatinine", "line", 48.0),
    ],
)
def test_each_variable_has_its_rule(key: str, style: str, gap_hours: float) -> None:
    rule = chart_rule(BY_KEY[key])
    assert (rule.style, rule.gap_hours) == (style, gap_hours)


def test_ventilation_is_named_off_and_on() -> None:
    assert chart_rule(BY_KEY["mech_vent"]).states == ("Off", "On")


def test_the_page_gets_a_rule_for_every_variable_in_vocabulary_order() -> None:
    served = chart_variables()
    assert list(served) == [v.code for v in VARIABLES]
    assert all(v["gap_hours"] > 0 for v in served.values())
    assert served[BY_KEY["mech_vent"].code]["states"] == ["Off", "On"]
