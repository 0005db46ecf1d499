"""The OpenAPI 3.1 document of ``/api/v1``, generated from the routes themselves.

Each API view carries an :func:`operation` next to its :func:`~vitalcast.security.
permissions.requires`: a summary, the pydantic models it validates its query and body with
(:mod:`vitalcast.serving.schemas`), its response model and the errors it can answer. The
document is built by walking ``app.url_map``, so a route without an operation is an
error (:func:`undocumented_routes`, tested), and the security requirement of each operation
comes from its declared permission. The common answers are added from what the guard and
the error handlers do: 401/403 for every protected route, 400/413 for every route with a
body, 422 for every route (each refuses query parameters it does not declare), 429 when
rate limits are on, 503 where a champion model is needed, all in the one error shape.

``GET /api/docs`` is a small self-contained page (HTML, CSS and JS in this package, nothing
from a CDN: hospital networks often have no internet) that renders the document and can
send requests with an API key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from vitalcast import __version__
from vitalcast.features.stay import feature_bounds
from vitalcast.modeling.landmark_calibration import TIME_FEATURE
from vitalcast.modeling.tasks import STAY_TASK, TASKS
from vitalcast.monitoring.drift import MIN_CATEGORY_COUNT
from vitalcast.security.permissions import DESCRIPTIONS, PUBLIC, Permission, declared_permission
from vitalcast.security.permissions import public as public_view
from vitalcast.serving import schemas
from vitalcast.serving.fastpath import MAX_ABS_VALUE
from vitalcast.serving.scorer import CompiledScorer
from vitalcast.serving.state import get_state

F = TypeVar("F", bound=Callable[..., Any])

API_PREFIX = "/api/v1"
REF = "#/components/schemas/{model}"

ERROR_TEXT = {
    400: "Malformed request: body not JSON or not UTF-8, or nested too deep",
    401: "No valid credentials (API key or signed-in session)",
    403: "The caller's role lacks the permission, or a session sent no CSRF token",
    404: "No such resource, or not visible to the caller",
    413: "Request body or batch larger than the limit",
    422: "Invalid input: every problem at once, each with its location",
    429: "Rate limit reached; retry later",
    503: "No champion model is loaded (train and promote one)",
}


@dataclass(frozen=True)
class Operation:
    """What the document says about one view (everything else is derived)."""

    summary: str
    response: Any  # a pydantic model class or a type TypeAdapter understands
    status: int = 200
    query: type[BaseModel] | None = None
    path: dict[str, dict[str, Any]] = field(default_factory=dict)
    body: Any = None
    body_required: bool = True
    errors: tuple[int, ...] = ()
    needs_model: bool = False
    media_type: str = "application/json"
    tags: tuple[str, ...] = ()
    description: str | None = None
    models: tuple[type[BaseModel], ...] = ()  # referenced by name inside a literal schema


def operation(summary: str, response: Any, **kwargs: Any) -> Callable[[F], F]:
    """Describe a view in the OpenAPI document (see :class:`Operation`)."""
    op = Operation(summary, response, **kwargs)

    def mark(view: F) -> F:
        view.openapi_operation = op  # type: ignore[attr-defined]
        return view

    return mark


def operation_of(view: Callable[..., Any]) -> Operation | None:
    """The :class:`Operation` declared on ``view``, if any."""
    op: Operation | None = getattr(view, "openapi_operation", None)
    return op


def api_rules(app: Flask) -> list[Any]:
    return [r for r in app.url_map.iter_rules() if r.rule.startswith(API_PREFIX + "/")]


def undocumented_routes(app: Flask) -> list[str]:
    """``/api/v1`` routes whose view has no :func:`operation`."""
    return sorted(
        f"{sorted(r.methods - {'HEAD', 'OPTIONS'})} {r.rule}"
        for r in api_rules(app)
        if operation_of(app.view_functions[r.endpoint]) is None
    )


class _Schemas:
    """Collects component schemas; models become ``$ref``s, other types inline schemas."""

    def __init__(self, extra: dict[str, dict[str, Any]] | None = None) -> None:
        self.models: dict[type[BaseModel], None] = {}
        self.extra = extra or {}

    def ref(self, tp: Any) -> dict[str, Any]:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            self.models[tp] = None
            return {"$ref": REF.format(model=tp.__name__)}
        if isinstance(tp, dict):
            return tp
        return TypeAdapter(tp).json_schema(ref_template=REF)

    def components(self) -> dict[str, Any]:
        _, top = models_json_schema([(m, "serialization") for m in self.models], ref_template=REF)
        return dict(sorted((top.get("$defs", {}) | self.extra).items()))


def _error(status: int) -> dict[str, Any]:
    return {
        "description": ERROR_TEXT.get(status, "Error"),
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}},
    }


def _parameters(
    rule: Any, query: type[BaseModel] | None, path: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in sorted(rule.arguments):
        converter = rule._converters[name]  # werkzeug keeps converters per argument
        kind = {"IntegerConverter": "integer"}.get(type(converter).__name__, "string")
        schema: dict[str, Any] = {"type": kind}
        if kind == "string":
            schema |= {"minLength": 1, "maxLength": 200}
        schema |= path.get(name, {})
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if query is not None:
        full = query.model_json_schema(ref_template=REF)
        required = set(full.get("required", []))
        for name, prop in full.get("properties", {}).items():
            prop = dict(prop)
            description = prop.pop("description", None)
            prop.pop("title", None)
            param: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": prop,
            }
            if description:
                param["description"] = description
            params.append(param)
    return params


def _security(permission: Permission | str | None) -> list[dict[str, list[str]]]:
    if permission == PUBLIC:
        return []
    return [{"apiKey": []}, {"session": []}]


def _path_template(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-zA-Z_][a-zA-Z0-9_]*)>", r"{\1}", rule)


def features_schema(
    scorer: CompiledScorer | None,
    task: str = STAY_TASK,
    nameable: Mapping[str, Collection[str]] | None = None,
) -> dict[str, Any]:
    """The flat feature object of ``task``'s champion loaded now: its exact names, numbers
    or null, categories from the fitted encoder; unknown names are refused (422), and so is
    an age below the task's population (its minimum here).

    ``nameable``: per categorical feature, the values this public document may name
    (``Predictor.nameable_categories``: held by enough training stays); a feature with
    rarer values names only those in its enum and says how many more it accepts. None:
    every value is named."""
    if scorer is None:
        return {
            "type": "object",
            "description": "no champion is loaded: scoring answers 503",
            "additionalProperties": {"type": ["number", "string", "null"]},
        }
    spec = TASKS.get(task)
    population = spec.population if spec is not None else None
    properties: dict[str, Any] = {}
    for name in scorer.feature_names:
        categories = scorer.categories.get(name)
        if categories is None:
            properties[name] = {
                "type": ["number", "null"],
                "minimum": -MAX_ABS_VALUE,
                "maximum": MAX_ABS_VALUE,
            }
            if spec is not None and spec.name == STAY_TASK:
                bounds = feature_bounds(name)
                if "exclusiveMinimum" in bounds:
                    del properties[name]["minimum"]
                properties[name] |= bounds
        else:
            allowed = [
                c
                for c in categories
                if isinstance(c, str) or (isinstance(c, int | float) and math.isfinite(c))
            ]
            properties[name] = _categorical(
                allowed, None if nameable is None else nameable.get(name, ())
            )
    if (
        population is not None
        and population.min_age_years is not None
        and population.age_feature in properties
    ):
        properties[population.age_feature] |= {
            "minimum": population.min_age_years,
            "description": f"the model scores {population.label}",
        }
    timed = spec is not None and bool(spec.all_landmarks_h)
    if timed and TIME_FEATURE in properties:
        # POST /predict refuses hours before admission (a 422 at this feature).
        properties[TIME_FEATURE] |= {"minimum": 0, "description": "hours since admission"}
    return {
        "type": "object",
        "description": "the champion's input features; null or absent = not measured "
        "(imputed and listed under `missing`)",
        "properties": properties,
        "additionalProperties": False,
    }


def _categorical(allowed: list[Any], nameable: Collection[str] | None) -> dict[str, Any]:
    """A categorical feature's schema: an enum of the values the document may name. The
    rarer ones the model also accepts are counted in the description, not named, so the
    server accepts a little more than the document admits, never less."""
    shown = [c for c in allowed if nameable is None or str(c) in nameable]
    schema: dict[str, Any] = {"enum": [*shown, None]}
    hidden = len(allowed) - len(shown)
    if hidden:
        schema["description"] = (
            f"one of the {len(allowed)} values the model was trained on: the {hidden} held by"
            f" fewer than {MIN_CATEGORY_COUNT} training stays are accepted too but not named"
            " in this public document (GET /api/v1/models/{version} lists them)"
        )
    return schema


def task_schemas(
    scorers: Mapping[str, CompiledScorer],
    nameable: Mapping[str, Mapping[str, Collection[str]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """``TaskFeatures`` and ``TaskBatch``: the ``{"task", "features"}`` and ``{"task",
    "rows"}`` bodies, one exact variant per task whose champion is loaded (its features
    in ``Features_<task>``, ':' read as '.'), so that every variant the document admits
    can be scored.
    ``PredictPatient`` names the stay task and, of the other tasks that score a stored
    patient, those whose champion is loaded."""
    patient = schemas.PredictPatient.model_json_schema(ref_template=REF)
    task_field = patient["properties"]["task"]
    task_field.pop("const", None)
    task_field["enum"] = [
        t for t in schemas.PATIENT_TASKS if t == schemas.PATIENT_TASKS[0] or t in scorers
    ]
    extra: dict[str, dict[str, Any]] = {"PredictPatient": patient}
    features: list[dict[str, Any]] = []
    batches: list[dict[str, Any]] = []
    for task, scorer in sorted(scorers.items()):
        # Component names allow letters, digits, '.', '-' and '_' only: a named task
        # file's task (tabular:sepsis) is Features_tabular.sepsis.
        component = f"Features_{task.replace(':', '.')}"
        ref = {"$ref": REF.format(model=component)}
        named = None if nameable is None else nameable.get(task, {})
        extra[component] = features_schema(scorer, task, named) | {
            "description": f"the {task} champion's input features; null or absent = not "
            "measured (imputed and listed under `missing`)"
        }
        task_const = {"const": task, "description": "the task whose champion scores this"}
        features.append(_closed({"task": task_const, "features": ref}))
        rows = {"type": "array", "minItems": 1, "maxItems": schemas.MAX_BATCH_ROWS, "items": ref}
        batches.append(_closed({"task": task_const, "rows": rows}))
    if not scorers:
        unavailable = {
            "type": "object",
            "description": "no champion is loaded: scoring answers 503",
            "properties": {"task": {"enum": sorted(TASKS)}},
            "required": ["task"],
        }
        return extra | {"TaskFeatures": unavailable, "TaskBatch": unavailable}
    extra["TaskFeatures"] = {"oneOf": features}
    extra["TaskBatch"] = {"oneOf": batches}
    return extra


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def build_document(
    app: Flask,
    *,
    rate_limited: bool = True,
    scorer: CompiledScorer | None = None,
    task_scorers: Mapping[str, CompiledScorer] | None = None,
    nameable: Mapping[str, Mapping[str, Collection[str]]] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every ``/api/v1`` route of ``app``.

    ``scorer`` is the icu-mortality champion's: its features become the ``Features``
    schema, so the document tells a caller exactly which inputs ``POST /predict`` accepts
    today. ``task_scorers``: every loaded champion by task (that one included), for the
    bodies that name their task. ``nameable``: by task, the category values the document
    may name (:func:`features_schema`).
    """
    named = None if nameable is None else nameable.get(STAY_TASK, {})
    registry = _Schemas(
        {"Features": features_schema(scorer, STAY_TASK, named)}
        | task_schemas(task_scorers or {}, nameable)
    )
    registry.ref(schemas.ErrorResponse)
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(api_rules(app), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        op = operation_of(view)
        if op is None:
            continue  # undocumented_routes() reports it; the test fails on it
        permission = declared_permission(view)
        protected = permission != PUBLIC
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            responses: dict[str, Any] = {
                str(op.status): {
                    "description": "OK" if op.status < 300 else "Created",
                    "content": {op.media_type: {"schema": registry.ref(op.response)}},
                }
            }
            codes = set(op.errors)
            if protected:
                codes |= {401, 403}
                if rate_limited:
                    codes.add(429)
            if op.body is not None:
                codes |= {400, 413, 422}
            codes.add(422)  # every route refuses query parameters it does not declare
            if rule.arguments:
                codes.add(404)
            if op.needs_model:
                codes.add(503)
            for code in sorted(codes):
                responses[str(code)] = _error(code)
            doc: dict[str, Any] = {
                "operationId": rule.endpoint.replace(".", "_"),
                "summary": op.summary,
                "tags": list(op.tags or (rule.endpoint.split(".")[0],)),
                "parameters": _parameters(rule, op.query, op.path),
                "responses": responses,
                "security": _security(permission),
            }
            description = op.description or (view.__doc__ or "").strip()
            if isinstance(permission, Permission):
                description += (
                    f"\n\nNeeds permission `{permission.value}` ({DESCRIPTIONS[permission]})."
                )
            doc["description"] = description.strip()
            if op.body is not None:
                doc["requestBody"] = {
                    "required": op.body_required,
                    "content": {"application/json": {"schema": registry.ref(op.body)}},
                }
            for model in op.models:
                registry.ref(model)
            paths.setdefault(_path_template(rule.rule), {})[method.lower()] = doc
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vitalcast API",
            "version": __version__,
            "description": (
                "Real-time clinical risk prediction. Authenticate with an API key "
                "(`Authorization: Bearer <key>`, created by an admin) or a signed-in "
                "session. Errors always have the shape `ErrorResponse`. Guide: docs/api.md."
            ),
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": registry.components(),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: `vitalcast apikeys create --role ROLE` "
                    "or the admin pages",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "vitalcast_session",
                    "description": "Signed-in browser session; unsafe methods need the "
                    "X-CSRF-Token header",
                },
            },
        },
    }


