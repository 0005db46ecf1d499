"""Request and response schemas of ``/api/v1``: what the code validates with, and what the
OpenAPI document (:mod:`vitalcast.serving.openapi`) is generated from.

Query-parameter and body models here are the validators themselves (:func:`parse_query`,
:func:`parse_body`), so the document cannot drift from what a route accepts. Response
models describe the JSON the routes build; the schemathesis run
(tests/integration/test_openapi_conformance.py) fails when a response leaves its shape.
Every problem is reported at once, each with its location (``["query", name]``,
``["body", ...]``), as the single error shape :class:`ErrorResponse`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Annotated, Any, Literal, TypeVar, get_args

from flask import request
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from vitalcast.clinical.codes import BY_CODE, BY_KEY
from vitalcast.clinical.times import ClinicalDateTime
from vitalcast.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)

# Text that reaches a PostgreSQL query: NUL cannot be stored or compared there, so it is
# refused up front as bad input (422) instead of failing in the driver (500).
Text = Annotated[str, Field(max_length=200, pattern=r"^[^\x00]*$")]
# Names and ids in filters (units, tasks, actors, events, public ids): a plain token, so
# that stray bytes are refused (422) rather than silently matching nothing.
Token = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@/-]+$")]
Band = Literal["low", "medium", "high", "critical"]
FeatureValue = float | str | None


def pydantic_problems(exc: ValidationError, where: str) -> list[dict[str, Any]]:
    """Pydantic errors as ``{loc, msg}`` (input values left out: they may be PHI)."""
    return [{"loc": [where, *err["loc"]], "msg": err["msg"]} for err in exc.errors()]


def parse_query(model: type[M]) -> M:
    """Validate the query string against ``model``; every problem at once (422).

    A parameter given twice is refused rather than silently taking one of the values.
    """
    repeated = [
        {"loc": ["query", name], "msg": "given more than once"}
        for name in model.model_fields
        if len(request.args.getlist(name)) > 1
    ]
    try:
        parsed = model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        problems = [
            {"loc": ["query", *err["loc"]], "msg": unknown_parameter(model.model_fields)}
            if err["type"] == "extra_forbidden"
            else {"loc": ["query", *err["loc"]], "msg": err["msg"]}
            for err in exc.errors()
        ]
        raise InvalidInput("invalid query parameters", details=repeated + problems) from None
    if repeated:
        raise InvalidInput("invalid query parameters", details=repeated)
    return parsed


def unknown_parameter(known: Iterable[str]) -> str:
    """What to say about a query parameter the route does not take (a typo'd filter
    ignored would answer another question than the one asked)."""
    names = ", ".join(sorted(known))
    return f"unknown parameter; this route takes {names}" if names else "this route takes none"


def _iso_text(value: Any) -> Any:
    """Date-times as ISO 8601 text only (pydantic would read a bare number as epoch time)."""
    if isinstance(value, str) and value[:4].isdigit() and "-" in value:
        return value
    if isinstance(value, datetime):
        return value
    raise ValueError("must be an ISO 8601 date-time with a timezone")


# Also in the clinical year range (vitalcast.clinical.times): a query such as
# ?since=0001-01-01T00:00:00+14:00 is a 422, not an overflow when the driver converts it.
IsoDateTime = Annotated[ClinicalDateTime, BeforeValidator(_iso_text)]


def parse_body(model: type[M], body: Any) -> M:
    """Validate an already parsed JSON body against ``model``; every problem at once (422)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput("invalid request body", details=pydantic_problems(exc, "body")) from None


# --- errors -------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """One problem: where (``loc``, from ``query``/``body``/``path``) and what."""

    model_config = ConfigDict(extra="allow")
    loc: list[str | int] = Field(default_factory=list)
    msg: str


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. invalid_input")
    message: str
    details: list[ErrorDetail]
    request_id: str | None = Field(description="quote it when reporting a problem")


class ErrorResponse(BaseModel):
    """The one error shape of every API route."""

    error: ErrorBody


# --- query parameters -----------------------------------------------------------------------


class _Query(BaseModel):
    # Unknown parameters are refused (422), not dropped: ?unti=MICU would list every unit.
    model_config = ConfigDict(extra="forbid")


class PatientsQuery(_Query):
    limit: int = Field(50, ge=1, le=500, description="page size")
    offset: int = Field(0, ge=0, le=10_000_000)
    unit: Token | None = Field(None, description="only stays on this unit, e.g. MICU")


class HistoryQuery(_Query):
    limit: int = Field(500, ge=1, le=5000)
    task: PatientTask = Field(
        "icu-mortality",
        description="whose risks: the stays' (icu-mortality) or the discharges' (readmission-30d)",
    )
    since: IsoDateTime | None = Field(None, description="ISO 8601 with a timezone")


