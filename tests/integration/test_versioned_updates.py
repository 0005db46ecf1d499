"""A newer version of a source record replaces the stored one; the same or an older
version changes nothing.

HL7 v2: an ADT^A08 (update patient information) changes the known patient's
demographics and the stay's unit, an ADT^A03 sets the discharge, and a stale A08 that
arrives late (older MSH-7) overwrites nothing. FHIR: a new version of an Observation,
Patient or Encounter (higher ``meta.versionId`` or later ``lastUpdated``) replaces the
row instead of adding one, re-ingesting the same version is a duplicate, and an older
version never overwrites a newer one. Both on PostgreSQL (COPY + upsert) and SQLite.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from tests.hl7_samples import ADT_A01, ADT_A03
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.ingest.report import IngestReport
from vitalcast.ingest.sources.fhir import SOURCE as FHIR
from vitalcast.ingest.sources.fhir import parse_bytes
from vitalcast.ingest.sources.hl7v2 import SOURCE as HL7
from vitalcast.ingest.sources.hl7v2 import parse_message
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.ingest.units import store_unit
from vitalcast.security.crypto import FieldCipher

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

ADT_A08 = (
    "MSH|^~\\&|ADT|HOSP|VITALCAST|HOSP|20240302090000||ADT^A08|ADM0003|P|2.5\r"
    "EVN|A08|20240302090000\r"
    "PID|1||MRN0001^^^HOSP^MR||Testpatient-Renamed^Alpha||19500103|F\r"
    "PV1|1|I|CCU^3^B||||||||||||||||V0001"
)


def _stale(message: str, stamp: str) -> str:
    """The same message with another MSH-7 (and control id)."""
    fields = message.split("\r")[0].split("|")
    fields[6], fields[9] = stamp, f"OLD{stamp[-6:]}"
    return "\r".join(["|".join(fields), *message.split("\r")[1:]])


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        eng = create_db_engine(url)
    else:
        eng = create_db_engine(f"sqlite:///{tmp_path / 'demo.db'}")
        upgrade_database(eng)
    yield eng
    eng.dispose()


def _hl7(engine: Engine, cipher: FieldCipher, text: str) -> IngestReport:
    msg = parse_message(text, origin="t.hl7", pseudonym=cipher.mrn_hash)
    with Session(engine) as session:
        report = store_unit(session, msg.unit, source=HL7, cipher=cipher, now=NOW)
        session.commit()
    assert report.balanced()
    return report


def _patient(engine: Engine, cipher: FieldCipher) -> tuple[dict[str, str], str, str | None]:
    with Session(engine) as session:
        row = session.scalars(select(Patient)).one()
        ids = cipher.decrypt(
            row.identifiers_enc or b"", row.key_id or "", context=f"patient:{row.public_id}"
        )
        return ids, row.sex, row.source_version


def _stay(engine: Engine) -> Encounter:
    with Session(engine, expire_on_commit=False) as session:
        return session.scalars(select(Encounter)).one()


def test_hl7_a08_updates_and_a03_discharges(engine: Engine, cipher: FieldCipher) -> None:
    _hl7(engine, cipher, ADT_A01)
    admitted = _stay(engine).admitted_at
    assert _patient(engine, cipher)[0]["name"] == "Alpha Testpatient"

    report = _hl7(engine, cipher, ADT_A08)
    assert report.updated == {"patient": 1, "encounter": 1}
    ids, sex, _ = _patient(engine, cipher)
    assert (ids["name"], ids["birth_date"], ids["mrn"], sex) == (
        "Alpha Testpatient-Renamed",
        "1950-01-03",
        "MRN0001",
        "female",
    )
    stay = _stay(engine)
    assert stay.unit == "CCU"
    assert stay.admitted_at == admitted  # A08 without PV1-44 keeps the admission time
    assert stay.discharged_at is None

    # The same A08 again, and an A08 older than the one stored: nothing changes.
    again = _hl7(engine, cipher, ADT_A08)
    late = _hl7(engine, cipher, _stale(ADT_A08.replace("CCU", "MICU"), "20240301090000"))
    for r in (again, late):
        assert r.updated == {}
        assert r.count("patient").duplicates == r.count("encounter").duplicates == 1
    assert _stay(engine).unit == "CCU"
    assert _patient(engine, cipher)[0]["name"] == "Alpha Testpatient-Renamed"

    discharged = _hl7(engine, cipher, ADT_A03)
    assert discharged.updated["encounter"] == 1
    stay = _stay(engine)
    assert stay.discharged_at == datetime(2024, 3, 5, 11, 30, tzinfo=UTC)
    assert stay.admitted_at == admitted
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Patient)) == 1
        assert session.scalar(select(func.count()).select_from(Encounter)) == 1


def _a08(stamp: str, pid: str) -> str:
    """An ADT^A08 of the patient of ADT_A01 at MSH-7 ``stamp``: its PID-5, PID-7, PID-8
    as ``pid`` gives them, and no PV1 (the stay is only the patient's)."""
    return (
        f"MSH|^~\\&|ADT|HOSP|VITALCAST|HOSP|{stamp}||ADT^A08|U{stamp[-6:]}|P|2.5\r"
        f"PID|1||MRN0001^^^HOSP^MR||{pid}"
    )


def test_hl7_null_deletes_the_birth_date_the_age_from_it_the_name_and_sex(
    engine: Engine, cipher: FieldCipher
) -> None:
    """An A08 whose PID-7 is the HL7 null ``""`` (the sender deletes the birth date) was
    quarantined as ``bad_birth_date``, so the stored birth date, and the stay's age at
    admission computed from it (a model input and the population's age rule), stayed.
    Now both are deleted, as are a ``""`` name and sex; an older such A08 deletes
    nothing, and a later birth date gives the stay its age again."""
    _hl7(engine, cipher, ADT_A01)
    assert _stay(engine).age_years == 74.0  # born 1950-01-02, admitted 2024-03-01

    stale = _hl7(engine, cipher, _a08("20240229090000", '""||""|""'))
    assert stale.updated == {}
    ids, sex, _ = _patient(engine, cipher)
    assert (ids["name"], ids["birth_date"], sex) == ("Alpha Testpatient", "1950-01-02", "female")

    report = _hl7(engine, cipher, _a08("20240302090000", '""||""|""'))
    assert report.rejects == []
    assert report.updated == {"patient": 1}
    ids, sex, version = _patient(engine, cipher)
    assert ids == {"mrn": "MRN0001"}
    assert sex == "unknown"
    assert version is not None
    assert version.startswith("2024-03-02")
    assert _stay(engine).age_years is None

    # A birth date sent again (a correction): the stay's age follows it.
    _hl7(engine, cipher, _a08("20240303090000", "Testpatient^Alpha||19600315|F"))
    ids, sex, _ = _patient(engine, cipher)
    assert (ids["birth_date"], sex) == ("1960-03-15", "female")
    assert _stay(engine).age_years == 63.0

    # An empty PID-7 is "not sent": the stored birth date and the age stay.
    _hl7(engine, cipher, _a08("20240304090000", "Testpatient^Alpha|||F"))
    assert _patient(engine, cipher)[0]["birth_date"] == "1960-03-15"
    assert _stay(engine).age_years == 63.0


def test_hl7_null_deletes_the_unit_and_an_empty_pv1_3_keeps_it(
    engine: Engine, cipher: FieldCipher
) -> None:
    """A PV1-3 of "" (the sender deletes the location) was stored as a unit named "",
    which no unit filter or ICU type knows; it now deletes the stored unit, while an empty
    PV1-3 (not sent) keeps it, as for the patient's fields."""
    _hl7(engine, cipher, ADT_A01)
    assert _stay(engine).unit == "MICU"
    kept = ADT_A08.replace("CCU^3^B", "")
    _hl7(engine, cipher, kept)
    assert _stay(engine).unit == "MICU"
    deleted = _stale(ADT_A08.replace("CCU^3^B", '""'), "20240303090000")
    assert _hl7(engine, cipher, deleted).updated == {"encounter": 1, "patient": 1}
    assert _stay(engine).unit is None
    # An admission whose PV1-3 is "" stores no unit at all.
    with Session(engine) as session:
        session.execute(Encounter.__table__.delete())
        session.commit()
    _hl7(engine, cipher, _stale(ADT_A01.replace("MICU^12^A", '""'), "20240304090000"))
    assert _stay(engine).unit is None


def test_hl7_null_in_pv1_45_reopens_the_stay_and_is_refused_where_it_cannot_mean_that(
    engine: Engine, cipher: FieldCipher
) -> None:
    """A PV1-45 of "" (the sender deletes the discharge time) quarantined the update as
    "not an HL7 date/time". It now says the stay is going on, as an A13 does: a newer A08
    reopens the discharged stay, an older one changes nothing. In a discharge (A03) it
    contradicts the message, and PV1-44 cannot be deleted: both are quarantined by name."""
    _hl7(engine, cipher, ADT_A01)
    _hl7(engine, cipher, ADT_A03)
    assert _stay(engine).discharged_at is not None
    deleting = ADT_A03.replace("ADT^A03", "ADT^A08").replace("|20240305113000+0000", '|""')
    stale = _hl7(engine, cipher, _stale(deleting, "20240304090000"))
    assert stale.reopened == []
    assert _stay(engine).discharged_at is not None
    report = _hl7(engine, cipher, _stale(deleting, "20240306090000"))
    assert len(report.reopened) == 1
    stay = _stay(engine)
    assert stay.discharged_at is None
    assert stay.admitted_at == datetime(2024, 3, 1, 7, 55, tzinfo=UTC)
    for message, reason in (
        (
            _stale(ADT_A03.replace("|20240305113000+0000", '|""'), "20240307090000"),
            'PV1-45 discharge time is the HL7 null "" in a discharge (ADT^A03)',
        ),
        (
            _stale(deleting.replace("|20240301075500+0000", '|""'), "20240308090000"),
            'PV1-44 admit time is the HL7 null ""; a stay keeps its admission',
        ),
    ):
        refused = _hl7(engine, cipher, message)
        assert [(r["reason_code"], r["reason"]) for r in refused.rejects] == [("null_time", reason)]
        assert _stay(engine).discharged_at is None


def test_a_discharge_deleted_without_msh_7_is_quarantined_not_counted_a_duplicate(
    engine: Engine, cipher: FieldCipher
) -> None:
    """An A08 deleting the discharge time (PV1-45 "") without an MSH-7 cannot be ordered
    after the A03, as an A13 without one cannot. It was counted as a duplicate, dropping
    the sender's statement unseen; it is now quarantined with the reason, as that A13 is."""
    _hl7(engine, cipher, ADT_A01)
    _hl7(engine, cipher, ADT_A03)
    deleting = ADT_A03.replace("ADT^A03", "ADT^A08").replace("|20240305113000+0000", '|""')
    report = _hl7(engine, cipher, _stale(deleting, ""))
    assert [r["reason_code"] for r in report.rejects] == ["no_message_time"]
    assert "without a message time" in report.rejects[0]["reason"]
    assert report.reopened == []
    assert _stay(engine).discharged_at is not None
    # On a stay in progress there is nothing to order: the same message is a duplicate.
    with Session(engine) as session:
        session.execute(Encounter.__table__.update().values(discharged_at=None))
        session.commit()
    assert _hl7(engine, cipher, _stale(deleting, "")).rejects == []


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "pv-1",
    "meta": {"versionId": "9"},
    "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "MRN-V-1"}],
    "name": [{"family": "Versionne", "given": ["Ada"]}],
    "gender": "female",
    "birthDate": "1970-02-03",
}
ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "ev-1",
    "meta": {"lastUpdated": "2026-10-01T10:00:00+02:00"},
    "status": "in-progress",
    "class": {"code": "IMP"},
    "subject": {"reference": "Patient/pv-1"},
    "period": {"start": "2026-10-01T07:00:00Z"},
}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "ov-1",
    "meta": {"versionId": "9", "lastUpdated": "2026-10-01T08:00:00Z"},
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    "subject": {"reference": "Patient/pv-1"},
    "encounter": {"reference": "Encounter/ev-1"},
    "effectiveDateTime": "2026-10-01T08:00:00Z",
    "valueQuantity": {"value": 80, "unit": "/min", "system": "http://unitsofmeasure.org"},
}


