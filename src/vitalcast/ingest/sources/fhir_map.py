"""Map single FHIR R4 resources (as validated JSON) to canonical records.

Pure functions: no I/O, no database. :mod:`.fhir` walks files and bundles, validates each
resource with ``fhir.resources`` and calls :func:`map_resource` with a reference resolver.
Every Observation becomes one item per value it carries (its own ``value[x]`` and each
``component``), and every item ends as a record or a :class:`Rejected` with a reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from vitalcast.clinical.codes import BY_CODE, LOINC
from vitalcast.clinical.records import (
    ConditionRecord,
    EncounterRecord,
    EncounterWithdrawal,
    ImagingStudyRecord,
    ObservationRecord,
    ObservationRetraction,
    PatientRecord,
    RecordBatch,
    Rejected,
    Sex,
)
from vitalcast.clinical.times import (
    TimeOutOfRange,
    check_year,
    parse_iso,
    to_utc,
)
from vitalcast.ingest.validate import finite_number

Resolve = Callable[[str], str | None]  # reference text -> canonical "Type/id" or None

UCUM = "http://unitsofmeasure.org"
MAX_CODE_CHARS = 32
_SEXES: frozenset[str] = frozenset({"female", "male", "other", "unknown"})
# Encounter.class (v3 ActCode) -> the store's encounter kinds.
_ENCOUNTER_KINDS = {
    "IMP": "inpatient",
    "ACUTE": "inpatient",
    "NONAC": "inpatient",
    "EMER": "emergency",
    "AMB": "outpatient",
    "HH": "outpatient",
    "VR": "outpatient",
    "OBSENC": "outpatient",
    "SS": "outpatient",
    "FLD": "outpatient",
    "PRENC": "outpatient",
}
# Status values that withdraw what the resource says, as quarantine reason codes: an
# Observation's result must not reach a model, an Encounter is no stay at all (the same
# two codes in FHIR R4 ObservationStatus and EncounterStatus).
_WITHDRAWN = {"entered-in-error": "entered_in_error", "cancelled": "cancelled"}
# FHIR R4 EncounterStatus, a required binding
# (http://hl7.org/fhir/R4/valueset-encounter-status.html), and the values of it saying
# the stay is going on now.
ENCOUNTER_STATUSES = frozenset(
    {
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "finished",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
ONGOING_STATUSES = frozenset({"arrived", "triaged", "in-progress", "onleave"})


class ResourceProblem(ValueError):
    """A resource-level problem: ``code`` is the quarantine reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_instant(text: str | None, *, what: str) -> datetime:
    """A FHIR dateTime with a time of day, as aware UTC.

    Day-precision values ("2012-09-17", "2012") are refused rather than placed at an
    invented time: point-in-time features must never see a value before it existed.
    Messages name the field, never its value: a date of a patient's care is an
    identifier under HIPAA.

    Raises:
        ResourceProblem: missing, day-precision, timezone-less or out-of-range time
            (years outside :mod:`vitalcast.clinical.times`' range: ``time_out_of_range``).
    """
    if not text:
        raise ResourceProblem("no_time", f"{what} is missing")
    if not isinstance(text, str):
        raise ResourceProblem("bad_time", f"{what} is not a FHIR dateTime")
    if "T" not in text:
        raise ResourceProblem(
            "imprecise_time", f"{what} has no time of day; a point in time is needed"
        )
    try:
        value = parse_iso(text, what)
    except TimeOutOfRange as exc:
        raise ResourceProblem(exc.code, str(exc)) from None
    except ValueError:
        raise ResourceProblem("bad_time", f"{what} is not a FHIR dateTime") from None
    if value.tzinfo is None:
        raise ResourceProblem("naive_time", f"{what} has no timezone")
    return to_utc(value, what)


