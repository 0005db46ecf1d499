"""FHIR search mechanics for ``/fhir``: the parameters a search accepts, ``code`` tokens,
and searchset Bundles with their match count and paging links.

A search answers every match or says how to get the rest: ``total`` is the number of
matches (counted, not the page's length), and a ``next`` link leads on by ``_offset``
(http://hl7.org/fhir/R4/http.html#paging). A parameter the server would not apply is
refused (422) rather than ignored, since a search that dropped a filter would show a
clinician more than was asked for as if it were the answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from fhir.resources.R4B.bundle import Bundle
from flask import Response, request
from sqlalchemy import (
    ColumnElement,
    Select,
    SQLColumnExpression,
    and_,
    false,
    func,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session

from vitalcast.clinical.codes import BY_CODE, LOINC
from vitalcast.clinical.tables import Observation
from vitalcast.clinical.times import MAX_YEAR, MIN_YEAR, TimeOutOfRange, check_year
from vitalcast.serving.fhir_outcome import FHIR_BASE, FHIR_JSON
from vitalcast.serving.validation import int_arg, raise_if

# Parameters every search takes besides its own: paging, and the one format served.
RESULT_PARAMS = frozenset({"_count", "_offset", "_format"})
_FORMATS = ("json", "application/json", FHIR_JSON)
MAX_OFFSET = 1_000_000_000
# Parameters whose repetition means AND in FHIR, which this server applies as such.
_REPEATABLE = frozenset({"date", "code"})


def check_search_params(allowed: Collection[str]) -> None:
    """Refuse (422, every problem at once) parameters this search does not apply.

    ``allowed`` are the search's own parameters (as its CapabilityStatement entry
    declares them); ``patient`` and ``subject`` name the same reference, once.
    """
    problems: list[dict[str, Any]] = []
    known = RESULT_PARAMS | set(allowed)
    for name in request.args:
        if name not in known:
            problems.append(
                {"loc": ["query", name], "msg": f"not a search parameter here: {sorted(known)}"}
            )
        elif name not in _REPEATABLE and len(request.args.getlist(name)) > 1:
            problems.append({"loc": ["query", name], "msg": "give it once"})
    if "patient" in request.args and "subject" in request.args:
        problems.append({"loc": ["query", "subject"], "msg": "give patient or subject, not both"})
    if request.args.get("_format", FHIR_JSON) not in _FORMATS:
        problems.append({"loc": ["query", "_format"], "msg": "only json is served"})
    raise_if(problems, "invalid FHIR search parameters")


def paging(default: int, high: int) -> tuple[int, int]:
    """``_count`` (page size, ``default`` up to ``high``) and ``_offset`` (from 0).

    Raises:
        InvalidInput: either is not an integer in its range.
    """
    problems: list[dict[str, Any]] = []
    count = int_arg("_count", default, low=1, high=high, problems=problems)
    offset = int_arg("_offset", 0, low=0, high=MAX_OFFSET, problems=problems)
    raise_if(problems, "invalid FHIR search parameters")
    return count, offset


def code_filter(
    values: Sequence[str], column: SQLColumnExpression[str] = Observation.code
) -> ColumnElement[bool]:
    """The FHIR token search on an observation's code: commas are OR, repeats are AND.

    ``system|code`` matches the code in that system only; the store keeps the code, and
    its system is :func:`code_system`'s, the one the Observation resource carries.
    ``|code`` asks for a code without a system (there are none) and ``system|`` for any
    code of the system. ``column`` holds the code (the served Observations' own column).
    """
    clause: ColumnElement[bool] = true()
    for value in values:
        clause = clause & or_(false(), *(_token(t, column) for t in value.split(",")))
    return clause


def code_system(code: str) -> str:
    """The system an observation code is rendered (and searched) in."""
    spec = BY_CODE.get(code)
    return spec.system if spec else LOINC


def _token(token: str, column: SQLColumnExpression[str]) -> ColumnElement[bool]:
    if "|" not in token:
        return column == token
    system, code = token.split("|", 1)
    if not system:
        return false()
    if code:
        return column == code if code_system(code) == system else false()
    if system == LOINC:  # codes outside the variables are rendered as LOINC
        return column.not_in(sorted(c for c in BY_CODE if code_system(c) != system))
    return column.in_(sorted(c for c in BY_CODE if code_system(c) == system))


# A FHIR date search value (http://hl7.org/fhir/R4/search.html#date): any precision from
# the year down, populated from the left; minutes whenever there is an hour; a time zone
# (Z or +/-hh:mm) only with a time; fractional seconds of any length.
_DATE_VALUE = re.compile(
    r"(?P<year>[0-9]{4})(?:-(?P<month>[0-9]{2})(?:-(?P<day>[0-9]{2})"
    r"(?:T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?)?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)
#: The date prefixes the searches apply; FHIR's others (ne, sa, eb, ap) are refused.
DATE_PREFIXES = ("eq", "ge", "gt", "le", "lt")
_ALL_PREFIXES = frozenset({*DATE_PREFIXES, "ne", "sa", "eb", "ap"})


#: Fraction digits a stored time keeps (PostgreSQL ``timestamp`` and Python's datetime
#: hold microseconds; FHIR ingestion cuts a finer fraction to them).
_STORED_DIGITS = 6


@dataclass(frozen=True)
class DateRange:
    """The UTC range ``[start, end)`` a date search value denotes, whatever its precision:
    from its first instant up to (not including) the next value's at that precision."""

    start: datetime
    end: datetime


def parse_date_value(text: str) -> DateRange:
    """A FHIR date search value (prefix removed) as the UTC range it covers.

    ``2026`` is that year, ``2026-11`` that month, ``2026-11-29`` that day,
    ``2026-11-29T10:15`` that minute and ``2026-11-29T10:15:30`` that second, each from
    its first instant up to (not including) the next one's: FHIR R4 reads a search value
    as "the limits implied by the precision of the value"
    (http://hl7.org/fhir/R4/search.html#prefix), so a second is no more an instant than a
    minute is. A fraction is as precise as its digits (``.4`` is 100 ms, ``.400`` 1 ms)
    down to the microsecond a stored time keeps; digits past the sixth are cut, as
    ingestion cuts a time's, so a time searched with the fraction it was sent with is
    found. A value without a time zone is in the server's, UTC; a date alone takes none.

    Raises:
        ValueError: not in the format, not a calendar date or time of day, or a year
            outside the clinical range; the message never echoes the value.
    """
    found = _DATE_VALUE.fullmatch(text)
    if found is None:
        hint = " (send a + in a time zone as %2B)" if " " in text else ""
        raise ValueError(
            "not a FHIR date: YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.s]]"
            f" with an optional time zone (Z or +hh:mm) after a time{hint}"
        )
    hour, minute, second = (_number(found, k) for k in ("hour", "minute", "second"))
    month, day = _number(found, "month"), _number(found, "day")
    year = int(found["year"])
    try:
        start = datetime(
            year,
            1 if month is None else month,
            1 if day is None else day,
            hour or 0,
            minute or 0,
            second or 0,
        )
    except ValueError:
        raise ValueError("not a calendar date and time of day") from None
    try:
        check_year(start, "date")
    except TimeOutOfRange:  # its message would quote the year
        raise TimeOutOfRange(
            f"the year is outside the accepted range {MIN_YEAR}-{MAX_YEAR}"
        ) from None
    zone = _zone(found["zone"])
    if second is not None:
        digits = (found["fraction"] or "")[:_STORED_DIGITS]
        start = start.replace(microsecond=int(digits.ljust(_STORED_DIGITS, "0")))
        end = start + timedelta(microseconds=10 ** (_STORED_DIGITS - len(digits)))
    elif hour is not None:
        end = start + timedelta(minutes=1)
    elif day is not None:
        end = start + timedelta(days=1)
    elif month is not None:
        end = start.replace(year=year + month // 12, month=month % 12 + 1)
    else:
        end = start.replace(year=year + 1)
    return DateRange(
        start.replace(tzinfo=zone).astimezone(UTC), end.replace(tzinfo=zone).astimezone(UTC)
    )


def _number(found: re.Match[str], name: str) -> int | None:
    text = found[name]
    return None if text is None else int(text)


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return UTC
    hours, minutes = int(text[1:3]), int(text[4:6])
    offset = timedelta(hours=hours, minutes=minutes)
    if minutes > 59 or offset > timedelta(hours=14):
        raise ValueError("not a time zone: from -14:00 to +14:00")
    return timezone(-offset if text[0] == "-" else offset)


_Time = SQLColumnExpression[datetime]
_MaybeTime = SQLColumnExpression[datetime | None]


def date_filter(
    values: Sequence[str], start: _Time, end: _MaybeTime | None = None
) -> ColumnElement[bool]:
    """FHIR ``date`` search values (each with an optional prefix; repeats are AND) as a
    filter on a time (``start``) or a period (``start`` to ``end``, which may be open).

    With the value's range R and the target T (the time, or the period, an open end being
    later than any date), after http://hl7.org/fhir/R4/search.html#prefix: ``eq`` (the
    default) T lies within R; ``ge`` T reaches R's start or later; ``gt`` T reaches past
    R's end; ``le`` T begins by R's end; ``lt`` T begins before R's start. A value to the
    second or a fraction of it is a range like any other (:func:`parse_date_value`), so
    ``2026-11-29T10:15:30`` finds a time of 10:15:30.4 with ``eq``, ``ge`` and ``le``, and
    ``gt`` and ``lt`` do not.

    Raises:
        InvalidInput: a value is malformed, not a date, or has a prefix not applied here.
    """
    problems: list[dict[str, Any]] = []
    clause: ColumnElement[bool] = true()
    last: _MaybeTime = start if end is None else end
    for raw in values:
        prefix, text = (raw[:2], raw[2:]) if raw[:2] in _ALL_PREFIXES else ("eq", raw)
        if prefix not in DATE_PREFIXES:
            problems.append(
                {
                    "loc": ["query", "date"],
                    "msg": f"prefix {prefix} is not supported: use {', '.join(DATE_PREFIXES)}",
                }
            )
            continue
        try:
            value = parse_date_value(text)
        except (TimeOutOfRange, ValueError) as exc:
            problems.append({"loc": ["query", "date"], "msg": str(exc)})
            continue
        clause = clause & _compare(prefix, value, start, last, open_end=end is not None)
    raise_if(problems, "invalid FHIR search parameters")
    return clause


def _compare(
    prefix: str, value: DateRange, first: _Time, last: _MaybeTime, *, open_end: bool
) -> ColumnElement[bool]:
    """One prefix's test of the target ``first``..``last`` against ``value``, half-open:
    a time at R's end is past R, a time at its start within it."""

    def ends(test: ColumnElement[bool], *, if_open: bool) -> ColumnElement[bool]:
        if not open_end:
            return test
        return or_(last.is_(None), test) if if_open else and_(last.is_not(None), test)

    if prefix == "eq":
        return and_(first >= value.start, ends(last < value.end, if_open=False))
    if prefix == "ge":
        return ends(last >= value.start, if_open=True)
    if prefix == "gt":
        return ends(last >= value.end, if_open=True)
    if prefix == "le":
        return first < value.end
    return first < value.start  # lt


def count_matches(session: Session, query: Select[*tuple[Any, ...]]) -> int:
    """How many rows ``query`` (unpaged, unordered) matches."""
    counted = select(func.count()).select_from(query.order_by(None).subquery())
    return int(session.scalar(counted) or 0)


def searchset(
    resource_type: str, resources: list[Any], *, total: int, count: int, offset: int
) -> Response:
    """A searchset Bundle of one page, with ``total``, and ``self``/``next`` links.

    The links repeat the request's own (checked) parameters, so they carry no identifier
    the query did not already hold.
    """
    base = f"{request.url_root.rstrip('/')}{FHIR_BASE}"
    links = [{"relation": "self", "url": _page_url(base, resource_type, count, offset)}]
    if offset + len(resources) < total:
        links.append(
            {"relation": "next", "url": _page_url(base, resource_type, count, offset + count)}
        )
    bundle = Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{base}/{r.get_resource_type()}/{r.id}",
                    "resource": json.loads(r.model_dump_json(exclude_none=True, by_alias=True)),
                    "search": {"mode": "match"},
                }
                for r in resources
            ],
        }
    )
    body = bundle.model_dump_json(exclude_none=True, by_alias=True)
    return Response(body, mimetype=FHIR_JSON)


def _page_url(base: str, resource_type: str, count: int, offset: int) -> str:
    params = [(k, v) for k, v in request.args.items(multi=True) if k not in ("_count", "_offset")]
    params += [("_count", str(count)), ("_offset", str(offset))]
    return f"{base}/{resource_type}?{urlencode(params)}"
