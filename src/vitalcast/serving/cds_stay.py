"""The stay a CDS Hooks card scores: the current encounter, and its feature input.

Split from :mod:`.cds_hooks` because this is where a hook's FHIR records become a stay as
training sees stays (the same ingestion rules, admission time and descriptors); it has
no Flask in it, so the rule can be read, and tested, apart from the request.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from vitalcast.clinical.records import EncounterRecord, ObservationRecord, PatientRecord
from vitalcast.features import StayInput
from vitalcast.ingest.sources.fhir_map import ENCOUNTER_STATUSES, ONGOING_STATUSES
from vitalcast.ingest.validate import (
    Invalid,
    check_encounter,
    check_observation,
    plausible_age,
)
from vitalcast.serving.cds_prefetch import entry_index, parse_resources, rejection_text
from vitalcast.serving.cds_sources import Fetched

# Why the admission time of the stay breaks the ingestion rules (check_encounter's codes).
_ADMISSION_RULES = {
    "future_time": "an admission time in the future",
    "before_birth": "an admission time before the patient's birth",
    "naive_time": "an admission time without a timezone",
    "discharge_before_admission": "a discharge time before its admission time",
}


def current_encounter(
    fetched: Fetched, patient: PatientRecord, encounter_id: str | None, now: datetime
) -> EncounterRecord | None:
    """The stay to score: the context's encounter if in progress, else the encounter in
    progress of this patient that started last (an ICU stay inside a hospital stay
    starts after it). Mapped by the FHIR ingestion adapter (admission time, unit).

    In progress means what it means to FHIR ingestion (:data:`ONGOING_STATUSES`:
    ``arrived``, ``triaged``, ``in-progress``, ``onleave``), so that a patient on leave
    from the ward gets the same risk in the EHR as on vitalcast's own pages, not "no
    stay in progress".

    Raises:
        BadRequest, PreconditionFailed: a candidate in progress cannot be read, belongs to
            another patient, or breaks the ingestion rules on times (see
            :meth:`.cds_sources.Fetched.unusable`). Passing over it would answer "no stay
            in progress", or score another stay, without a word.
    """
    encounters = [
        (i, r)
        for i, r in enumerate(fetched.resources)
        if r.get("resourceType") == "Encounter"
        and (encounter_id is None or r.get("id") == encounter_id)
    ]
    for i, r in encounters:
        # Filtered on "in-progress" unchecked, an Encounter with a status that is no
        # status ("In-Progress", a list, none) was passed over: "no stay in progress".
        status = r.get("status")
        if not isinstance(status, str) or status not in ENCOUNTER_STATUSES:
            raise fetched.unusable(
                i, "an Encounter that cannot be read (Encounter.status: not an R4 status code)"
            )
    candidates = [(i, r) for i, r in encounters if r["status"] in ONGOING_STATUSES]
    batch = parse_resources([r for _i, r in candidates])

    def index(location: str) -> int | None:
        k = entry_index(location)
        return candidates[k][0] if k is not None and k < len(candidates) else None

    for rejected in batch.rejected:
        why = rejection_text(rejected, "Encounter")
        raise fetched.unusable(
            index(rejected.location), f"an Encounter in progress that cannot be read ({why})"
        )
    for record in batch.encounters:
        if record.patient_ref != patient.ref:
            raise fetched.unusable(
                index(record.source_ref), "an Encounter in progress of another patient"
            )
    current = max(batch.encounters, key=lambda e: (e.admitted_at, e.ref), default=None)
    if current is not None:
        try:
            check_encounter(current, now=now, born_on=patient.birth_date)
        except Invalid as exc:
            why = _ADMISSION_RULES.get(exc.code, exc.code)
            raise fetched.unusable(
                index(current.source_ref), f"an Encounter in progress with {why}"
            ) from None
    return current


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
    age = plausible_age(born, encounter.admitted_at)
    if born is not None and age is None:
        tally["implausible_age"] += 1
    return StayInput(
        admitted_at=encounter.admitted_at,
        age_years=age,
        sex=patient.sex if patient is not None else "unknown",
        unit=encounter.unit,
        height_cm=None,  # charted as observations: stay_features reads them from there
        weight_kg=None,
        observations=tuple(kept),
    )