class ObservationsQuery(_Query):
    limit: int = Field(
        5000, ge=1, le=50000, description="at most this many, the newest (listed oldest first)"
    )
    since: IsoDateTime | None = Field(None, description="ISO 8601 with a timezone")
    code: Text | None = Field(
        None,
        description="LOINC code or variable key, e.g. 8867-4 or hr",
        json_schema_extra={"enum": [*sorted(BY_CODE), *sorted(BY_KEY), None]},
    )

    @field_validator("code")
    @classmethod
    def _known_code(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value in BY_KEY:
            return BY_KEY[value].code
        if value not in BY_CODE:
            raise ValueError("unknown code")
        return value


class AuditQuery(_Query):
    limit: int = Field(100, ge=1, le=1000)
    actor: Token | None = Field(None, description="e.g. user:alice or api_key:ehr")
    patient_id: Token | None = None
    event: Token | None = Field(None, description="e.g. prediction.served")


class PredictQuery(_Query):
    explain: bool = Field(True, description="compute the top contributing factors")


class BatchQuery(_Query):
    explain: bool = Field(
        False, description=f"add top factors to each row (at most {100} rows then)"
    )


class ModelsQuery(_Query):
    task: Token | None = Field(None, description="only this task, e.g. icu-mortality")


# --- request bodies -------------------------------------------------------------------------


# The tasks that score a stored patient, the stay task first (the default).
PatientTask = Literal["icu-mortality", "readmission-30d"]
PATIENT_TASKS: tuple[str, ...] = get_args(PatientTask)


class PredictPatient(BaseModel):
    """Score a stored patient from what vitalcast holds: the current stay's observations
    (`icu-mortality`, the default), or the latest discharge and the encounters before it
    (`readmission-30d`)."""

    model_config = ConfigDict(extra="forbid")
    task: PatientTask = Field(
        default="icu-mortality", description="the task whose champion scores the patient"
    )
    patient_id: Token = Field(description="the public id of a stored patient")


PredictFeatures = dict[str, FeatureValue]
"""A flat object of the champion's features (names: ``GET /api/v1/models/{version}``);
null or absent = not measured (imputed, listed under ``missing``)."""

MAX_BATCH_ROWS = 10_000
MAX_EXPLAINED_ROWS = 100


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, FeatureValue]] = Field(
        description=f"1 to {MAX_BATCH_ROWS} flat feature objects (413 above)",
        json_schema_extra={
            "minItems": 1,
            "maxItems": MAX_BATCH_ROWS,
            "items": {"$ref": "#/components/schemas/Features"},
        },
    )


