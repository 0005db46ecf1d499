"""CDS Hooks 2.0: the way EHRs (Epic, Oracle Health/Cerner, ...) ask for decision support.

``GET /cds-services`` describes the services; ``POST /cds-services/<id>`` answers the
``patient-view`` hook with a card holding the current risk, its trend and top factors;
``POST /cds-services/<id>/feedback`` stores what the clinician did with the card.
Spec: https://cds-hooks.hl7.org/2.0/

Who may call: an EHR with a JWT it signed (see :mod:`.cds_auth`, wired into the request
guard), and API keys or sessions whose role may score. Only a signed request may make
vitalcast read the EHR's FHIR server (``fhirServer``, with ``fhirAuthorization``): the EHR
that signed it names its own server. Anyone else must send the data in the prefetch, or
gets 412, which the spec prescribes when a service cannot obtain the data it needs.
:mod:`.cds_fhir` checks the server and keeps the token on it.

What is scored: the stay in progress, built as training builds stays. The current
Encounter (``context.encounterId`` when the EHR gives it, else the patient's in-progress
encounter that started last) gives the admission time and the unit (through the FHIR
ingestion adapter's mapping); observations before admission, or of another encounter, are
dropped; height and the weight charted at admission are the stay's descriptors, by the
feature code's own rule (as for stored stays). Resources pass through the same FHIR
adapter and preprocessing rules as ingested data, and features through the same function
as training. Without an encounter in progress the card says so and carries no risk; so
does it for an encounter outside the model's population (an ambulatory or emergency
encounter, a patient younger than the training data's: :class:`.tasks.Population`).

What cannot be used is said, never guessed at: a malformed request or prefetch is a 400
naming each problem and its place (:mod:`.cds_prefetch`), an unusable answer of
``fhirServer`` a 412, and observations left out of the score are counted on the card.

Every answer and every failure is audited (``cds.patient-view``); the EHR's patient id is
recorded as the store's public id when the store knows the patient, else as a keyed hash.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select

from vitalcast.clinical.records import EncounterRecord, ObservationRecord, PatientRecord
from vitalcast.clinical.tables import Patient
from vitalcast.clinical.times import TimeOutOfRange, parse_iso, to_utc
from vitalcast.db.base import utcnow
from vitalcast.errors import (
    AppError,
    BadRequest,
    ModelUnavailable,
    NotFound,
    PreconditionFailed,
)
from vitalcast.features import StayInput, stay_features
from vitalcast.ingest.validate import Invalid, check_encounter, check_observation
from vitalcast.modeling.tables import Prediction
from vitalcast.modeling.tasks import early_in_stay
from vitalcast.security.permissions import Permission, public, requires
from vitalcast.serving.cds_fhir import (
    PAGE_SIZE,
    FhirReader,
    Network,
    bundle_resources,
    check_fhir_server,
    next_link,
    parse_networks,
)
from vitalcast.serving.cds_prefetch import (
    counts_as_left_out,
    entry_index,
    parse_resources,
    prefetch_problems,
    read_patient,
    rejection_text,
)
from vitalcast.serving.context import audit_event, current_principal, db
from vitalcast.serving.predictor import Predictor
from vitalcast.serving.scoring import outside_population, record_prediction, served_population
from vitalcast.serving.state import get_state
from vitalcast.serving.tables import CdsFeedback
from vitalcast.serving.validation import json_body

logger = logging.getLogger(__name__)

cds = Blueprint("cds", __name__)

SERVICE_ID = "vitalcast-icu-mortality"
_INDICATOR = {"low": "info", "medium": "info", "high": "warning", "critical": "critical"}
# FHIR R4 id: https://hl7.org/fhir/R4/datatypes.html#id. Ids go into request paths.
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_HOOK_INSTANCE = re.compile(r"^[\x20-\x7e]{1,100}$")
_ABSENT: Any = object()  # a prefetch key the EHR did not satisfy


def _usage() -> str:
    """Whom the service scores in this deployment, as the EHR's service catalogue shows
    it: "ICU and hospital stays of patients aged 15 or over[ on units MICU, SICU]"."""
    population = served_population(get_state().settings)
    return population.label if population is not None else "Adult ICU patients"


def discovery_document() -> dict[str, Any]:
    """The services and their prefetch templates.

    Prefetch tokens can only carry context fields, not the admission time, so the
    observation template cannot ask for "since admission": it asks for the newest
    observations, and the service drops those before admission. A paged answer (a
    ``next`` link) is replaced by a search since admission on ``fhirServer`` when the
    request is signed, else refused with 412, never scored from part of the stay.
    """
    return {
        "services": [
            {
                "hook": "patient-view",
                "id": SERVICE_ID,
                "title": "vitalcast ICU mortality risk",
                "description": "Calibrated risk of in-hospital death from the ICU stay's "
                "vital signs and laboratory results so far, with its main reasons.",
                "prefetch": {
                    "patient": "Patient/{{context.patientId}}",
                    "encounters": "Encounter?patient={{context.patientId}}&status=in-progress",
                    "observations": "Observation?patient={{context.patientId}}"
                    f"&_sort=-date&_count={PAGE_SIZE}",
                },
                "usageRequirements": f"{_usage()}; decision support only.",
            }
        ]
    }


@cds.get("")
@public
def discovery() -> Response:
    """The CDS Hooks discovery document."""
    return jsonify(discovery_document())


@dataclass(frozen=True)
class HookRequest:
    hook_instance: str
    patient_id: str
    encounter_id: str | None
    fhir_server: str | None
    access_token: str | None
    prefetch: dict[str, Any]


def _parse_hook(body: Any) -> HookRequest:
    """The request, or 400 listing every problem with its place (``loc``).

    A malformed request, prefetch included (see :mod:`.cds_prefetch`), is the caller's
    error: 400, as CDS Hooks services answer a request they cannot parse. 412 stays for
    data that is missing and cannot be read from ``fhirServer``.
    """
    problems: list[dict[str, Any]] = []
    if not isinstance(body, dict):
        raise BadRequest(
            "a CDS Hooks request is a JSON object",
            details=[{"loc": ["body"], "msg": "must be an object"}],
        )
    if body.get("hook") != "patient-view":
        problems.append({"loc": ["body", "hook"], "msg": "this service answers patient-view"})
    hook_instance = body.get("hookInstance")
    if not isinstance(hook_instance, str) or not _HOOK_INSTANCE.fullmatch(hook_instance):
        # It is audited: at most 100 printable characters (a UUID in practice).
        problems.append(
            {
                "loc": ["body", "hookInstance"],
                "msg": "required string of 1-100 printable characters",
            }
        )
    raw_context = body.get("context")
    context: dict[str, Any] = raw_context if isinstance(raw_context, dict) else {}
    patient_id = context.get("patientId")
    if not isinstance(patient_id, str) or not _FHIR_ID.fullmatch(patient_id):
        problems.append({"loc": ["body", "context", "patientId"], "msg": "required FHIR id"})
    encounter_id = context.get("encounterId")
    if encounter_id is not None and (
        not isinstance(encounter_id, str) or not _FHIR_ID.fullmatch(encounter_id)
    ):
        problems.append({"loc": ["body", "context", "encounterId"], "msg": "must be a FHIR id"})
    prefetch = body.get("prefetch")
    if prefetch is None:
        prefetch = {}
    elif isinstance(prefetch, dict):
        valid_id = (
            patient_id if isinstance(patient_id, str) and _FHIR_ID.fullmatch(patient_id) else None
        )
        problems += prefetch_problems(prefetch, valid_id)
    else:
        problems.append({"loc": ["body", "prefetch"], "msg": "must be an object"})
        prefetch = {}
    server = body.get("fhirServer")
    if server is not None and not isinstance(server, str):
        problems.append({"loc": ["body", "fhirServer"], "msg": "must be a URL string"})
    auth = body.get("fhirAuthorization")
    token = auth.get("access_token") if isinstance(auth, dict) else None
    if auth is not None and not (isinstance(token, str) and token):
        # A token that is not a string would be dropped, and the server read without it.
        problems.append(
            {
                "loc": ["body", "fhirAuthorization", "access_token"],
                "msg": "required string (fhirAuthorization is an object with access_token)",
            }
        )
    if auth is not None and server is None:
        # CDS Hooks 2.0 (cds-r-1): fhirAuthorization is only ever given with fhirServer.
        problems.append({"loc": ["body", "fhirServer"], "msg": "required with fhirAuthorization"})
    if problems:
        raise _bad_request("the CDS Hooks request has problems", problems)
    return HookRequest(
        str(hook_instance),
        str(patient_id),
        str(encounter_id) if encounter_id else None,
        str(server) if isinstance(server, str) else None,
        str(token) if isinstance(token, str) and token else None,
        prefetch,
    )


def _bad_request(what: str, problems: list[dict[str, Any]]) -> BadRequest:
    """400 with every problem in ``details``, and the first one, with its place, in the
    message: an EHR's log often keeps only the message."""
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return BadRequest(f"{what}: {where}: {first['msg']}{more}", details=problems)