# FHIR dateTime's reduced precisions: a year ("2019") or a year and month ("2019-03").
_YEAR_OR_MONTH = re.compile(r"\d{4}(-\d{2})?")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def optional_time(text: Any, *, what: str) -> tuple[datetime | None, date | None]:
    """An optional time (an onset, a study's start): ``(instant, None)`` for a point in
    time, ``(None, day)`` for a date alone, ``(None, None)`` when absent.

    A date alone (``"2019-03-04"``, valid FHIR with day precision) is kept as a day, not
    dropped and not placed at an invented time of day; the point-in-time rule
    (:func:`vitalcast.clinical.times.known_from`) takes it as known only once that day
    is over everywhere. Anything else that is present but not one of these (a year or a
    month alone, a time without a timezone, a year outside the clinical range) raises,
    and the resource is quarantined under a reason naming the field: storing it without
    the value would lose it silently. Not for a stay's end, which must be a point in time
    (:func:`map_encounter`).

    Raises:
        ResourceProblem: ``imprecise_time``, ``naive_time``, ``bad_time`` or
            ``time_out_of_range``; the message names ``what``, never the value.
    """
    if text is None or text == "":
        return None, None
    if isinstance(text, str) and "T" not in text:
        if _YEAR_OR_MONTH.fullmatch(text):
            raise ResourceProblem(
                "imprecise_time", f"{what} gives only a year or a month; a day is needed"
            )
        try:
            if not _DAY.fullmatch(text):  # Python also reads "20190304" and week dates
                raise ValueError(text)
            day = date.fromisoformat(text)
            check_year(day, what)
        except TimeOutOfRange as exc:
            raise ResourceProblem(exc.code, str(exc)) from None
        except ValueError:
            raise ResourceProblem("bad_time", f"{what} is not a FHIR dateTime") from None
        return None, day
    return parse_instant(text, what=what), None


def identity_of(resource: dict[str, Any]) -> str | None:
    """Stable identity of a resource across its versions: ``Type/id``.

    Every version of a resource shares it (and so its observations' dedup keys); which
    version is stored is decided by :func:`version_of`.
    """
    rid = resource.get("id")
    if not rid:
        return None
    return f"{resource['resourceType']}/{rid}"


def version_of(resource: dict[str, Any]) -> str | None:
    """A sortable key of the resource's version, or None when ``meta`` gives none.

    ``lastUpdated`` (as UTC, fixed width) first, then ``versionId`` (numbers zero-padded,
    so version 10 sorts after 9): a later or higher version compares greater as text,
    which is how the store (and PostgreSQL's ``ON CONFLICT ... WHERE``) compares them.
    """
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return None
    updated = ""
    text = meta.get("lastUpdated")
    if isinstance(text, str) and text:
        try:
            at: datetime | None = parse_iso(text, "meta.lastUpdated")
        except ValueError:  # unreadable or out of range: no version from it, as before
            at = None
        if at is not None and at.tzinfo is not None:
            updated = to_utc(at, "meta.lastUpdated").strftime("%Y-%m-%dT%H:%M:%S.%f")
    vid = meta.get("versionId")
    number = str(vid).strip()[:30] if vid is not None else ""
    number = number.zfill(20) if number.isdigit() else number
    if not updated and not number:
        return None
    return f"{updated}|{number}"[:64]


def _reference(resource: dict[str, Any], name: str, resolve: Resolve, want: str) -> str | None:
    """Resolve ``resource[name].reference`` to ``want/id``.

    Raises:
        ResourceProblem: the reference is missing, of another type, or unresolvable
            (the message never repeats the reference: it may hold an MRN or a name).
    """
    ref = (resource.get(name) or {}).get("reference")
    if not ref:
        if name == "subject":
            raise ResourceProblem("missing_subject", "subject reference is missing")
        return None
    key = resolve(ref)
    if key is None:
        # The reference itself is never quoted: a conditional one carries the search
        # (``Patient?identifier=...|<MRN>``), and a free text one may be a name.
        if isinstance(ref, str) and ref.startswith("#"):
            form = "a contained resource (#id), which is not read: send it as an entry"
        elif isinstance(ref, str) and "?" in ref:
            form = "a conditional reference (Type?search), which is not resolved"
        else:
            form = "it names no resource of the file or the store"
        raise ResourceProblem(
            "unresolved_reference", f"{name} reference cannot be resolved: {form}"
        )
    if not key.startswith(f"{want}/"):
        raise ResourceProblem(
            "unsupported_subject" if name == "subject" else "unresolved_reference",
            f"{name} refers to a {key.split('/', 1)[0]}, expected a {want}",
        )
    return key


