"""Hostile files and messages through the real CLI and MLLP socket into real PostgreSQL.

Every item is stored or quarantined with a reason; an unreadable file is named (exit 2)
while the others are still stored; no traceback, no identifier in the output. Each case
here was a 500, a traceback, a run stopped half-way or a silent drop before.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.exc import DBAPIError

from tests.hl7_samples import ADT_A01, ORU_R01, msa
from vitalcast.cli import main
from vitalcast.clinical.tables import Condition, Encounter, Observation, Patient
from vitalcast.db import create_db_engine
from vitalcast.db.session import make_session_factory
from vitalcast.ingest import mllp
from vitalcast.ingest.mllp import MllpServer, send_messages
from vitalcast.ingest.quarantine import decrypt_raw
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.security.crypto import FieldCipher

FAR = "99991231235959-1400"  # year 10000 in UTC: OverflowError when converted
WHEN = "2024-01-01T10:00:00Z"


@pytest.fixture
def run(pg_url: str, tmp_path: Path) -> Callable[..., Result]:
    env = {"VITALCAST_DATABASE_URL": pg_url, "VITALCAST_DATA_DIR": str(tmp_path / "var")}

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, ["ingest", *args], env=env)

    return invoke


def _count(pg_url: str, table: Any, *where: Any) -> int:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)
    finally:
        engine.dispose()


def _clean(result: Result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )


# -- FHIR ------------------------------------------------------------------------------------
def _observation(oid: str, when: str, **value: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        **(value or {"valueQuantity": {"value": 80, "unit": "/min"}}),
    }


def test_fhir_folder_goes_past_bad_files_and_reports_them(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    docs: dict[str, Any] = {
        "a-patient.json": {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-02"},
        "b-early.json": _observation("o1", "0001-01-01T00:00:00+14:00"),
        "c-late.json": _observation("o2", "9999-12-31T23:59:59-14:00"),
        "d-huge.json": _observation("o3", "2024-01-01T10:00:00Z", valueQuantity={"value": 0}),
        "e-long-id.json": {"resourceType": "Patient", "id": "x" * 220},
        "f-text.json": _observation("o4", "2024-01-01T10:00:00Z", valueString="fast " * 100),
        "g-hr-text.json": _observation("o5", "2024-01-01T10:00:00Z", valueString="fast"),
        # Lax validation reads "80" as 80; FHIR JSON numbers are never strings.
        "h-text-number.json": _observation(
            "o8", "2024-01-01T10:00:00Z", valueQuantity={"value": "80", "unit": "/min"}
        ),
        "z-good.json": _observation("o6", "2024-01-01T10:00:00Z"),
    }
    for name, doc in docs.items():
        (folder / name).write_text(json.dumps(doc))
    # A JSON integer of 400 digits is valid FHIR (decimal) but no float.
    huge = (folder / "d-huge.json").read_text().replace('"value": 0', '"value": 1' + "0" * 400)
    (folder / "d-huge.json").write_text(huge)
    (folder / "c2-truncated.json").write_text(json.dumps(_observation("o7", "x"))[:40])

    result = run("fhir", str(folder), "--json")
    _clean(result)
    assert result.exit_code == 2, result.output  # one file could not be read at all
    report = json.loads(result.stdout)
    assert [e.split(":")[0] for e in report["errors"]] == ["export/c2-truncated.json"]
    assert "malformed JSON" in report["errors"][0]
    assert report["balanced"] is True
    reasons = report["reasons"]
    assert reasons["time_out_of_range"] == 2
    assert reasons["non_numeric_value"] == 2  # the 400-digit value and the text-only HR
    assert reasons["too_long"] == 2  # the 220-character id, the 500-character text
    assert reasons["invalid_value"] == 1
    by_location = {r["location"].split("#")[0]: r for r in report["rejects"]}
    assert "must be a JSON number" in by_location["export/h-text-number.json"]["reason"]
    assert "1800-2200" in by_location["export/b-early.json"]["reason"]
    assert "patient ref is 228 characters" in by_location["export/e-long-id.json"]["reason"]
    # Files after the bad ones were read and stored.
    assert _count(pg_url, Observation) == 1
    assert _count(pg_url, Patient) == 1
    assert _count(pg_url, QuarantineItem) == report["quarantined"]


def test_fhir_time_reasons_name_the_field_never_the_date(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    """A date of care is an identifier (HIPAA): the reasons for an unreadable time,
    printed and stored in the quarantine, named the field and quoted the value."""
    folder = tmp_path / "times"
    folder.mkdir()
    times = {"day": "2024-03-17", "naive": "2024-03-17T10:41:00", "bad": "2024-03-17Tnoon"}
    for name, when in times.items():
        (folder / f"{name}.json").write_text(json.dumps(_observation(name, when)))
    result = run("fhir", str(folder), "--json")
    _clean(result)
    report = json.loads(result.stdout)
    # FHIR's own pattern refuses the naive and the garbled time first (a time of day
    # needs a zone); the mapper's rule refuses the day-precision one.
    assert report["reasons"] == {"imprecise_time": 1, "invalid_resource": 2}
    assert all("effectiveDateTime" in r["reason"] or "effective time" in r["reason"]
               for r in report["rejects"])  # fmt: skip
    assert "2024" not in json.dumps(report["rejects"])


def test_fhir_patient_birth_date_out_of_range_is_quarantined(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"resourceType": "Patient", "id": "p9", "birthDate": "0001-01-01"}))
    result = run("fhir", str(path), "--json")
    _clean(result)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["reasons"] == {"time_out_of_range": 1}
    assert _count(pg_url, Patient) == 0


def test_unreadable_fhir_file_exits_2_with_one_line(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "cut.json"
    path.write_text('{"resourceType": "Bundle", "type": "collection", "entry": [')
    result = run("fhir", str(path))
    _clean(result)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith("error: cut.json: malformed JSON at line 1")


def _stay(eid: str, status: str, period: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": status,
        "class": {"code": "IMP"},
        "subject": {"reference": "Patient/es-pat"},
        "period": period,
        **extra,
    }


def _collection(*resources: dict[str, Any]) -> str:
    return json.dumps(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in resources],
        }
    )


def test_fhir_encounter_that_is_no_stay_in_progress_is_never_stored_as_one(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    """Withdrawn Encounters are no stays, and a finished one without a readable end is
    quarantined: each was stored as a stay in progress, which rescoring and monitoring
    took up and an observation sent without an encounter joined. A later version that
    finishes a real stay with its end still discharges it."""
    start = {"start": "2026-11-20T10:00:00Z"}
    hr = _observation("es-hr", "2026-11-21T10:00:00Z")
    hr["subject"] = {"reference": "Patient/es-pat"}
    (tmp_path / "stays.json").write_text(
        _collection(
            {"resourceType": "Patient", "id": "es-pat"},
            _stay("es-error", "entered-in-error", start),
            _stay("es-cancelled", "cancelled", start),
            _stay("es-day", "finished", {**start, "end": "2026-11-25"}),
            _stay("es-open", "finished", start),
            _stay("es-planned", "planned", start),
            hr,
        )
    )
    result = run("fhir", str(tmp_path / "stays.json"), "--json", "--no-rescore")
    _clean(result)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["balanced"] is True
    assert report["reasons"] == {
        "entered_in_error": 1,
        "cancelled": 1,
        "imprecise_time": 1,
        "no_discharge_time": 1,
        "planned": 1,
    }
    where = {r["location"].rsplit("/", 1)[-1]: r["reason"] for r in report["rejects"]}
    assert set(where) == {"es-error)", "es-cancelled)", "es-day)", "es-open)", "es-planned)"}
    assert "period.end" in where["es-day)"]
    assert "no time of day" in where["es-day)"]
    assert _count(pg_url, Encounter) == 0
    assert _count(pg_url, Observation, Observation.encounter_id.is_(None)) == 1

    # A real discharge: version 2 of a stay in progress finishes it with its end time.
    meta = {"versionId": "1", "lastUpdated": "2026-11-20T10:05:00Z"}
    (tmp_path / "v1.json").write_text(
        _collection(_stay("es-stay", "in-progress", start, meta=meta))
    )
    assert run("fhir", str(tmp_path / "v1.json"), "--no-rescore").exit_code == 0
    meta = {"versionId": "2", "lastUpdated": "2026-11-25T09:05:00Z"}
    ended = {**start, "end": "2026-11-25T09:00:00Z"}
    (tmp_path / "v2.json").write_text(_collection(_stay("es-stay", "finished", ended, meta=meta)))
    result = run("fhir", str(tmp_path / "v2.json"), "--json", "--no-rescore")
    _clean(result)
    assert json.loads(result.stdout)["updated"] == {"encounter": 1}
    assert _count(pg_url, Encounter, Encounter.discharged_at.is_(None)) == 0
    assert (
        _count(pg_url, Encounter, Encounter.discharged_at == datetime(2026, 11, 25, 9, tzinfo=UTC))
        == 1
    )


def test_fhir_malformed_bundle_entries_are_quarantined_one_by_one(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    """An entry of the wrong shape anywhere in a Bundle dropped the whole file as an
    "internal error" (exit 2): now it is quarantined at its path, the rest is stored."""
    entries: list[Any] = [
        {"resource": {"resourceType": "Patient", "id": "es-pat"}},
        {"resource": _stay("es-stay", "in-progress", {"start": "2026-11-20T10:00:00Z"})},
        {"request": "POST"},
        {
            "resource": {
                "resourceType": "DiagnosticReport",
                "id": "d",
                "status": "final",
                "code": {"text": "x"},
                "effectivePeriod": "bad",
            }
        },
        5,
        {"resource": None},
        {"fullUrl": {"a": 1}, "resource": {"resourceType": "Patient", "id": "es-2"}},
        {"resource": {"resourceType": "Bundle", "type": "collection", "entry": 5}},
        {"request": {"method": "DELETE", "url": "Patient/old"}},
        # null stands in a list whose extension (_given) holds the value: valid FHIR.
        {"resource": {"resourceType": "Patient", "id": "es-3", "name": [{"given": [None, "A"]}]}},
    ]
    path = tmp_path / "w6.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}))
    result = run("fhir", str(path), "--json", "--no-rescore")
    _clean(result)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["balanced"] is True
    assert report["reasons"] == {"malformed_entry": 4, "invalid_resource": 2, "delete_request": 1}
    assert report["skipped"] == {}
    where = sorted(r["location"] for r in report["rejects"])
    assert where == [
        "w6.json#Bundle.entry[2]",
        "w6.json#Bundle.entry[3].resource(DiagnosticReport/d)",
        "w6.json#Bundle.entry[4]",
        "w6.json#Bundle.entry[5]",
        "w6.json#Bundle.entry[6]",
        "w6.json#Bundle.entry[7].resource(Bundle/)",
        "w6.json#Bundle.entry[8].request(DELETE Patient)",
    ]
    assert _count(pg_url, Patient) == 2
    assert _count(pg_url, Encounter) == 1
    assert _count(pg_url, QuarantineItem) == 7


def test_fhir_delete_requests_are_quarantined_not_counted_away(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    """A transaction's DELETE was only counted as skipped: the sender's deletion went
    unseen while the reading it meant stayed stored and scored. Nothing is deleted on
    request; the DELETE is quarantined saying how to retract, without echoing its URL
    (a conditional one can hold an identifier). A search (GET) entry is still counted."""
    stored = [
        {"resource": {"resourceType": "Patient", "id": "p1"}},
        {"resource": _observation("dl-hr", "2026-11-20T11:00:00Z")},
    ]
    first = tmp_path / "dl1.json"
    first.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": stored}))
    assert run("fhir", str(first), "--json", "--no-rescore").exit_code == 0
    assert _count(pg_url, Observation) == 1
    requests = [
        {"request": {"method": "DELETE", "url": "Observation/dl-hr"}},
        {"request": {"method": "DELETE", "url": "Patient?identifier=MRN-SECRET-4711"}},
        {"request": {"method": "GET", "url": "Observation?patient=p1"}},
    ]
    second = tmp_path / "dl2.json"
    second.write_text(json.dumps({"resourceType": "Bundle", "type": "batch", "entry": requests}))
    result = run("fhir", str(second), "--json", "--no-rescore")
    _clean(result)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["balanced"] is True
    assert report["skipped"] == {"request:GET": 1}
    assert [(r["location"], r["reason_code"]) for r in report["rejects"]] == [
        ("dl2.json#Bundle.entry[0].request(DELETE Observation)", "delete_request"),
        ("dl2.json#Bundle.entry[1].request(DELETE Patient)", "delete_request"),
    ]
    assert "entered-in-error" in report["rejects"][0]["reason"]
    assert "MRN-SECRET-4711" not in result.stdout + result.stderr
    assert report["by_kind"]["observation"]["quarantined"] == 1
    assert _count(pg_url, Observation) == 1  # nothing deleted on request
    assert _count(pg_url, QuarantineItem) == 2


# -- HL7 v2 ----------------------------------------------------------------------------------
def _hl7_with(base: str, segment: str, index: int, value: str) -> str:
    out = []
    for line in base.split("\r"):
        if line.startswith(segment + "|"):
            fields = line.split("|")
            fields += [""] * (index + 1 - len(fields))
            fields[index] = value
            line = "|".join(fields)
        out.append(line)
    return "\r".join(out)


def test_hl7_out_of_range_times_and_bad_birth_date_are_quarantined(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    far_admit = _hl7_with(_hl7_with(ADT_A01, "MSH", 6, FAR), "PV1", 44, FAR)
    far_result = _hl7_with(
        _hl7_with(ORU_R01, "MSH", 9, "ORU0002").replace("F|||20240301095500+0000|", f"F|||{FAR}|"),
        "OBR",
        7,
        FAR,
    )
    bad_birth = _hl7_with(_hl7_with(ADT_A01, "MSH", 9, "ADM0009"), "PID", 7, "19501399").replace(
        "MRN0001", "MRN0009"
    )
    folder = tmp_path / "messages"
    folder.mkdir()
    (folder / "a-first.hl7").write_text("\r".join([ADT_A01, far_result]))
    (folder / "b-far.hl7").write_text(far_admit.replace("MRN0001", "MRN0002"))
    (folder / "c-nopid.hl7").write_text(
        "\r".join(s for s in ADT_A01.split("\r") if not s.startswith("PID"))
    )
    (folder / "d-latin1.hl7").write_bytes(ADT_A01.replace("Alpha", "Zoë").encode("latin-1"))
    (folder / "e-birth.hl7").write_text(bad_birth)

    result = run("hl7", str(folder), "--json")
    _clean(result)
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout)
    assert len(report["errors"]) == 2
    assert "without a PID segment" in report["errors"][0]
    assert "not UTF-8" in report["errors"][1]
    reasons = report["reasons"]
    assert reasons["time_out_of_range"] >= 2  # the admission (PV1-44) and the result (OBX-14)
    assert reasons["bad_birth_date"] == 1
    assert "19501399" not in result.output  # a birth date is an identifier
    # The file after the unreadable ones was read: its patient is quarantined, with reason.
    assert any(r["location"].endswith("#ADM0009.PID") for r in report["rejects"])
    assert _count(pg_url, Patient) == 2  # MRN0001 and MRN0002 (stored, its stay quarantined)
    assert report["balanced"] is True


def test_hl7_text_for_a_numeric_variable_is_quarantined_like_every_source(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    oru = ORU_R01.replace("OBX|7|ST|99999-9^Something else^LN||text", "OBX|7|ST|8867-4^HR^LN||fast")
    (tmp_path / "adt.hl7").write_text(ADT_A01)
    (tmp_path / "oru.hl7").write_text(oru)
    result = run("hl7", str(tmp_path / "adt.hl7"), str(tmp_path / "oru.hl7"), "--json")
    _clean(result)
    report = json.loads(result.stdout)
    text_rejects = [r for r in report["rejects"] if r["location"].endswith("OBX[7]")]
    assert [r["reason_code"] for r in text_rejects] == ["non_numeric_value"]


# -- Text PostgreSQL cannot store: NUL, unpaired surrogates --------------------------------
# Before, one such character failed its whole file or message (DataError: the quarantine
# row itself held it): the valid items beside it were lost, and nothing said where.
def _stored_whole(result: Result) -> dict[str, Any]:
    """The --json report of a run that read every unit (exit 0, no errors, balanced)."""
    _clean(result)
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["errors"] == []
    assert report["balanced"] is True
    return report


def test_fhir_items_with_nul_or_surrogates_are_quarantined_and_the_rest_stored(
    run: Callable[..., Result], pg_url: str, tmp_path: Path, cipher: FieldCipher
) -> None:
    nul_code = {"system": "http://loinc.org", "code": "88\u00007-4"}
    surrogate_unit = {"value": 81, "unit": "/min\ud800"}
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-02"}},
            {"resource": {**_observation("nul-code", WHEN), "code": {"coding": [nul_code]}}},
            {
                "resource": {
                    "resourceType": "Encounter",
                    "id": "e1",
                    "status": "in-progress",
                    "class": {"code": "IMP"},
                    "subject": {"reference": "Patient/p1"},
                    "period": {"start": "2024-01-01T08:00:00Z"},
                    "location": [{"location": {"display": "MICU\u0000 bed 4"}}],
                }
            },
            {"resource": _observation("surrogate", WHEN, valueQuantity=surrogate_unit)},
            {"resource": _observation("good", WHEN)},
        ],
    }
    path = tmp_path / "bundle.json"
    # json.dumps writes NUL and the lone surrogate as \u escapes, as a sender would.
    path.write_text(json.dumps(bundle))
    report = _stored_whole(run("fhir", str(path), "--json", "--no-rescore"))
    rejects = {r["location"].split("#", 1)[1]: r for r in report["rejects"]}
    assert len(rejects) == 3
    nul = sorted(r["reason"] for r in rejects.values() if r["reason_code"] == "invalid_text")
    assert nul == [
        "encounter unit contains a NUL character; it cannot be stored",
        "observation code contains a NUL character; it cannot be stored",
    ]
    # The FHIR model already refuses the surrogate in a Quantity's unit (invalid_resource);
    # its quarantine row, which holds it, is stored all the same.
    surrogate = next(r for k, r in rejects.items() if "Observation/surrogate" in k)
    assert surrogate["reason_code"] in ("invalid_resource", "invalid_text")
    assert all(r["location"].startswith("bundle.json#") for r in report["rejects"])
    # The patient and the valid observation of the same file are stored.
    assert (_count(pg_url, Patient), _count(pg_url, Observation)) == (1, 1)
    assert _count(pg_url, Encounter) == 0
    engine = create_engine(pg_url)
    with make_session_factory(engine)() as session:
        items = list(session.scalars(select(QuarantineItem)))
    engine.dispose()
    assert len(items) == 3
    raws = [decrypt_raw(cipher, i) or "" for i in items]
    assert any("88\\u00007-4" in raw for raw in raws)
    assert all("\x00" not in raw and "\ud800" not in raw for raw in raws)
    assert "88\\u00007-4" in {i.code for i in items}


def _hl7_nul_messages() -> tuple[str, str]:
    """An admission, and a result message whose first OBX code holds a NUL."""
    oru = ORU_R01.replace("OBX|1|NM|8867-4^", "OBX|1|NM|88\x007-4^")
    assert "\x00" in oru
    return ADT_A01, oru


def test_hl7_file_with_a_nul_quarantines_the_item_and_stores_the_rest(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    adt, oru = _hl7_nul_messages()
    path = tmp_path / "feed.hl7"
    path.write_bytes("\r".join([adt, oru]).encode())
    report = _stored_whole(run("hl7", str(path), "--json", "--no-rescore"))
    nul = [r for r in report["rejects"] if r["reason_code"] == "invalid_text"]
    assert len(nul) == 1
    assert nul[0]["location"].endswith("OBX[1]")
    assert "observation code contains a NUL character" in nul[0]["reason"]
    assert "\x00" not in json.dumps(report, ensure_ascii=False)
    assert _count(pg_url, Patient) == 1
    assert _count(pg_url, Observation) >= 2  # OBX 2 and 3 of the same message


# -- CSV -------------------------------------------------------------------------------------
DIABETES_HEADER = next(
    csv.reader(
        [
            "encounter_id,patient_nbr,race,gender,age,weight,admission_type_id,"
            "discharge_disposition_id,admission_source_id,time_in_hospital,payer_code,"
            "medical_specialty,num_lab_procedures,num_procedures,num_medications,number_outpatient,"
            "number_emergency,number_inpatient,diag_1,diag_2,diag_3,number_diagnoses,max_glu_serum,"
            "A1Cresult,metformin,repaglinide,nateglinide,chlorpropamide,glimepiride,acetohexamide,"
            "glipizide,glyburide,tolbutamide,pioglitazone,rosiglitazone,acarbose,miglitol,"
            "troglitazone,tolazamide,examide,citoglipton,insulin,glyburide-metformin,"
            "glipizide-metformin,glimepiride-pioglitazone,metformin-rosiglitazone,"
            "metformin-pioglitazone,change,diabetesMed,readmitted"
        ]
    )
)
FIRST_ROW = next(
    csv.reader(
        [
            "2278392,8222157,Caucasian,Female,[0-10),?,6,25,1,1,?,Pediatrics-Endocrinology,41,0,1,0,"
            "0,0,250.83,?,?,1,None,None,No,No,No,No,No,No,No,No,No,No,No,No,No,No,No,No,No,No,No,No,"
            "No,No,No,No,No,NO"
        ]
    )
)


def _csv(rows: list[dict[str, str]], extra: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=DIABETES_HEADER + extra, lineterminator="\n")
    writer.writeheader()
    for n, changes in enumerate(rows):
        row = dict(zip(DIABETES_HEADER, FIRST_ROW, strict=True))
        row["encounter_id"] = str(1000 + n)
        row["patient_nbr"] = str(500 + n)
        row |= {c: "" for c in extra}
        row.update(changes)
        writer.writerow(row)
    return out.getvalue()


def test_csv_rows_are_checked_one_by_one_and_unknown_columns_never_stored(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    secret = "John Smith MRN 12345"
    path = tmp_path / "export.csv"
    path.write_text(
        _csv(
            [
                {"patient_name": secret, "ssn": "078-05-1120"},  # good row, extra columns
                {"num_procedures": "inf"},
                {"num_procedures": "1e400"},
                {"patient_nbr": "9" * 400},
                {"diag_1": "4" * 100},
                {"gender": secret},
                {"num_medications": ""},
            ],
            extra=["patient_name", "ssn"],
        )
    )
    result = run("csv", "--profile", "diabetes130", str(path), "--json")
    _clean(result)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["balanced"] is True
    assert report["ignored_columns"] == ["patient_name", "ssn"]
    reasons = {r["location"]: (r["reason_code"], r["reason"]) for r in report["rejects"]}
    assert reasons["export.csv:3"] == ("invalid_row", "num_procedures: not a finite number")
    assert reasons["export.csv:4"] == ("invalid_row", "num_procedures: not a finite number")
    # The patient, and every record of the row referring to it, name the field and limit.
    assert reasons["export.csv:5"][0] == "too_long"
    assert "is 412 characters; at most 200 are stored" in reasons["export.csv:5"][1]
    assert reasons["export.csv:6 diag_1"] == (
        "too_long",
        "condition code is 100 characters; at most 64 are stored",
    )
    assert reasons["export.csv:7"][0] == "invalid_row"
    assert reasons["export.csv:7"][1].startswith("gender: unknown category (expected one of:")
    assert reasons["export.csv:8"] == ("invalid_row", "num_medications: empty, expected a number")
    assert secret not in result.output
    assert "078-05-1120" not in result.output
    # The good row and the one whose only fault is a diagnosis code are stored.
    assert _count(pg_url, Encounter) == 2
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT attributes::text FROM encounters")).scalars().all()
    finally:
        engine.dispose()
    assert stored
    for attributes in stored:
        assert "patient_name" not in attributes
        assert "ssn" not in attributes
        assert secret not in attributes
    assert _count(pg_url, Condition, Condition.code == "4" * 100) == 0


def test_database_error_is_one_line_without_parameters(
    run: Callable[..., Result], pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the length check, a 400-character patient number fails in PostgreSQL:
    the CLI says so in one line that carries neither the statement nor the value."""
    from vitalcast.ingest import service

    monkeypatch.setattr(service, "within_limits", lambda batch, _reject: batch)
    nbr = "8" * 400
    path = tmp_path / "long.csv"
    path.write_text(_csv([{"patient_nbr": nbr}], extra=[]))
    result = run("csv", "--profile", "diabetes130", str(path))
    _clean(result)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: database error (StringDataRightTruncation); the interrupted unit of work"
        " was rolled back"
    )
    assert nbr not in result.output
    assert _count(pg_url, Patient) == 0