def _prefetched(prefetch: dict[str, Any], key: str) -> Any:
    """A prefetch value: None when the EHR had no data (the spec's ``null``), or
    :data:`_ABSENT` when it did not satisfy the key (missing, or an OperationOutcome,
    which CDS Hooks 2.0 lets a client send when its prefetch failed). Any other value
    passed :func:`.cds_prefetch.prefetch_problems`: a Patient, or a well-formed Bundle."""
    if key not in prefetch:
        return _ABSENT
    value = prefetch[key]
    if value is None:
        return None
    if value.get("resourceType") == "OperationOutcome":
        return _ABSENT
    return value


@dataclass(frozen=True)
class _Fetched:
    """The resources of one prefetch key, and where they came from.

    A resource that cannot be used is the caller's error when the request carried it (400,
    with its place in the prefetch) and the EHR server's when vitalcast read it from
    ``fhirServer`` (412: the data the answer needs cannot be obtained).
    """

    key: str
    what: str  # names the search in messages, as :class:`.cds_fhir.FhirReader` does
    resources: list[dict[str, Any]]
    prefetched: bool

    def unusable(self, index: int | None, message: str) -> AppError:
        """The error for ``resources[index]`` (or the whole answer): ``message`` is a noun
        phrase naming what is wrong, by FHIR path and rule, never by value."""
        if not self.prefetched:
            return PreconditionFailed(
                f"the EHR's FHIR server answered the {self.what} with {message}"
            )
        loc: list[Any] = ["body", "prefetch", self.key]
        where = f"prefetch.{self.key}"
        if index is not None:
            loc += ["entry", index, "resource"]
            where += f".entry[{index}]"
        return BadRequest(f"{where} holds {message}", details=[{"loc": loc, "msg": message}])


