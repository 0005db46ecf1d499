"""HL7 v2 field access and times, shared by the mapping of every segment.

Split from :mod:`.hl7v2` so that the OBX mapping (:mod:`._hl7_results`) and the PID/PV1
mapping use the same unescaped field access, the same DTM rule and the same per-item
:class:`Problem` without importing each other. :func:`parse_dtm` is re-exported by
:mod:`.hl7v2`.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from vitalcast.clinical.times import in_dst_change, to_utc

DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")


class Seg:
    """String access to fields and components, unescaped (the ``hl7`` containers nest
    differently with and without repetitions; plain strings are predictable)."""

    def __init__(self, msg: Any, seg: Any) -> None:
        self.msg, self.seg = msg, seg
        self.rep_sep, self.comp_sep = msg.separators[2], msg.separators[3]

    def field(self, n: int) -> str:
        return str(self.seg[n]) if n < len(self.seg) else ""

    def reps(self, n: int) -> list[list[str]]:
        text = self.field(n)
        return [
            [self.msg.unescape(c) for c in rep.split(self.comp_sep)]
            for rep in text.split(self.rep_sep)
            if rep
        ]

    def comp(self, n: int, c: int = 1) -> str:
        reps = self.reps(n)
        return reps[0][c - 1].strip() if reps and len(reps[0]) >= c else ""


def parse_dtm(text: str, *, tz: tzinfo, what: str, need_time: bool = True) -> datetime | None:
    """An HL7 DTM (``YYYYMMDDHHMM[SS[.S]][+ZZZZ]``) as aware UTC; ``None`` when empty.

    Times without an offset are the sender's local time, taken to be ``tz``; one that
    local clocks showed twice or skipped (a daylight-saving change) is refused, as it
    cannot be placed on one UTC instant. Errors name
    ``what`` and the problem, never the text: a time of care is PHI, and a field shifted
    by a stray delimiter may hold anything.

    Raises:
        ValueError: malformed, or day precision where a time of day is needed;
            :class:`Problem` ``ambiguous_time`` for a local time in a DST change;
            :class:`~vitalcast.clinical.times.TimeOutOfRange` (a ValueError, code
            ``time_out_of_range``) for a year outside the clinical range, checked before
            the conversion to UTC that would overflow near year 1 or 9999.
    """
    text = text.strip()
    if not text:
        return None
    m = DTM.match(text)
    if not m or not m.group(2) or not m.group(3):
        raise ValueError(f"{what} is not an HL7 date/time")
    if m.group(4) is None and need_time:
        raise ValueError(f"{what} has no time of day")
    y, mo, d, h, mi, s = (int(g) if g else 0 for g in m.groups()[:6])
    micro = int(float(m.group(7)) * 1e6) if m.group(7) else 0
    zone: tzinfo = tz
    if m.group(8):
        sign = 1 if m.group(8)[0] == "+" else -1
        hours, minutes = int(m.group(8)[1:3]), int(m.group(8)[3:])
        if hours > 23 or minutes > 59:
            raise ValueError(f"{what} has an impossible UTC offset")
        zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        local = datetime(y, mo, d, h, mi, s, micro, tzinfo=zone)
    except ValueError:
        raise ValueError(f"{what} is not a calendar date/time") from None
    if not m.group(8) and in_dst_change(local):
        # A local time the clocks showed twice (01:30 as autumn's DST ends) or never
        # (02:30 as spring's begins): either UTC instant may be the true one, an hour
        # apart, and picking one would misplace or merge readings without a word.
        raise Problem(
            "ambiguous_time",
            f"{what} has no UTC offset and falls in a daylight-saving change of the"
            " sender's time zone (VITALCAST_HL7_TIMEZONE): send it with its offset",
        )
    return to_utc(local, what)


class Problem(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