class DeviceBinding(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: Text
    encounter_id: Text | None = None


# --- responses ------------------------------------------------------------------------------


class Factor(BaseModel):
    feature: str
    label: str
    value: float | str | None
    contribution: float = Field(description="log-odds contribution")
    direction: str
    text: str | None = Field(
        None,
        description='the factor in clinical words with its value and unit, e.g. "Lactate,'
        ' latest (this stay): 4.1 mmol/L" (absent in factors stored before it existed)',
    )


class EarlyInStay(BaseModel):
    hours: float = Field(description="hours after admission the risk was scored at")
    first_landmark_h: float = Field(description="the earliest hour the model is calibrated at")


class PredictionResult(BaseModel):
    id: str
    probability: float = Field(ge=0, le=1)
    band: Band
    threshold: float
    model_version: str
    task: str
    as_of: datetime
    data_freshness_at: datetime | None = Field(description="newest observation used")
    factors: list[Factor]
    missing: list[str] = Field(description="inputs absent or null, imputed by the model")
    early: EarlyInStay | None = Field(
        description="set when the risk was scored before the model's first calibrated hour"
        " of the stay (from the stay's admission, or from hours_since_admission in a feature"
        " vector): a provisional risk resting on very few observations"
    )
    request_id: str | None


class BatchRow(BaseModel):
    index: int
    probability: float = Field(ge=0, le=1)
    band: Band
    missing: list[str]
    factors: list[Factor] | None = Field(description="null unless ?explain=true")


class BatchResult(BaseModel):
    batch_id: str
    model_version: str
    task: str
    threshold: float
    count: int
    items: list[BatchRow]
    request_id: str | None


class WardRisk(BaseModel):
    probability: float
    band: Band
    as_of: datetime | None
    data_freshness_at: datetime | None
    missing_inputs: int = Field(description="how many inputs were imputed")


class WardRow(BaseModel):
    id: str
    encounter_id: str
    unit: str | None
    age_years: int | None
    sex: str | None
    admitted_at: datetime
    identifiers: dict[str, Any] | None = Field(description="only for identifiers:read")
    risk: WardRisk | None
    outside_population: str | None = Field(
        description="why the stay model does not score this encounter (null: it does)"
    )


class WardPage(BaseModel):
    items: list[WardRow]
    total: int
    limit: int
    offset: int


class StoredPrediction(BaseModel):
    id: str
    probability: float
    band: Band
    as_of: datetime
    created_at: datetime
    data_freshness_at: datetime | None
    model_version: str | None
    factors: list[Factor]
    missing: list[str]


class DischargeRisk(StoredPrediction):
    encounter_id: str | None = Field(description="the discharged encounter scored")
    threshold: float


class EncounterSummary(BaseModel):
    id: str
    unit: str | None
    kind: str | None
    admitted_at: datetime
    discharged_at: datetime | None
    age_years: float | None
    height_cm: float | None
    weight_kg: float | None
    outside_population: str | None = Field(
        description="why the stay model does not score this encounter (null: it does)"
    )


class ConditionItem(BaseModel):
    system: str | None
    code: str
    display: str | None
    onset_at: datetime | None
    onset_date: date | None = Field(
        description="the onset when the source gave a day alone (onset_at is then null)"
    )


class StudyItem(BaseModel):
    study_uid: str
    modality: str | None
    body_part: str | None
    started_at: datetime | None
    started_date: date | None = Field(
        description="the start when the source gave a day alone (started_at is then null)"
    )
    description: str | None
    series: int | None
    instances: int | None


class PatientDetail(BaseModel):
    id: str
    sex: str | None
    identifiers: dict[str, Any] | None = Field(description="only for identifiers:read")
    encounter: EncounterSummary | None
    risk: StoredPrediction | None
    threshold: float | None
    readmission: DischargeRisk | None = Field(
        description="readmission within 30 days of the latest discharge, when a"
        " readmission-30d champion is loaded and that discharge is in its cohort"
    )
    conditions: list[ConditionItem]
    imaging_studies: list[StudyItem]


class PredictionHistory(BaseModel):
    items: list[StoredPrediction]


class ObservationItem(BaseModel):
    code: str
    key: str | None
    label: str
    value: float | None
    value_text: str | None
    unit: str | None
    effective_at: datetime
    source: str | None


class QuarantinedItem(BaseModel):
    code: str | None
    effective_at: datetime | None
    reason_code: str
    reason: str | None
    source: str | None


class ObservationList(BaseModel):
    items: list[ObservationItem]
    quarantined: list[QuarantinedItem]


class RescoredItem(BaseModel):
    prediction_id: str
    probability: float
    band: Band


class IngestResult(BaseModel):
    report: dict[str, Any] = Field(description="received = stored + duplicates + quarantined")
    rescored: list[RescoredItem]


class BindingResult(BaseModel):
    device_id: str
    bound_at: datetime


class UnbindingResult(BaseModel):
    device_id: str
    unbound_at: datetime | None


class ModelSummary(BaseModel):
    """Registry metadata of one model version (no patient data)."""

    version: str
    task: str
    alias: Literal["champion", "challenger", "retired", "withdrawn"] | None = Field(
        description="champion serves, challenger scores in shadow; retired: a former"
        " champion a rollback may restore; withdrawn: rolled back from"
    )
    threshold: float
    metrics: dict[str, Any]
    sha256: str = Field(description="of the artifact, verified at every load")
    created_at: datetime
    promoted_at: datetime | None


class ModelDetail(ModelSummary):
    loaded: bool = Field(description="this process serves it now (champion or challenger)")
    feature_names: list[str] | None = Field(description="inputs of POST /predict when loaded")
    categories: dict[str, list[Any]] | None = Field(
        description="allowed values of categorical inputs when loaded"
    )


class ModelList(BaseModel):
    items: list[ModelSummary]


class UserItem(BaseModel):
    username: str
    role: str
    units: list[str]
    active: bool
    locked: bool
    last_login_at: datetime | None


class UserList(BaseModel):
    items: list[UserItem]


class AuditItem(BaseModel):
    id: int
    occurred_at: datetime
    event: str
    action: str
    outcome: str
    actor: str | None
    role: str | None
    patient_id: str | None
    resource: str | None
    request_id: str | None
    hash: str | None


class AuditList(BaseModel):
    items: list[AuditItem]


class MonitoringSummary(BaseModel):
    model_config = ConfigDict(extra="allow")
    task: str
    drift: dict[str, Any] | None
    monitor_run: dict[str, Any] | None
    alerts: list[dict[str, Any]]


class AlertList(BaseModel):
    items: list[dict[str, Any]]