def test_engine_hides_parameters_of_failed_statements(pg_url: str) -> None:
    engine = create_db_engine(pg_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("CREATE TEMP TABLE notes (v varchar(5))"))
            insert = text("INSERT INTO notes VALUES (:v)")
            with pytest.raises(DBAPIError) as info:
                conn.execute(insert, {"v": "Zelda Quintrell MRN-1"})
    finally:
        engine.dispose()
    assert "Zelda" not in str(info.value)
    assert "parameters hidden" in str(info.value)


# -- MLLP ------------------------------------------------------------------------------------
@pytest.fixture
def server(mllp_server: MllpServer) -> MllpServer:
    return mllp_server


def test_mllp_acknowledges_every_message_whatever_fails(
    server: MllpServer, pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    far = _hl7_with(_hl7_with(ADT_A01, "PV1", 44, FAR), "MSH", 6, FAR)
    far_result = ORU_R01.replace("F|||20240301095500+0000|", f"F|||{FAR}|")
    acks = send_messages("127.0.0.1", server.port, [far, ADT_A01, far_result])
    assert [msa(a)[1] for a in acks] == ["AA", "AA", "AA"]
    assert "time_out_of_range 1" in msa(acks[0])[3]  # the stay, quarantined with reason

    # A failure nobody foresaw (here: the parser raising OverflowError) is an AR with
    # ERR-3 207, not a connection closed without an ACK that the sender resends forever;
    # the connection stays usable.
    def broken(*_a: Any, **_k: Any) -> Any:
        raise OverflowError("date value out of range")

    monkeypatch.setattr(mllp, "parse_message", broken)
    poison = ADT_A01.replace("ADM0001", "ADM0666")
    acks = send_messages("127.0.0.1", server.port, [poison, poison])
    assert [msa(a)[1:3] for a in acks] == [["AR", "ADM0666"], ["AR", "ADM0666"]]
    assert "internal error OverflowError" in msa(acks[0])[3]
    assert any(s.startswith("ERR|||207^") for s in acks[0].split("\r"))
    with make_session_factory(pg_engine)() as s:
        reasons = sorted(s.scalars(select(QuarantineItem.reason_code)))
    assert reasons.count("time_out_of_range") == 2


def test_mllp_message_with_a_nul_is_accepted_with_the_item_quarantined(
    server: MllpServer, pg_engine: Engine
) -> None:
    adt, oru = _hl7_nul_messages()
    acks = send_messages("127.0.0.1", server.port, [adt, oru])
    fields = [msa(a) for a in acks]
    assert [m[1] for m in fields] == ["AA", "AA"], fields
    assert "quarantined" in fields[1][3]
    with make_session_factory(pg_engine)() as s:
        assert s.scalar(select(func.count()).select_from(Observation)) >= 2
        reasons = list(s.scalars(select(QuarantineItem.reason_code)))
    assert reasons.count("invalid_text") == 1


SHIFT_PROFILE = """\
name: shift
source: shift
patient: {ref: pid}
encounter:
  ref: eid
  admitted_at: 2020-01-01T00:00:00Z
  attributes: {numeric: [a], columns: [b]}
"""


def _stored_attributes(pg_url: str) -> dict[str, Any]:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT source_ref, attributes FROM encounters")).all()
    finally:
        engine.dispose()
    return {ref: attributes for ref, attributes in rows}


def test_csv_row_with_more_fields_than_the_header_is_quarantined_not_shifted(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    """A trailing delimiter made pandas take the first column as the index: every cell
    moved one column left and the file was stored under the wrong patient."""
    profile = tmp_path / "shift.yaml"
    profile.write_text(SHIFT_PROFILE)
    path = tmp_path / "shift.csv"
    path.write_text("eid,pid,a,b\n100,200,5,6,\n101,201,7,8\n")
    result = run("csv", "--profile", str(profile), str(path), "--json")
    _clean(result)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["balanced"] is True
    reasons = {r["location"]: (r["reason_code"], r["reason"]) for r in report["rejects"]}
    assert reasons == {"shift.csv:2": ("malformed_line", "5 fields, the header has 4")}
    assert _stored_attributes(pg_url) == {"shift:101": {"a": 7, "b": "8"}}


def test_csv_whose_every_row_ends_in_a_delimiter_is_refused(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    """With every row one field too long (an export's trailing delimiter), the file was
    stored shifted (or quarantined as "gender: unknown category"): it is refused."""
    path = tmp_path / "trailing.csv"
    path.write_text(
        "".join(
            line + ",\n" if n else line + "\n"
            for n, line in enumerate(_csv([{}, {}], []).splitlines())
        )
    )
    result = run("csv", "--profile", "diabetes130", str(path))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(
        "error: trailing.csv: every row has more fields than the header"
    )
    assert "first at line 2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _count(pg_url, Encounter) == 0


@pytest.mark.parametrize("suffix", [".xz", ".zip", ".zst", ".gz", ".bz2"])
def test_corrupt_compressed_csv_exits_2_with_one_line(
    run: Callable[..., Result], tmp_path: Path, suffix: str
) -> None:
    """Corrupt .xz and .zip (and .zst without zstandard) ended in "internal error"."""
    path = tmp_path / f"f.csv{suffix}"
    path.write_text("x\n")
    result = run("csv", "--profile", "diabetes130", str(path))
    _clean(result)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: f.csv{suffix}: cannot read as CSV (")
    assert "bug" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_csv_locations_are_the_lines_of_the_file(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    """Rows were numbered from 2 by position: a blank line or a quoted line break made
    every later location point at the wrong line."""
    rows = _csv(
        [{}, {"gender": "X"}, {"medical_specialty": "Family\nMedicine"}, {"gender": "Y"}], []
    )
    header, first, bad, more = rows.split("\n", 3)
    # header (1), blank (2), row (3), blank (4), bad row (5), row over lines 6-7, bad (8)
    path = tmp_path / "blank.csv"
    path.write_text("\n".join([header, "", first, "", bad, more]))
    result = run("csv", "--profile", "diabetes130", str(path), "--json")
    _clean(result)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    locations = sorted(r["location"] for r in report["rejects"])
    assert locations == ["blank.csv:5", "blank.csv:8"]
    assert report["by_kind"]["encounter"]["stored"] == 2


def _physionet_record(record_id: int, **descriptors: str) -> str:
    values = {"Age": "71", "Gender": "1", "Height": "-1", "ICUType": "3", "Weight": "80"}
    values |= descriptors
    lines = ["Time,Parameter,Value", f"00:00,RecordID,{record_id}"]
    lines += [f"00:00,{name},{value}" for name, value in values.items()]
    return "\n".join([*lines, "00:10,HR,88", ""])


def test_physionet_descriptors_that_are_not_finite_or_plausible_are_quarantined(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    """NaN, Infinity and 300 were stored as the stay's age (an infinite age passed the
    population's "15 or over"); text and an unknown ICU type were dropped silently."""
    folder = tmp_path / "set-x"
    folder.mkdir()
    cases = {
        1: {"Age": "nan"},
        2: {"Age": "inf"},
        3: {"Age": "300"},
        4: {"Age": "abc"},
        5: {"Weight": "abc"},
        6: {"ICUType": "9"},
        7: {"Gender": "2"},
        8: {"Age": "-1", "Gender": "-1", "ICUType": "-1", "Weight": "-1"},  # not recorded
    }
    for record_id, descriptors in cases.items():
        (folder / f"{record_id}.txt").write_text(_physionet_record(record_id, **descriptors))
    outcomes = tmp_path / "Outcomes.txt"
    outcomes.write_text(
        "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
        + "".join(f"{n},10,5,4,-1,0\n" for n in cases)
    )
    result = run("physionet2012", str(folder), "--outcomes", str(outcomes), "--json")
    _clean(result)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["balanced"] is True
    rejects = {
        r["location"]: f"{r['reason_code']}: {r['reason']}"
        for r in report["rejects"]
        if r["kind"] == "descriptor"
    }
    assert rejects == {
        "set-x/1.txt:3": "non_numeric_value: Age: not a finite number",
        "set-x/2.txt:3": "non_numeric_value: Age: not a finite number",
        "set-x/3.txt age_years": "implausible_value: Age 300 years outside plausible range 0-130",
        "set-x/4.txt:3": "non_numeric_value: Age: not a number",
        "set-x/5.txt:7": "non_numeric_value: Weight: not a number",
        "set-x/6.txt:6": "implausible_value: ICUType: not one of the codes 1, 2, 3, 4",
        "set-x/7.txt:4": "implausible_value: Gender: not one of the codes 0, 1",
    }
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                text("SELECT source_ref, age_years, weight_kg, unit FROM encounters")
            ).all()
    finally:
        engine.dispose()
    by_ref = {ref.removeprefix("physionet2012:"): tuple(rest) for ref, *rest in stored}
    # Every stay is stored, without the value that could not be read.
    assert by_ref == {
        "1": (None, 80.0, "MICU"),
        "2": (None, 80.0, "MICU"),
        "3": (None, 80.0, "MICU"),
        "4": (None, 80.0, "MICU"),
        "5": (71.0, None, "MICU"),
        "6": (71.0, 80.0, None),
        "7": (71.0, 80.0, "MICU"),
        "8": (None, None, None),
    }
