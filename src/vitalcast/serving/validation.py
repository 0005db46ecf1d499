"""Small request-validation helpers that report every problem at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, current_app, request

from vitalcast.errors import BadRequest, InvalidInput
from vitalcast.json_input import JsonInputError, parse_json
from vitalcast.serving.openapi import API_PREFIX, operation_of
from vitalcast.serving.schemas import unknown_parameter


def json_body() -> Any:
    """The request's JSON body.

    Raises:
        BadRequest: the body is missing, not UTF-8 or not JSON that can be read (an
            integer of thousands of digits included: see :mod:`vitalcast.json_input`).
    """
    raw = request.get_data(cache=True)
    if not raw:
        raise BadRequest("request body is empty; send a JSON document")
    try:
        return parse_json(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not UTF-8 text (byte {exc.start})") from None
    except JsonInputError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def int_arg(name: str, default: int, *, low: int, high: int, problems: list[dict[str, Any]]) -> int:
    """An integer query parameter within [low, high]; problems are collected, not raised."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append({"loc": ["query", name], "msg": "must be an integer"})
        return default
    if not low <= value <= high:
        problems.append({"loc": ["query", name], "msg": f"must be between {low} and {high}"})
    return value


def raise_if(problems: list[dict[str, Any]], message: str = "invalid request") -> None:
    if problems:
        raise InvalidInput(message, details=problems)


@contextmanager
def located(where: str) -> Iterator[None]:
    """Put the locations of an :class:`InvalidInput` raised inside under ``where``
    (``"path"``, ``"query"`` or ``"body"``): services name the field (``["device_id"]``),
    and only the route knows which part of the request carried it (docs/api.md)."""
    try:
        yield
    except InvalidInput as exc:
        exc.details = [{**d, "loc": [where, *d.get("loc", [])]} for d in exc.details]
        raise


def register_query_check(app: Flask) -> None:
    """Refuse query parameters on the ``/api/v1`` routes that declare none (422).

    Routes with a query model refuse unknown names themselves (:func:`~vitalcast.
    serving.schemas.parse_query`), together with their other problems; the others would
    silently ignore them (``/monitoring/alerts?limit=abc``). Registered after the guard:
    an unauthenticated caller gets its 401 first.
    """

    @app.before_request
    def _no_undeclared_query() -> None:
        if not request.args or not request.path.startswith(API_PREFIX + "/"):
            return
        view = current_app.view_functions.get(request.endpoint or "")
        op = operation_of(view) if view is not None else None
        if op is None or op.query is not None:
            return
        raise InvalidInput(
            "invalid query parameters",
            details=[
                {"loc": ["query", name], "msg": unknown_parameter(())} for name in request.args
            ],
        )