class _Sources:
    """Where the hook's data comes from: the prefetch first, then ``fhirServer``.

    The reader is made on first need, and only for a request signed by a trusted EHR.
    """

    def __init__(
        self, hook: HookRequest, *, signed: bool, env: str, networks: tuple[Network, ...] = ()
    ) -> None:
        self.hook = hook
        self.signed = signed
        self.env = env
        self.networks = networks
        self.read_server = False
        self._reader: FhirReader | None = None

    def reader(self, what: str) -> FhirReader:
        if self._reader is None:
            if self.hook.fhir_server is None:
                raise PreconditionFailed(
                    f"the prefetch lacks the {what} and the request names no fhirServer"
                )
            if not self.signed:
                raise PreconditionFailed(
                    f"the prefetch lacks the {what}; vitalcast reads fhirServer only for"
                    " requests signed by a trusted EHR (a CDS Hooks JWT), so send the"
                    " prefetch (see the discovery document)"
                )
            target = check_fhir_server(self.hook.fhir_server, env=self.env, networks=self.networks)
            self._reader = FhirReader(target, self.hook.access_token)
            self.read_server = True
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def patient(self, today: date) -> PatientRecord:
        """The patient in context, as the FHIR adapter maps it.

        A prefetched Patient was checked with the request (:func:`_parse_hook`); one read
        from ``fhirServer`` is checked here by the same rules.
        """
        value = _prefetched(self.hook.prefetch, "patient")
        prefetched = value is not _ABSENT
        if not prefetched:
            value = self.reader("Patient resource").read(
                "Patient resource", f"Patient/{self.hook.patient_id}"
            )
        if value is None:
            raise PreconditionFailed("the EHR has no Patient resource for the patient in context")
        if value.get("resourceType") != "Patient" or value.get("id") != self.hook.patient_id:
            raise PreconditionFailed("the Patient resource is not the patient in context")
        record, problems = read_patient(value, today)
        if record is None:
            fetched = _Fetched("patient", "Patient resource", [value], prefetched)
            raise fetched.unusable(None, f"a Patient that cannot be used ({'; '.join(problems)})")
        return record

    def encounters(self) -> _Fetched:
        """Candidate Encounters: the prefetched in-progress ones, else read from the server."""
        value = _prefetched(self.hook.prefetch, "encounters")
        what = "in-progress Encounter search"
        if value is None:
            return _Fetched("encounters", what, [], prefetched=True)
        if value is not _ABSENT:
            if next_link(value) is None:
                return _Fetched("encounters", what, bundle_resources(value), prefetched=True)
            return _Fetched("encounters", what, self.reader(what).follow(what, value), False)
        reader = self.reader(what)
        if self.hook.encounter_id:
            found = reader.read("Encounter resource", f"Encounter/{self.hook.encounter_id}")
            return _Fetched("encounters", "Encounter resource", [found], prefetched=False)
        params = {"patient": self.hook.patient_id, "status": "in-progress", "_count": "100"}
        return _Fetched("encounters", what, reader.search(what, "Encounter", params), False)

    def observations(self, admitted_at: datetime) -> _Fetched:
        """The stay's observations: the prefetch when complete, else a search since
        admission, newest first (so that the recent windows are what a cap would keep)."""
        value = _prefetched(self.hook.prefetch, "observations")
        what = "Observation search"
        if value is None:
            return _Fetched("observations", what, [], prefetched=True)
        if value is not _ABSENT and next_link(value) is None:
            return _Fetched("observations", what, bundle_resources(value), prefetched=True)
        since = admitted_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        params = {
            "patient": self.hook.patient_id,
            "date": f"ge{since}",
            "_sort": "-date",
            "_count": str(PAGE_SIZE),
        }
        found = self.reader(what).search(what, "Observation", params)
        return _Fetched("observations", what, found, prefetched=False)


