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
Encounter (``context.encounterId`` when the EHR gives it, else the patient's encounter in
progress, as FHIR ingestion reads the status, that started last) gives the admission time
and the unit (through the FHIR ingestion adapter's mapping); observations before
admission, or of another encounter, are dropped; height and the weight charted at
admission are the stay's descriptors, by the feature code's own rule (as for stored
stays). Resources pass through the same FHIR adapter and preprocessing rules as ingested
data, and features through the same function as training. Without an encounter in progress
the card says so and carries no risk; so does it for an encounter outside the model's
population (an ambulatory or emergency encounter, a patient younger than the training
data's: :class:`.tasks.Population`).

What cannot be used is said, never guessed at: a malformed request or prefetch is a 400
naming each problem and its place (:mod:`.cds_prefetch`), an unusable answer of
``fhirServer`` a 412, and observations left out of the score are counted on the card.

Every answer and every failure is audited (``cds.patient-view``); the EHR's patient id is
recorded as the store's public id when the store knows the patient (by FHIR id, else by
the MRN), else as a keyed hash. The card's link opens that patient's page, else the ward.

The service is split by capability: this module holds the blueprint (its URL map), the
discovery document, the hook's flow and its audit; :mod:`.cds_request` checks the request,
:mod:`.cds_sources` gets its data, :mod:`.cds_stay` builds the stay, :mod:`.cds_cards`
words the cards and :mod:`.cds_feedback` stores the clinician's feedback.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select

from vitalcast.clinical.tables import Patient
from vitalcast.errors import AppError, ModelUnavailable, NotFound
from vitalcast.features import stay_features
from vitalcast.ingest.validate import contradicts, plausible_age
from vitalcast.security.permissions import Permission, public, requires
from vitalcast.serving.cds_cards import card_notes, no_stay_card, outside_card, risk_card
from vitalcast.serving.cds_feedback import feedback
from vitalcast.serving.cds_fhir import PAGE_SIZE, parse_networks
from vitalcast.serving.cds_prefetch import counts_as_left_out, parse_resources
from vitalcast.serving.cds_request import SERVICE_ID as SERVICE_ID
from vitalcast.serving.cds_request import HookRequest, parse_hook
from vitalcast.serving.cds_sources import ONGOING_SEARCH, Sources
from vitalcast.serving.cds_stay import current_encounter, stay_from_records
from vitalcast.serving.context import audit_event, current_principal, db
from vitalcast.serving.patients import decrypt_identifiers
from vitalcast.serving.predictor import Predictor
from vitalcast.serving.scoring import outside_population, record_prediction, served_population
from vitalcast.serving.state import get_state
from vitalcast.serving.validation import json_body

logger = logging.getLogger(__name__)

cds = Blueprint("cds", __name__)


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
                    "encounters": "Encounter?patient={{context.patientId}}"
                    f"&status={ONGOING_SEARCH}",
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


@dataclass
class _Audit:
    """What the ``cds.patient-view`` audit event says, filled in as the request goes."""

    details: dict[str, Any] = field(default_factory=dict)
    patient_id: str | None = None
    stored_mrn_hmac: str | None = None  # of the patient found by the EHR's FHIR id

    def patient(self, ehr_patient_id: str) -> None:
        """Refer to the patient as the rest of the audit log does: the store's public id
        when the store holds this EHR patient (FHIR ingestion keys it ``Patient/<id>``),
        and a keyed hash of the EHR's id in any case, never the id itself."""
        found = (
            db()
            .execute(
                select(Patient.public_id, Patient.mrn_hmac).where(
                    Patient.source == "fhir", Patient.source_ref == f"Patient/{ehr_patient_id}"
                )
            )
            .first()
        )
        if found is not None:
            self.patient_id, self.stored_mrn_hmac = found.public_id, found.mrn_hmac
        self.details["ehr_patient"] = get_state().cipher.pseudonym("ehr-patient", ehr_patient_id)

    def match_mrn(self, mrn: str | None, birth_date: date | None) -> None:
        """When no FHIR-ingested patient has the EHR's id, the stored patient with the
        Patient resource's MRN (the identifier ingestion matches patients across sources
        by: one admitted by HL7 v2 has no FHIR id), if exactly one has it and its birth
        date does not contradict the resource's (two people can share an MRN; ingestion
        does not merge them either, see ``ingest/_resolve.py``).

        A patient found by the FHIR id whose stored MRN differs from the resource's is
        another person (FHIR ids are a server's own numbering): not the one the card
        links to or the audit names; the MRN is looked up instead."""
        if not mrn:
            return
        mrn_hmac = get_state().cipher.mrn_hash(mrn)
        if self.patient_id is not None:
            if self.stored_mrn_hmac in (None, mrn_hmac):
                return
            # The same FHIR id, another MRN: another server's numbering (ids such as
            # "Patient/1" recur across servers), so another person. The card must not
            # open that person's page nor the audit name them: the MRN decides.
            self.patient_id = None
        found = db().scalars(select(Patient).where(Patient.mrn_hmac == mrn_hmac).limit(2)).all()
        if len(found) == 1 and _same_birth_date(found[0], birth_date):
            self.patient_id = found[0].public_id

    def write(self, service_id: str, outcome: str) -> None:
        audit_event(
            "cds.patient-view",
            "E",
            outcome=outcome,
            patient_id=self.patient_id,
            resource=f"cds/{service_id}",
            details=self.details,
        )


def _same_birth_date(patient: Patient, birth_date: date | None) -> bool:
    """Whether the stored patient's birth date does not contradict ``birth_date``
    (:func:`~vitalcast.ingest.validate.contradicts`, the rule ingestion links by)."""
    if birth_date is None:
        return True
    try:
        stored = decrypt_identifiers(get_state().cipher, patient).get("birth_date")
    except ValueError:  # a retired key: nothing to compare with, as at ingestion
        return True
    return not contradicts(birth_date, date.fromisoformat(stored) if stored else None)


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
            # Messages of the cds_* modules and of cds_fhir name what failed, never a URL or id.
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
    base = (settings.public_url or request.host_url).rstrip("/")
    with _audited(service_id) as audit:
        body = json_body()
        hook = parse_hook(body)
        audit.details["hookInstance"] = hook.hook_instance
        audit.patient(hook.patient_id)
        predictor = get_state().predictor
        if predictor is None:
            raise ModelUnavailable("no champion model is loaded")
        signed = current_principal().kind == "cds_client"
        sources = Sources(
            hook,
            signed=signed,
            env=settings.env,
            networks=parse_networks(settings.cds_fhir_networks),
        )
        try:
            card = _answer(hook, sources, predictor, base, audit)
        finally:
            sources.close()
            audit.details["fhir_server_read"] = sources.read_server
    return jsonify({"cards": [card]})


def _answer(
    hook: HookRequest, sources: Sources, predictor: Predictor, base: str, audit: _Audit
) -> dict[str, Any]:
    now = datetime.now(UTC)
    patient = sources.patient(now.date())
    audit.match_mrn(patient.mrn, patient.birth_date)
    # "Open in vitalcast" opens the patient's own page when the store holds the patient
    # (the clinician signs in and the page checks their units), else the ward list.
    link = f"{base}/patients/{audit.patient_id}" if audit.patient_id else f"{base}/ward"
    encounter = current_encounter(sources.encounters(), patient, hook.encounter_id, now)
    if encounter is None:
        audit.details["scored"] = False
        return no_stay_card(link, hook.encounter_id)
    outside = outside_population(
        served_population(get_state().settings),
        encounter.kind,
        plausible_age(patient.birth_date, encounter.admitted_at),
        encounter.unit,
    )
    if outside is not None:
        # The encounter's kind, never the age (beyond 89 an identifier under HIPAA).
        audit.details.update({"scored": False, "outside_population": encounter.kind})
        return outside_card(link, outside)
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
    return risk_card(predictor, prediction, link, stay.admitted_at, card_notes(left_out, patient))


# Registered here, after the hook, so that the blueprint's URL map stays in this module.
cds.post("/<service_id>/feedback")(feedback)
