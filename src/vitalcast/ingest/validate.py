"""The preprocessing rules every source shares: codes, units, ranges and times."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from vitalcast.clinical.codes import BY_CODE, is_plausible
from vitalcast.clinical.records import ObservationRecord
from vitalcast.clinical.units import UnknownUnit, to_canonical

# Clocks of bedside devices drift; a few minutes ahead is tolerated, more is an error.
FUTURE_TOLERANCE = timedelta(minutes=5)


class Invalid(ValueError):
    """A record breaking a rule; ``code`` is the quarantine reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_observation(obs: ObservationRecord, *, now: datetime) -> ObservationRecord:
    """Return the observation in canonical form, or raise :class:`Invalid`."""
    spec = BY_CODE.get(obs.code)
    if spec is None:
        raise Invalid("unknown_code", f"code {obs.code!r} is not in the vocabulary")
    if obs.effective_at.tzinfo is None:
        raise Invalid("naive_time", "effective time has no timezone")
    if obs.effective_at > now + FUTURE_TOLERANCE:
        raise Invalid(
            "future_time", f"effective time {obs.effective_at.isoformat()} is in the future"
        )
    if obs.value is None:
        if obs.value_text is None:
            raise Invalid("no_value", "observation has neither a value nor a text value")
        return obs
    if obs.value != obs.value:  # NaN
        raise Invalid("no_value", "value is not a number")
    try:
        value, unit = to_canonical(obs.code, obs.value, obs.unit)
    except UnknownUnit as exc:
        raise Invalid("unknown_unit", f"{spec.label}: {exc}") from None
    if not is_plausible(spec, value):
        raise Invalid(
            "implausible_value",
            f"{spec.label} {value:g} {spec.display_unit} outside plausible range"
            f" {spec.low:g}-{spec.high:g}",
        )
    if value == obs.value and unit == obs.unit:
        return obs
    return replace(obs, value=value, unit=unit)