def _codings(concept: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [c for c in (concept or {}).get("coding") or [] if c.get("code")]


def pick_code(concept: dict[str, Any] | None) -> str | None:
    """The concept's code in our vocabulary if any coding has one, else LOINC, else first.

    A code outside the vocabulary still becomes an item, which the store quarantines as
    ``unknown_code``: the report then names every code we do not model.
    """
    codings = _codings(concept)
    for coding in codings:
        if (
            coding["code"] in BY_CODE
            and coding.get("system", LOINC) == BY_CODE[coding["code"]].system
        ):
            return str(coding["code"])
    loinc = [c for c in codings if c.get("system") == LOINC]
    return str((loinc or codings)[0]["code"]) if codings else None


def _concept_text(concept: dict[str, Any]) -> str | None:
    for coding in _codings(concept):
        return str(coding.get("display") or coding["code"])
    text = concept.get("text")
    return str(text) if text else None


def _value(holder: dict[str, Any]) -> tuple[float | None, str | None, str | None]:
    """``(value, unit, value_text)`` of an Observation or component ``value[x]``.

    FHIR JSON types are taken strictly: the resource models validate in lax mode, which
    turns ``"valueBoolean": "false"`` into False but leaves the raw dict that this reads
    untouched, and ``bool("false")`` is True. A value whose JSON type is not the one its
    element declares is therefore refused (``invalid_value``), never guessed at.

    Raises:
        ResourceProblem: no value (with ``dataAbsentReason`` as the reason when given),
            or a value of the wrong JSON type.
    """
    if "valueQuantity" in holder:
        qty = _object(holder["valueQuantity"], "valueQuantity")
        if qty.get("value") is None:
            raise ResourceProblem("no_value", "valueQuantity has no value")
        if qty.get("comparator") is not None:
            # "> 10 mmol/L" is a bound, not the value 10: stored as 10 a lactate above the
            # assay's range would look exactly 10 to a model. As HL7 SN with a comparator.
            raise ResourceProblem(
                "non_numeric_value", "valueQuantity has a comparator: not an exact value"
            )
        # The UCUM code is the machine-readable unit; ``unit`` is only for display.
        unit = qty.get("code") if qty.get("system") == UCUM and qty.get("code") else qty.get("unit")
        if unit is not None and not isinstance(unit, str):
            raise ResourceProblem("invalid_value", "valueQuantity's unit must be a JSON string")
        return _finite(qty["value"], "valueQuantity.value"), unit, None
    if "valueCodeableConcept" in holder:
        concept = _object(holder["valueCodeableConcept"], "valueCodeableConcept")
        return None, None, _concept_text(concept)
    if "valueInteger" in holder:
        if not isinstance(holder["valueInteger"], int):
            raise ResourceProblem("invalid_value", "valueInteger must be a JSON integer")
        return _finite(holder["valueInteger"], "valueInteger"), None, None
    if "valueBoolean" in holder:
        flag = holder["valueBoolean"]
        if not isinstance(flag, bool):
            raise ResourceProblem("invalid_value", "valueBoolean must be JSON true or false")
        return (1.0 if flag else 0.0), "1", None
    if "valueString" in holder:
        text = holder["valueString"]
        if not isinstance(text, str):
            raise ResourceProblem("invalid_value", "valueString must be a JSON string")
        # Kept whole: the store quarantines a text longer than its column (too_long)
        # rather than keep a silently cut one.
        return None, None, text
    absent = holder.get("dataAbsentReason")
    if absent:
        reason = _concept_text(_object(absent, "dataAbsentReason")) or "unspecified"
        raise ResourceProblem("data_absent", f"data absent: {reason}")
    kinds = [k for k in holder if k.startswith("value")]
    if kinds:
        raise ResourceProblem("unsupported_value", f"{kinds[0]} is not a supported value type")
    raise ResourceProblem("no_value", "no value[x], component or dataAbsentReason")


def _object(raw: Any, what: str) -> dict[str, Any]:
    """An element that FHIR JSON writes as an object (``null`` is never valid FHIR)."""
    if not isinstance(raw, dict):
        raise ResourceProblem("invalid_value", f"{what} must be a JSON object")
    return raw


def _finite(raw: Any, what: str) -> float:
    """A FHIR number as a float. FHIR JSON writes numbers as numbers, so a string or a
    boolean is ``invalid_value`` (the shared rule would read ``"77"``); a JSON integer
    of hundreds of digits (valid FHIR, but beyond any float) is ``non_numeric_value``
    like every source's non-number."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ResourceProblem("invalid_value", f"{what} must be a JSON number")
    try:
        return finite_number(raw)
    except ValueError as exc:
        raise ResourceProblem("non_numeric_value", f"{what} is {exc}") from None


def map_observation(
    res: dict[str, Any],
    where: str,
    resolve: Resolve,
    batch: RecordBatch,
    report_time: str | None = None,
) -> None:
    """One item per value: ``value[x]`` (or its absence) and each component.

    An ``effectivePeriod`` gives its end (its start when it has no end). Without
    ``effective[x]`` the time falls back to the effective time of the
    DiagnosticReport listing this result (``report_time``), then to ``issued``: both are
    no earlier than the measurement, so a point-in-time feature never sees it too soon.
    """
    identity = identity_of(res)
    components = res.get("component") or []
    has_own = any(k.startswith("value") for k in res) or "dataAbsentReason" in res
    slots: list[tuple[str, dict[str, Any], str]] = []
    if has_own or not components:
        slots.append((where, res, "value"))
    slots += [(f"{where}.component[{i}]", c, f"component[{i}]") for i, c in enumerate(components)]
    raw = json.dumps(res, default=str)[:20000]
    try:
        status = res.get("status", "")
        withdrawn = _WITHDRAWN.get(status)
        # A version saying the result was an error retracts the stored one (each slot);
        # without an identity and a version it cannot be ordered after it: refused.
        version = version_of(res) if identity else None
        if withdrawn is not None and version is None:
            raise ResourceProblem(withdrawn, f"status is {status}")
        patient = _reference(res, "subject", resolve, "Patient")
        encounter = _reference(res, "encounter", resolve, "Encounter")
        if withdrawn is not None and patient is not None and version is not None:
            for loc, holder, slot in slots:
                batch.received += 1
                batch.retractions.append(
                    ObservationRetraction(
                        patient_ref=patient,
                        identity=f"{identity}|{slot}",
                        version=version,
                        code=pick_code(holder.get("code")) or "",
                        reason_code=withdrawn,
                        reason=f"status is {status}",
                        source_ref=loc,
                        raw=raw,
                    )
                )
            return
        period = res.get("effectivePeriod") or {}
        effective = parse_instant(
            res.get("effectiveDateTime")
            or res.get("effectiveInstant")
            # A value over a period (a 24-hour urine output) exists at its end: at its
            # start a point-in-time feature would see the whole total too soon.
            or period.get("end")
            or period.get("start")
            or report_time
            or res.get("issued"),
            what="effective time",
        )
    except ResourceProblem as exc:
        for loc, _holder, _slot in slots:
            batch.rejected.append(Rejected(loc, exc.code, str(exc), raw))
        batch.received += len(slots)
        return
    assert patient is not None  # _reference raises for a missing subject
    for loc, holder, slot in slots:
        batch.received += 1
        code = pick_code(holder.get("code"))
        try:
            if code is None:
                raise ResourceProblem("no_code", "no coded Observation.code")
            if len(code) > MAX_CODE_CHARS:
                # Longer than any vocabulary code (and than the quarantine's code column).
                raise ResourceProblem("unknown_code", f"code {code!r} is not in the vocabulary")
            if slot == "value" and components and not has_own:
                raise ResourceProblem("no_value", "panel without its own value")
            if slot == "value" and not has_own and res.get("hasMember"):
                raise ResourceProblem(
                    "no_value", "grouping panel: its members (hasMember) are separate items"
                )
            value, unit, text = _value(holder)
        except ResourceProblem as exc:
            batch.rejected.append(Rejected(loc, exc.code, f"{code or '?'}: {exc}", raw))
            continue
        batch.observations.append(
            ObservationRecord(
                patient_ref=patient,
                encounter_ref=encounter,
                code=code,
                effective_at=effective,
                value=value,
                unit=unit,
                value_text=text,
                source_ref=loc,
                identity=f"{identity}|{slot}" if identity else None,
                version=version,
            )
        )


def map_patient(res: dict[str, Any], where: str, key: str, batch: RecordBatch) -> None:
    names = res.get("name") or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else None)
    # JSON null may stand in a list of names whose extension (``_given``) holds the value.
    parts = [*(name.get("given") or []), name.get("family")] if name else []
    full = " ".join(p for p in parts if isinstance(p, str)).strip()
    mrn = next(
        (
            i.get("value")
            for i in res.get("identifier") or []
            if any(c.get("code") == "MR" for c in _codings(i.get("type")))
        ),
        None,
    )
    telecom = res.get("telecom") or []
    gender = res.get("gender", "unknown")
    sex: Sex = gender if gender in _SEXES else "unknown"
    born = _full_date(res.get("birthDate"))  # may raise: before the item is counted
    batch.received += 1
    batch.patients.append(
        PatientRecord(
            ref=key,
            sex=sex,
            mrn=mrn,
            name=full or None,
            birth_date=born,
            address=_address(res.get("address") or []),
            phone=next((t.get("value") for t in telecom if t.get("system") == "phone"), None),
            email=next((t.get("value") for t in telecom if t.get("system") == "email"), None),
            source_ref=where,
            version=version_of(res),
        )
    )


def _full_date(text: str | None) -> date | None:
    """Only a full date; a partial birth date ("1974") stays in the raw resource.

    Raises:
        ResourceProblem: a full date whose year is outside the clinical range
            (``time_out_of_range``): the Patient is quarantined rather than stored
            with its birth date silently dropped.
    """
    try:
        born = date.fromisoformat(text) if text and len(text) == 10 else None
    except ValueError:
        return None  # fhir.resources has already refused a malformed date
    if born is not None:
        try:
            check_year(born, "birthDate")
        except TimeOutOfRange as exc:
            raise ResourceProblem(exc.code, str(exc)) from None
    return born


def _address(addresses: list[dict[str, Any]]) -> str | None:
    if not addresses:
        return None
    a = addresses[0]
    parts = [*(a.get("line") or []), a.get("city"), a.get("postalCode"), a.get("country")]
    return ", ".join(str(p) for p in parts if p) or None


def map_encounter(
    res: dict[str, Any], where: str, key: str, resolve: Resolve, batch: RecordBatch
) -> None:
    """A stay, or a :class:`ResourceProblem` when the Encounter cannot be one.

    A stay without a discharge time is in progress: it is rescored, monitored, and joined
    by observations sent without an encounter. An Encounter that is no stay
    (``entered-in-error``, ``cancelled``) becomes an :class:`EncounterWithdrawal`: it
    withdraws the stay stored under its id when it is a newer version of it, and is
    quarantined under those codes otherwise, as withdrawn Observations are. One that is
    ``planned`` (not begun), or whose end is present but not a point
    in time (a date alone, no timezone), or that is ``finished`` without an end, is
    refused rather than stored as a stay still in progress. One whose status says the stay
    is going on (``arrived``, ``triaged``, ``in-progress``, ``onleave``) and that has no
    end states it: as a newer version of a discharged stay it reopens it (a discharge
    recorded in error and corrected in the EHR), as an HL7 ADT^A13 does.
    """
    status = res.get("status")
    if status in _WITHDRAWN:
        # Not a stay: the store withdraws the stay stored under this id if this version
        # is newer than it, and quarantines it under the same code otherwise.
        batch.received += 1
        batch.withdrawals.append(
            EncounterWithdrawal(
                ref=key,
                reason_code=_WITHDRAWN[status],
                reason=f"Encounter.status is {status}: not a stay",
                source_ref=where,
                version=version_of(res),
            )
        )
        return
    if status == "planned":
        # An admission booked, not begun: stored, it would be a stay in progress from its
        # planned start. The version that says it began (arrived, in-progress) is stored.
        raise ResourceProblem("planned", "Encounter.status is planned: not yet a stay")
    period = res.get("period") or {}
    admitted = parse_instant(period.get("start"), what="Encounter.period.start")
    patient = _reference(res, "subject", resolve, "Patient")
    assert patient is not None
    cls = res.get("class") or {}
    locations = res.get("location") or []
    unit = (locations[0].get("location") or {}).get("display") if locations else None
    end = period.get("end")
    discharged = parse_instant(end, what="Encounter.period.end") if end is not None else None
    if status == "finished" and discharged is None:
        raise ResourceProblem(
            "no_discharge_time",
            "Encounter.status is finished without period.end: a stay needs its end time",
        )
    batch.received += 1
    batch.encounters.append(
        EncounterRecord(
            ref=key,
            patient_ref=patient,
            admitted_at=admitted,
            discharged_at=discharged,
            kind=_ENCOUNTER_KINDS.get(cls.get("code", ""), "inpatient"),  # type: ignore[arg-type]
            unit=str(unit) if unit else None,
            source_ref=where,
            version=version_of(res),
            in_progress_stated=status in ONGOING_STATUSES and discharged is None,
        )
    )


def map_condition(res: dict[str, Any], where: str, resolve: Resolve, batch: RecordBatch) -> None:
    patient = _reference(res, "subject", resolve, "Patient")
    encounter = _reference(res, "encounter", resolve, "Encounter")
    codings = _codings(res.get("code"))
    if not codings:
        raise ResourceProblem("no_code", "Condition.code has no coding")
    assert patient is not None
    onset = res.get("onsetDateTime") or (res.get("onsetPeriod") or {}).get("start")
    onset_at, onset_on = optional_time(onset, what="Condition.onset")
    batch.received += 1
    batch.conditions.append(
        ConditionRecord(
            patient_ref=patient,
            code=str(codings[0]["code"]),
            system=str(codings[0].get("system", "")),
            display=codings[0].get("display") or res["code"].get("text"),
            onset_at=onset_at,
            encounter_ref=encounter,
            source_ref=where,
            onset_on=onset_on,
        )
    )


def map_imaging_study(
    res: dict[str, Any], where: str, resolve: Resolve, batch: RecordBatch
) -> None:
    patient = _reference(res, "subject", resolve, "Patient")
    encounter = _reference(res, "encounter", resolve, "Encounter")
    uid = next(
        (
            str(i["value"]).removeprefix("urn:oid:")
            for i in res.get("identifier") or []
            if i.get("system") == "urn:dicom:uid" and i.get("value")
        ),
        None,
    )
    if uid is None:
        raise ResourceProblem("no_study_uid", "no identifier with system urn:dicom:uid")
    assert patient is not None
    series = res.get("series") or []
    modality = (res.get("modality") or [{}])[0].get("code") or (
        (series[0].get("modality") or {}).get("code") if series else None
    )
    body = (series[0].get("bodySite") or {}) if series else {}
    started, started_on = optional_time(res.get("started"), what="ImagingStudy.started")
    batch.received += 1
    batch.imaging_studies.append(
        ImagingStudyRecord(
            patient_ref=patient,
            study_uid=uid,
            modality=modality,
            body_part=body.get("display") or body.get("code"),
            started_at=started,
            description=res.get("description"),
            series_count=res.get("numberOfSeries"),
            instance_count=res.get("numberOfInstances"),
            encounter_ref=encounter,
            source_ref=where,
            started_on=started_on,
        )
    )