def _fhir(engine: Engine, cipher: FieldCipher, *resources: dict[str, Any]) -> IngestReport:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }
    unit = parse_bytes(json.dumps(bundle).encode(), "v.json")
    with Session(engine) as session:
        report = store_unit(session, unit, source=FHIR, cipher=cipher, now=NOW)
        session.commit()
    assert report.balanced()
    return report


def _version(resource: dict[str, Any], **meta: str) -> dict[str, Any]:
    new = copy.deepcopy(resource)
    new["meta"] = meta
    return new


def _observations(engine: Engine) -> list[tuple[float | None, str | None]]:
    with Session(engine) as session:
        return [
            (value, version)
            for value, version in session.execute(
                select(Observation.value, Observation.source_version)
            )
        ]


def test_fhir_new_version_replaces_same_is_noop_older_is_ignored(
    engine: Engine, cipher: FieldCipher
) -> None:
    first = _fhir(engine, cipher, PATIENT, ENCOUNTER, OBSERVATION)
    assert first.stored == 3
    assert [v for v, _ in _observations(engine)] == [80.0]

    # versionId 10 > 9 (numerically: as text "10" < "9"); the value changed.
    v10 = _version(OBSERVATION, versionId="10", lastUpdated="2026-10-01T08:00:00Z")
    v10["valueQuantity"]["value"] = 95
    report = _fhir(engine, cipher, v10)
    assert (report.stored, report.duplicates, report.updated["observation"]) == (1, 0, 1)
    assert [v for v, _ in _observations(engine)] == [95.0]

    same = _fhir(engine, cipher, v10)
    assert (same.stored, same.duplicates, same.updated) == (0, 1, {})
    older = _fhir(engine, cipher, OBSERVATION)  # version 9 arriving late
    assert (older.stored, older.duplicates) == (0, 1)
    assert [v for v, _ in _observations(engine)] == [95.0]

    # Patient and Encounter versions: demographics and the stay's end are replaced.
    p2 = _version(PATIENT, versionId="10")
    p2["name"] = [{"family": "Versionne-Neu", "given": ["Ada"]}]
    e2 = _version(ENCOUNTER, lastUpdated="2026-10-03T09:00:00Z")
    e2["period"] = {"start": "2026-10-01T07:00:00Z", "end": "2026-10-03T08:30:00Z"}
    both = _fhir(engine, cipher, p2, e2)
    assert both.updated == {"patient": 1, "encounter": 1}
    assert _patient(engine, cipher)[0]["name"] == "Ada Versionne-Neu"
    assert _stay(engine).discharged_at == datetime(2026, 10, 3, 8, 30, tzinfo=UTC)
    # The older versions again (one of them in the same bundle as a newer one).
    stale = _fhir(engine, cipher, PATIENT, ENCOUNTER, p2)
    assert stale.updated == {}
    assert _patient(engine, cipher)[0]["name"] == "Ada Versionne-Neu"
    assert _stay(engine).discharged_at is not None
    with Session(engine) as session:
        counts = [
            session.scalar(select(func.count()).select_from(t))
            for t in (Patient, Encounter, Observation)
        ]
    assert counts == [1, 1, 1]


