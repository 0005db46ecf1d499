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
from collections.abc import Collection, Sequence
from typing import Any
from urllib.parse import urlencode

from fhir.resources.R4B.bundle import Bundle
from flask import Response, request
from sqlalchemy import ColumnElement, Select, false, func, or_, select, true
from sqlalchemy.orm import Session

from vitalcast.clinical.codes import BY_CODE, LOINC
from vitalcast.clinical.tables import Observation
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


def code_filter(values: Sequence[str]) -> ColumnElement[bool]:
    """The FHIR token search on an observation's code: commas are OR, repeats are AND.

    ``system|code`` matches the code in that system only; the store keeps the code, and
    its system is :func:`code_system`'s, the one the Observation resource carries.
    ``|code`` asks for a code without a system (there are none) and ``system|`` for any
    code of the system.
    """
    clause: ColumnElement[bool] = true()
    for value in values:
        clause = clause & or_(false(), *(_token(t) for t in value.split(",")))
    return clause


def code_system(code: str) -> str:
    """The system an observation code is rendered (and searched) in."""
    spec = BY_CODE.get(code)
    return spec.system if spec else LOINC


def _token(token: str) -> ColumnElement[bool]:
    column = Observation.code
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