openapi = Blueprint("openapi", __name__)

_DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@openapi.get(API_PREFIX + "/openapi.json")
@public_view
@operation("This OpenAPI 3.1 document", {"type": "object"}, tags=("meta",))
def openapi_json() -> Response:
    """The API description (no patient data; public so that integrators can read it)."""
    state = get_state()
    predictor = state.predictor
    champions = dict(state.task_champions)
    if predictor is not None:
        champions[predictor.task] = predictor
    key = tuple(sorted((task, p.model_version_id) for task, p in champions.items()))
    cached = current_app.extensions.get("vitalcast_openapi")
    if cached is None or cached[0] != key:  # rebuilt when a champion changes
        rate_limited = "vitalcast_limiter" in current_app.extensions
        document = build_document(
            current_app,
            rate_limited=rate_limited,
            scorer=predictor.scorer if predictor is not None else None,
            task_scorers={task: p.scorer for task, p in champions.items()},
            nameable={task: p.nameable_categories for task, p in champions.items()},
        )
        cached = (key, document)
        current_app.extensions["vitalcast_openapi"] = cached
    return jsonify(cached[1])


def _asset(name: str) -> str:
    return resources.files("vitalcast.serving").joinpath("apidocs", name).read_text("utf-8")


@openapi.get("/api/docs")
@public_view
def docs_page() -> Response:
    """Interactive API documentation, served from this package (no CDN)."""
    response = Response(_asset("index.html"), mimetype="text/html")
    response.headers["Content-Security-Policy"] = _DOCS_CSP
    return response


@openapi.get("/api/docs/<any('docs.js', 'docs.css'):asset>")
@public_view
def docs_asset(asset: str) -> Response:
    mimetype = "text/javascript" if asset.endswith(".js") else "text/css"
    response = Response(_asset(asset), mimetype=mimetype)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response