def test_a_newer_entered_in_error_version_removes_the_observation(
    engine: Engine, cipher: FieldCipher
) -> None:
    """On both backends (the embedded demo runs SQLite): the retraction deletes the row
    and keeps it in the quarantine; see test_result_retraction.py for the whole path."""
    _fhir(engine, cipher, PATIENT, ENCOUNTER, OBSERVATION)
    error = _version(OBSERVATION, versionId="10")
    error["status"] = "entered-in-error"
    report = _fhir(engine, cipher, error)
    assert [(t.code, t.reason_code) for t in report.retracted] == [("8867-4", "entered_in_error")]
    assert _observations(engine) == []
    assert report.touched_encounters == {_stay(engine).id}
    with Session(engine) as session:
        kept = session.scalars(select(QuarantineItem.reason_code)).all()
    assert kept == ["retracted"]


def test_two_versions_in_one_bundle_keep_the_newest(engine: Engine, cipher: FieldCipher) -> None:
    _fhir(engine, cipher, PATIENT, ENCOUNTER)
    v2 = _version(OBSERVATION, versionId="11")
    v2["valueQuantity"]["value"] = 101
    report = _fhir(engine, cipher, v2, OBSERVATION)
    assert report.count("observation").received == 2
    assert (report.count("observation").stored, report.count("observation").duplicates) == (1, 1)
    assert _observations(engine) == [(101.0, "|00000000000000000011")]


