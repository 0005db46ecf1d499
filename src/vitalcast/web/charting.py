"""How the patient page draws each variable over time, and where its line must break.

A chart draws what was measured, and only that. Three things a plain line between the
points gets wrong, each fixed by a rule here that the browser applies
(``web/static/js/charts.js``):

* **States** (mechanical ventilation, 0/1) do not slope from one to the other: the state
  holds until the next charted state, so it is drawn as a step, labelled Off/On.
  **Settings** (FiO₂, set on the ventilator or oxygen blender) hold the same way until
  changed: steps too, on a numeric axis. A line from 60 % to 40 % over four hours would
  say the patient breathed 50 % in between, which nobody set.
* **Volumes per interval** (urine output) are not a level at an instant: each value is
  the volume collected since the previous one (how ICU charts, and PhysioNet 2012, record
  it), so it is drawn as a bar spanning that interval, as high as the hourly rate (its
  area is the volume: a two-hour collection does not look like twice the output), and
  listed with its interval, volume and rate. A value more than the gap limit after the
  previous one has no known interval, hence no rate: an open mark on the time axis.
* **Gaps**: a line joining two values many hours apart reads as if the patient had been
  watched in between. The line breaks where two neighbouring values are further apart
  than the variable's gap limit below, and the values table notes the break.

Gap limits, by how often each variable is charted (synthetic and PhysioNet 2012 charting
rhythm, see ``vitalcast.synth.stay``):

* bedside vital signs charted every round (heart and respiratory rate, SpO₂, cuff and
  arterial pressures): **6 h** — rounds are hourly in the first two days and at most
  four-hourly for settled patients, so one missed four-hourly round breaks the line;
* temperature and GCS: **12 h** — charted every three to four hours, less often once
  settled; 12-hourly is the least frequent observation schedule NEWS2 allows;
* ventilator settings (FiO₂, ventilation) and urine output: **12 h** — charted every
  few hours while they apply;
* laboratory results: **48 h** — panels every 6-24 h and liver tests daily, so a missed
  day is still joined and a two-day silence is not;
* the risk estimate: **12 h** — a stay is rescored whenever data arrives, so a longer
  silence means nothing was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from vitalcast.clinical.codes import VARIABLES, VariableSpec

ChartStyle = Literal["line", "state", "setting", "interval"]

ROUND_VITALS_GAP_HOURS = 6.0
SLOW_VITALS_GAP_HOURS = 12.0
LAB_GAP_HOURS = 48.0
RISK_GAP_HOURS = 12.0

_SLOW_VITALS = frozenset({"temp", "gcs"})


@dataclass(frozen=True, slots=True)
class ChartRule:
    """How one variable is drawn."""

    style: ChartStyle
    gap_hours: float  # two values further apart than this are not joined
    states: tuple[str, ...] = ()  # labels of the values 0, 1, ... of a state variable


def chart_rule(spec: VariableSpec) -> ChartRule:
    """The drawing rule of ``spec`` (see the module docstring for the numbers' reasons)."""
    if spec.key == "mech_vent":
        return ChartRule("state", SLOW_VITALS_GAP_HOURS, states=("Off", "On"))
    if spec.kind == "output":
        return ChartRule("interval", SLOW_VITALS_GAP_HOURS)
    if spec.kind == "lab":
        return ChartRule("line", LAB_GAP_HOURS)
    if spec.kind == "intervention":
        return ChartRule("setting", SLOW_VITALS_GAP_HOURS)
    if spec.key in _SLOW_VITALS:
        return ChartRule("line", SLOW_VITALS_GAP_HOURS)
    return ChartRule("line", ROUND_VITALS_GAP_HOURS)


def chart_variables() -> dict[str, dict[str, Any]]:
    """What the patient page's script needs of each variable, by code, in the
    vocabulary's order (vital signs first, as clinicians read a chart)."""
    return {v.code: _chart_variable(v) for v in VARIABLES}


def _chart_variable(spec: VariableSpec) -> dict[str, Any]:
    rule = chart_rule(spec)
    return {
        "label": spec.label,
        "unit": spec.display_unit,
        "kind": spec.kind,
        "style": rule.style,
        "gap_hours": rule.gap_hours,
        "states": list(rule.states),
    }