# Why the admission time of the stay breaks the ingestion rules (check_encounter's codes).
_ADMISSION_RULES = {
    "future_time": "an admission time in the future",
    "before_birth": "an admission time before the patient's birth",
    "naive_time": "an admission time without a timezone",
    "discharge_before_admission": "a discharge time before its admission time",
}


def _current_encounter(
    fetched: _Fetched, patient: PatientRecord, encounter_id: str | None, now: datetime
) -> EncounterRecord | None:
    """The stay to score: the context's encounter if in progress, else the in-progress
    encounter of this patient that started last (an ICU stay inside a hospital stay
    starts after it). Mapped by the FHIR ingestion adapter (admission time, unit).

    Raises:
        BadRequest, PreconditionFailed: an in-progress candidate cannot be read, belongs to
            another patient, or breaks the ingestion rules on times (see
            :meth:`_Fetched.unusable`). Passing over it would answer "no stay in
            progress", or score another stay, without a word.
    """
    candidates = [
        (i, r)
        for i, r in enumerate(fetched.resources)
        if r.get("resourceType") == "Encounter"
        and r.get("status") == "in-progress"
        and (encounter_id is None or r.get("id") == encounter_id)
    ]
    batch = parse_resources([r for _i, r in candidates])

    def index(location: str) -> int | None:
        k = entry_index(location)
        return candidates[k][0] if k is not None and k < len(candidates) else None

    for rejected in batch.rejected:
        why = rejection_text(rejected, "Encounter")
        raise fetched.unusable(
            index(rejected.location), f"an in-progress Encounter that cannot be read ({why})"
        )
    for record in batch.encounters:
        if record.patient_ref != patient.ref:
            raise fetched.unusable(
                index(record.source_ref), "an in-progress Encounter of another patient"
            )
    current = max(batch.encounters, key=lambda e: (e.admitted_at, e.ref), default=None)
    if current is not None:
        try:
            check_encounter(current, now=now, born_on=patient.birth_date)
        except Invalid as exc:
            why = _ADMISSION_RULES.get(exc.code, exc.code)
            raise fetched.unusable(
                index(current.source_ref), f"an in-progress Encounter with {why}"
            ) from None
    return current


def _age_at(born: date | None, when: datetime) -> float | None:
    """Age in completed years at admission, as training's stays carry it (PhysioNet's
    Age descriptor, the store's encounter age): not a fraction, not at scoring time."""
    if born is None:
        return None
    day = when.astimezone(UTC).date()
    return float(day.year - born.year - ((day.month, day.day) < (born.month, born.day)))