def test_fhir_birth_date_corrected_or_removed_moves_the_stays_age(
    engine: Engine, cipher: FieldCipher
) -> None:
    """The stay's age at admission is computed from the Patient's birthDate at
    ingestion. A newer Patient version correcting the birth date, or without one, left
    the age computed from the old one; the age now follows (and an older version arriving
    late moves nothing)."""
    _fhir(engine, cipher, PATIENT, ENCOUNTER)
    assert _stay(engine).age_years == 56.0  # born 1970-02-03, admitted 2026-10-01

    corrected = _version(PATIENT, versionId="10")
    corrected["birthDate"] = "1980-12-31"
    assert _fhir(engine, cipher, corrected).updated == {"patient": 1}
    assert _stay(engine).age_years == 45.0

    assert _fhir(engine, cipher, PATIENT).updated == {}  # version 9, late
    assert _stay(engine).age_years == 45.0

    # A placeholder birth date gives no age: the range every stored age is held to
    # (it gave 226 years, which the model and the population rule then read).
    placeholder = _version(PATIENT, versionId="105")
    placeholder["birthDate"] = "1800-01-01"
    _fhir(engine, cipher, placeholder)
    assert _stay(engine).age_years is None
    _fhir(engine, cipher, _version(corrected, versionId="106"))
    assert _stay(engine).age_years == 45.0

    removed = _version(PATIENT, versionId="110")
    del removed["birthDate"]
    _fhir(engine, cipher, removed)
    assert "birth_date" not in _patient(engine, cipher)[0]
    assert _stay(engine).age_years is None