def stay_from_records(
    patient: PatientRecord | None,
    encounter: EncounterRecord,
    observations: list[ObservationRecord],
    now: datetime,
    left_out: Counter[str] | None = None,
) -> StayInput:
    """The feature input of ``encounter`` from FHIR-mapped records, as training sees stays.

    Observations of another patient or another encounter, failing the ingestion rules,
    or from before admission are dropped: a value from an earlier stay must not count.
    Height and admission weight stay among the observations: the feature code takes
    them from there for every stay without descriptors (the stored-patient path too).

    ``left_out`` counts the drops the card must mention (data the score goes without):
    ``implausible`` (a value, unit or time breaking the ingestion rules, or no number)
    and ``other_patient``. Codes vitalcast does not use, other stays and times before
    admission are not counted: leaving them out is what scoring this stay means.
    """
    tally: Counter[str] = Counter() if left_out is None else left_out
    patient_ref = encounter.patient_ref
    born = patient.birth_date if patient is not None else None
    kept: list[tuple[str, float, datetime]] = []
    for rec in observations:
        if rec.patient_ref != patient_ref:
            tally["other_patient"] += 1
            continue
        if rec.encounter_ref not in (None, encounter.ref):
            continue
        try:
            clean = check_observation(rec, now=now, born_on=born)
        except Invalid as exc:
            # The same rules as ingestion: implausible or unknown values do not score.
            if exc.code != "unknown_code":
                tally["implausible"] += 1
            continue
        if clean.value is None:
            tally["implausible"] += 1  # a text where the model needs a number
            continue
        if clean.effective_at < encounter.admitted_at:
            continue
        kept.append((clean.code, float(clean.value), clean.effective_at))
    kept.sort(key=lambda o: o[2])
    return StayInput(
        admitted_at=encounter.admitted_at,
        age_years=_age_at(born, encounter.admitted_at),
        sex=patient.sex if patient is not None else "unknown",
        unit=encounter.unit,
        height_cm=None,  # charted as observations: stay_features reads them from there
        weight_kg=None,
        observations=tuple(kept),
    )


def _notes(left_out: Counter[str], patient: PatientRecord) -> list[str]:
    """What the score went without, for the card: the clinician reading a risk must know
    when data the EHR holds was not part of it."""
    notes: list[str] = []
    parts = [
        f"{n} {_plural(n, 'observation')} {label}"
        for key, label in (
            ("unreadable", "that could not be read"),
            ("implausible", "outside the plausibility rules (value, unit or time)"),
            ("other_patient", "of another patient"),
        )
        if (n := left_out[key])
    ]
    if parts:
        notes.append(f"Left out of this risk: {', '.join(parts)}.")
    if patient.birth_date is None:
        notes.append("Age unknown: the Patient resource has no full birth date.")
    return notes


def _plural(n: int, word: str) -> str:
    return word if n == 1 else f"{word}s"


def _card(
    predictor: Predictor,
    prediction: Prediction,
    link: str,
    admitted_at: datetime,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    pct = round(prediction.score * 100)
    factors = prediction.explanation or []
    detail = "\n".join(
        f"- {f['label']}: {'raises' if f['contribution'] > 0 else 'lowers'} the risk"
        for f in factors[:5]
    )
    early = early_in_stay(prediction.task, admitted_at, prediction.as_of)
    caution = (
        f"Early in the stay: scored {early['hours']:.1f} h after admission, before"
        f" {early['first_landmark_h']:g} h, the earliest time the model is calibrated at;"
        " provisional.\n"
        if early
        else ""
    )
    threshold = f"{caution}Threshold {round(predictor.threshold * 100)}%."
    band = f"{prediction.band}, early" if early else prediction.band
    text = f"{threshold} Main factors:\n{detail}" if factors else threshold
    return {
        "uuid": prediction.public_id,
        "summary": f"ICU mortality risk {pct}% ({band})"[:140],
        "indicator": _INDICATOR.get(prediction.band, "info"),
        "detail": "\n\n".join([text, *(notes or [])]),
        "source": {"label": f"vitalcast ({predictor.version})", "url": link},
        "links": [{"label": "Open in vitalcast", "url": link, "type": "absolute"}],
    }


def _no_risk_card(link: str, summary: str, detail: str) -> dict[str, Any]:
    """An information card that carries no risk, and says why."""
    return {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "indicator": "info",
        "detail": detail,
        "source": {"label": "vitalcast", "url": link},
    }


def _no_stay_card(link: str, encounter_id: str | None) -> dict[str, Any]:
    """The answer when there is no stay in progress: scoring another one would be wrong."""
    which = "The encounter in context is" if encounter_id else "No encounter of this patient is"
    return _no_risk_card(
        link,
        "ICU mortality risk: no stay in progress, no risk computed",
        f"{which} in progress in the EHR. vitalcast scores the current stay only, from its"
        " admission on.",
    )


def _outside_card(link: str, reason: str) -> dict[str, Any]:
    """The answer for a stay the model may not score (an outpatient visit, a child): a
    risk from a model trained on other patients would look as valid as any other."""
    return _no_risk_card(
        link,
        "ICU mortality risk: not computed for this encounter",
        f"{reason} vitalcast computes no risk outside the population its model was trained on.",
    )


@dataclass
class _Audit:
    """What the ``cds.patient-view`` audit event says, filled in as the request goes."""

    details: dict[str, Any] = field(default_factory=dict)
    patient_id: str | None = None

    def patient(self, ehr_patient_id: str) -> None:
        """Refer to the patient as the rest of the audit log does: the store's public id
        when the store holds this EHR patient (FHIR ingestion keys it ``Patient/<id>``),
        and a keyed hash of the EHR's id in any case, never the id itself."""
        self.patient_id = db().scalar(
            select(Patient.public_id).where(
                Patient.source == "fhir", Patient.source_ref == f"Patient/{ehr_patient_id}"
            )
        )
        self.details["ehr_patient"] = get_state().cipher.pseudonym("ehr-patient", ehr_patient_id)

    def write(self, service_id: str, outcome: str) -> None:
        audit_event(
            "cds.patient-view",
            "E",
            outcome=outcome,
            patient_id=self.patient_id,
            resource=f"cds/{service_id}",
            details=self.details,
        )


@contextmanager
def _audited(service_id: str) -> Iterator[_Audit]:
    """Audit the request whatever happens: a failure is rolled back (no half-written
    prediction) and its audit event committed on its own before the error answer."""
    record = _Audit(details={"client": current_principal().name})
    try:
        yield record
    except Exception as exc:
        session = db()
        session.rollback()
        if isinstance(exc, AppError):
            # Messages of this module and of cds_fhir name what failed, never a URL or id.
            record.details.update({"error": exc.code, "reason": exc.message[:300]})
        else:
            record.details["error"] = "internal_error"
        try:
            record.write(service_id, "failure")
            session.commit()
        except Exception:
            logger.exception("could not audit a failed CDS Hooks request")
            session.rollback()
        raise
    record.write(service_id, "success")


@cds.post("/<service_id>")
@requires(Permission.PREDICT)
def service(service_id: str) -> Response:
    """Answer a patient-view hook with one risk card (or one saying there is no stay)."""
    if service_id != SERVICE_ID:
        raise NotFound(f"no CDS service {service_id!r}")
    settings = get_state().settings
    link = f"{(settings.public_url or request.host_url).rstrip('/')}/ward"
    with _audited(service_id) as audit:
        body = json_body()
        hook = _parse_hook(body)
        audit.details["hookInstance"] = hook.hook_instance
        audit.patient(hook.patient_id)
        predictor = get_state().predictor
        if predictor is None:
            raise ModelUnavailable("no champion model is loaded")
        signed = current_principal().kind == "cds_client"
        sources = _Sources(
            hook,
            signed=signed,
            env=settings.env,
            networks=parse_networks(settings.cds_fhir_networks),
        )
        try:
            card = _answer(hook, sources, predictor, link, audit)
        finally:
            sources.close()
            audit.details["fhir_server_read"] = sources.read_server
    return jsonify({"cards": [card]})


def _answer(
    hook: HookRequest, sources: _Sources, predictor: Predictor, link: str, audit: _Audit
) -> dict[str, Any]:
    now = datetime.now(UTC)
    patient = sources.patient(now.date())
    encounter = _current_encounter(sources.encounters(), patient, hook.encounter_id, now)
    if encounter is None:
        audit.details["scored"] = False
        return _no_stay_card(link, hook.encounter_id)
    outside = outside_population(
        served_population(get_state().settings),
        encounter.kind,
        _age_at(patient.birth_date, encounter.admitted_at),
        encounter.unit,
    )
    if outside is not None:
        # The encounter's kind, never the age (beyond 89 an identifier under HIPAA).
        audit.details.update({"scored": False, "outside_population": encounter.kind})
        return _outside_card(link, outside)
    fetched = sources.observations(encounter.admitted_at)
    # OperationOutcomes of a search are its messages, not data (prefetch entries of other
    # types were refused with the request).
    resources = [r for r in fetched.resources if r.get("resourceType") == "Observation"]
    batch = parse_resources(resources)
    left_out: Counter[str] = Counter()
    rejections: Counter[str] = Counter()
    for rejected in batch.rejected:
        if counts_as_left_out(rejected, resources):
            left_out["unreadable"] += 1
            rejections[rejected.reason_code] += 1
    stay = stay_from_records(patient, encounter, batch.observations, now, left_out)
    if left_out:
        # Counts and rule codes only: the audit log holds no values.
        audit.details["left_out"] = dict(left_out)
        if rejections:
            audit.details["unreadable"] = dict(rejections)
    prediction = record_prediction(
        db(),
        predictor,
        stay_features(stay, now),
        role="cds",
        as_of=now,
        freshness=stay.observations[-1][2] if stay.observations else None,
    )
    audit.details.update({"scored": True, "card": prediction.public_id})
    return _card(predictor, prediction, link, stay.admitted_at, _notes(left_out, patient))


# Feedback limits: the columns of cds_feedback, and a bound on one request's work.
MAX_FEEDBACK_ITEMS = 100
_CARD_CHARS = 64
_REASON_CHARS = 300
_COMMENT_CHARS = 1000
_SYSTEM_CHARS = 500
# An outcome may be stamped by a clock slightly ahead of ours, not later than that.
_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class _Feedback:
    """One checked feedback item, ready to be stored."""

    card: str
    outcome: str
    reason: str | None
    comment: str | None
    at: datetime | None


@cds.post("/<service_id>/feedback")
@requires(Permission.PREDICT)
def feedback(service_id: str) -> Response:
    """Store accepted/overridden outcomes of cards, with override reasons.

    Only for a service that exists (feedback for another id would be stored against a
    service nobody can call). Every field is checked for shape and for the length of its
    column, and all problems are answered at once (400): a value too long for its column
    used to fail in the database, as a 500 whose log carried the SQL parameters, free
    text included. Messages name the field and the rule, never the text (a comment may
    hold a patient's name).
    """
    if service_id != SERVICE_ID:
        raise NotFound(f"no CDS service {service_id!r}")
    body = json_body()
    items = body.get("feedback") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise BadRequest(
            "feedback must be a non-empty list",
            details=[{"loc": ["body", "feedback"], "msg": "required list"}],
        )
    if len(items) > MAX_FEEDBACK_ITEMS:
        raise BadRequest(
            f"at most {MAX_FEEDBACK_ITEMS} feedback items per request",
            details=[{"loc": ["body", "feedback"], "msg": f"at most {MAX_FEEDBACK_ITEMS} items"}],
        )
    problems: list[dict[str, Any]] = []
    now = utcnow()
    checked = [
        _feedback_item(item, ["body", "feedback", i], now, problems) for i, item in enumerate(items)
    ]
    if problems:
        raise _bad_request("the feedback has problems", problems)
    session = db()
    rows = [
        CdsFeedback(
            service_id=service_id,
            card_uuid=item.card,
            prediction_id=session.scalar(
                select(Prediction.id).where(Prediction.public_id == item.card)
            ),
            outcome=item.outcome,
            override_reason=item.reason,
            user_comment=item.comment,
            outcome_at=item.at or now,
            client=current_principal().name[:200],
        )
        for item in checked
        if item is not None
    ]
    session.add_all(rows)
    audit_event(
        "cds.feedback",
        "C",
        resource=f"cds/{service_id}/feedback",
        details={"cards": [r.card_uuid for r in rows]},
    )
    return jsonify({"stored": len(rows)})


def _feedback_item(
    item: Any, loc: list[Any], now: datetime, problems: list[dict[str, Any]]
) -> _Feedback | None:
    """One feedback item (CDS Hooks 2.0 "Feedback"), or None with its problems recorded.

    ``outcomeTimestamp`` may be left out (the time received is stored). The cards of this
    service carry no suggestions, so ``acceptedSuggestions`` can only be empty.
    """
    if not isinstance(item, dict):
        problems.append({"loc": loc, "msg": "must be an object"})
        return None
    before = len(problems)
    card = _text(item.get("card"), [*loc, "card"], _CARD_CHARS, problems, required=True)
    outcome = item.get("outcome")
    if outcome not in ("accepted", "overridden"):
        problems.append({"loc": [*loc, "outcome"], "msg": "required: accepted or overridden"})
    when = _timestamp(item.get("outcomeTimestamp"), [*loc, "outcomeTimestamp"], now, problems)
    reason, comment = _override_reason(item.get("overrideReason"), outcome, loc, problems)
    suggestions = item.get("acceptedSuggestions")
    if suggestions is not None:
        where = [*loc, "acceptedSuggestions"]
        if not isinstance(suggestions, list) or not all(
            isinstance(s, dict) and isinstance(s.get("id"), str) for s in suggestions
        ):
            problems.append({"loc": where, "msg": "must be a list of objects with an id string"})
        elif suggestions:
            problems.append(
                {
                    "loc": where,
                    "msg": "must be empty: the cards of this service have no suggestions",
                }
            )
    if len(problems) > before or card is None:
        return None
    return _Feedback(card, str(outcome), reason, comment, when)


def _override_reason(
    raw: Any, outcome: Any, loc: list[Any], problems: list[dict[str, Any]]
) -> tuple[str | None, str | None]:
    """``(reason, userComment)`` of an overrideReason: the reason is its Coding's display,
    else its code (what the clinician picked); the comment is free text."""
    if raw is None:
        return None, None
    where = [*loc, "overrideReason"]
    if not isinstance(raw, dict):
        problems.append({"loc": where, "msg": "must be an object (reason, userComment)"})
        return None, None
    if outcome == "accepted":
        problems.append({"loc": where, "msg": "only with outcome overridden"})
    coding = raw.get("reason")
    reason: str | None = None
    if coding is not None:
        if not isinstance(coding, dict):
            problems.append({"loc": [*where, "reason"], "msg": "must be a Coding object"})
        else:
            at = [*where, "reason"]
            _text(coding.get("system"), [*at, "system"], _SYSTEM_CHARS, problems)
            code = _text(coding.get("code"), [*at, "code"], _REASON_CHARS, problems)
            display = _text(coding.get("display"), [*at, "display"], _REASON_CHARS, problems)
            reason = display or code
    comment = _text(raw.get("userComment"), [*where, "userComment"], _COMMENT_CHARS, problems)
    return reason, comment


def _text(
    raw: Any,
    loc: list[Any],
    max_chars: int,
    problems: list[dict[str, Any]],
    *,
    required: bool = False,
) -> str | None:
    """A string field of at most ``max_chars`` (its column), or None if absent or empty.

    The message never repeats the text. (NUL characters and lone surrogates, which
    PostgreSQL cannot store, are refused for every request by the request guard.)
    """
    if raw is None:
        if required:
            problems.append({"loc": loc, "msg": "required string"})
        return None
    if not isinstance(raw, str):
        problems.append({"loc": loc, "msg": "must be a string"})
    elif required and not raw:
        problems.append({"loc": loc, "msg": "must not be empty"})
    elif len(raw) > max_chars:
        problems.append({"loc": loc, "msg": f"must be at most {max_chars} characters"})
    else:
        return raw or None
    return None


def _timestamp(
    raw: Any, loc: list[Any], now: datetime, problems: list[dict[str, Any]]
) -> datetime | None:
    """An ISO 8601 date-time (UTC when it has no offset), in the clinical year range
    (:mod:`vitalcast.clinical.times`, the rule every other time input follows), not in
    the future."""
    if raw is None:
        return None
    iso = "must be an ISO 8601 date-time string"
    if not isinstance(raw, str) or "T" not in raw:
        problems.append({"loc": loc, "msg": iso})
        return None
    try:
        parsed = parse_iso(raw, "outcomeTimestamp")
        value = to_utc(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC), "outcomeTimestamp")
    except TimeOutOfRange as exc:
        problems.append({"loc": loc, "msg": str(exc)})
        return None
    except ValueError:
        problems.append({"loc": loc, "msg": iso})
        return None
    if value > now + _CLOCK_SKEW:
        problems.append({"loc": loc, "msg": "must not be in the future"})
        return None
    return value
