"""``vitalcast export --deidentified``: each of the 18 Safe Harbor identifiers is checked.

Two patients with every kind of identifier vitalcast can hold (including identifiers
hidden in free text, source references, device ids and study UIDs) are stored; the
extract is then searched, category by category (45 CFR 164.514(b)(2)(i)(A)-(R)).
"""

from __future__ import annotations

import base64
import csv
import json
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.cli import main
from vitalcast.clinical.records import (
    ConditionRecord,
    EncounterRecord,
    ImagingStudyRecord,
    ObservationRecord,
    OutcomeRecord,
    PatientRecord,
    RecordBatch,
)
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.config import Settings
from vitalcast.ingest.service import store_batch
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.security.deid import age_category, shift_days
from vitalcast.security.tables import AuditEvent

ADMIT_A = datetime(2025, 3, 14, 8, 30, tzinfo=UTC)
ADMIT_B = datetime(2025, 7, 2, 22, 5, tzinfo=UTC)

PHI = {
    "A": ["Zelda Quintrell", "Quintrell", "Orsolya Bakerfield", "Bakerfield"],
    "B": ["42 Harrow Lane", "Springfield", "01101", "Brimley Court"],
    "D": ["555-0142", "555-0177"],
    "F": ["zelda.q@example.org", "orsolya@example.org"],
    "H": ["MRN-771234", "MRN-220981"],
    "J": ["VISIT-99887766", "ACCT-5544"],
    "M": ["MONITOR-SN-ABC123"],
    "Q": ["1.2.840.113619.2.55.3.604688119"],
}


def _batch() -> RecordBatch:
    batch = RecordBatch()
    batch.patients += [
        PatientRecord(
            ref="pa",
            sex="female",
            mrn="MRN-771234",
            name="Zelda Quintrell",
            birth_date=date(1931, 2, 14),
            address="42 Harrow Lane, Springfield, MA 01101",
            phone="555-0142",
            email="zelda.q@example.org",
            source_ref="pa",
        ),
        PatientRecord(
            ref="pb",
            sex="male",
            mrn="MRN-220981",
            name="Orsolya Bakerfield",
            birth_date=date(1980, 6, 30),
            address="7 Brimley Court, Sampleford",
            phone="555-0177",
            email="orsolya@example.org",
        ),
    ]
    batch.encounters += [
        EncounterRecord(
            ref="VISIT-99887766",
            patient_ref="pa",
            admitted_at=ADMIT_A,
            discharged_at=ADMIT_A + timedelta(days=4, hours=2),
            unit="MICU",
            age_years=95.2,
            height_cm=160.0,
            weight_kg=55.0,
            attributes={
                "number_inpatient": 2,
                "insulin": True,
                "payer_note": "plan member HP-5544332211, see https://portal.example.org/x",
            },
            source_ref="VISIT-99887766",
        ),
        EncounterRecord(
            ref="ACCT-5544", patient_ref="pb", admitted_at=ADMIT_B, unit="SICU", age_years=44.9
        ),
    ]
    hr_at = ADMIT_A + timedelta(hours=3, minutes=15)
    batch.observations += [
        ObservationRecord(
            patient_ref="pa",
            encounter_ref="VISIT-99887766",
            code="8867-4",
            value=88.0,
            unit="/min",
            effective_at=hr_at,
            device_id="MONITOR-SN-ABC123",
        ),
        ObservationRecord(
            patient_ref="pb", encounter_ref="ACCT-5544", code="8867-4", value=101.0,
            unit="/min", effective_at=ADMIT_B + timedelta(hours=1),
        ),
    ]  # fmt: skip
    batch.conditions.append(
        ConditionRecord(
            patient_ref="pa",
            encounter_ref="VISIT-99887766",
            system="http://hl7.org/fhir/sid/icd-10",
            code="A41.9",
            display="Sepsis, per Dr note for Zelda Quintrell",
            onset_at=ADMIT_A + timedelta(hours=6),
        )
    )
    batch.imaging_studies.append(
        ImagingStudyRecord(
            patient_ref="pa",
            encounter_ref="VISIT-99887766",
            study_uid="1.2.840.113619.2.55.3.604688119",
            modality="CT",
            body_part="HEAD",
            started_at=ADMIT_A + timedelta(hours=5),
            description="CT head Quintrell",
        )
    )
    batch.outcomes.append(
        OutcomeRecord(
            patient_ref="pa",
            encounter_ref="VISIT-99887766",
            kind="in_hospital_death",
            value=1.0,
            occurred_at=ADMIT_A + timedelta(days=4, hours=2),
        )
    )
    return batch


@pytest.fixture
def stored(settings: Settings, db_session: Session) -> Session:
    report = store_batch(
        db_session,
        _batch(),
        source="test",
        location="deid",
        cipher=cipher_from_settings(settings),
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert report.quarantined == 0, report.reasons
    # Ingest quarantines a text value of a (numeric) vocabulary variable as
    # non_numeric_value; a row stored before that rule can still hold free text, which
    # the export must drop, so one is written directly.
    enc = db_session.scalars(select(Encounter).where(Encounter.source_ref == "VISIT-99887766"))
    stay = enc.one()
    db_session.add(
        Observation(
            patient_id=stay.patient_id,
            encounter_id=stay.id,
            code="8867-4",
            value_text="daughter asks to call 555-0142 or zelda.q@example.org from 10.1.2.3",
            effective_at=ADMIT_A + timedelta(hours=3, minutes=20),
            source="test",
            source_ref="legacy",
            dedup_key=uuid.uuid4(),
        )
    )
    db_session.commit()
    return db_session


def _export(settings: Settings, out: Path, *extra: str) -> dict[str, str]:
    result = CliRunner().invoke(
        main, ["export", "--deidentified", str(out), *extra], obj={"settings": settings}
    )
    assert result.exit_code == 0, result.output
    return {f.name: f.read_text() for f in sorted(out.iterdir())}


@pytest.fixture
def extract(settings: Settings, stored: Session, tmp_path: Path) -> dict[str, str]:
    return _export(settings, tmp_path / "extract")


def _all(files: dict[str, str]) -> str:
    return "\n".join(files.values())


def _rows(files: dict[str, str], name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(files[name].splitlines()))


@pytest.mark.parametrize("category", sorted(PHI))
def test_direct_identifiers_are_absent(extract: dict[str, str], category: str) -> None:
    # A names, B addresses/ZIP, D phones, F e-mails, H MRNs, J account numbers,
    # M device serials, Q image UIDs: not a trace, in any file, in any case.
    text = _all(extract).lower()
    for value in PHI[category]:
        assert value.lower() not in text, (category, value)


def test_C_dates_are_years_and_ages_over_89_are_grouped(extract: dict[str, str]) -> None:
    dates = re.findall(r"\d{4}-\d{2}-\d{2}", _all(extract))
    assert dates == [], dates
    for needle in ("1931", "1980", "14/03", "03/14"):
        assert needle not in _all(extract)
    encounters = _rows(extract, "encounters.csv")
    assert sorted(e["age_years"] for e in encounters) == ["44", "90+"]
    assert {e["admitted"] for e in encounters} == {"2025"}
    a = next(e for e in encounters if e["age_years"] == "90+")
    assert float(a["length_of_stay_hours"]) == pytest.approx(98.0)
    obs = _rows(extract, "observations.csv")
    assert sorted(float(o["minutes_since_admission"]) for o in obs) == [60.0, 195.0]
    assert age_category(89.99) == "89"
    assert age_category(90.0) == "90+"


def test_C_shifted_dates_move_each_patient_consistently(
    settings: Settings, stored: Session, tmp_path: Path
) -> None:
    files = _export(settings, tmp_path / "shifted", "--dates", "shift")
    encounters = {e["age_years"]: e for e in _rows(files, "encounters.csv")}
    obs = _rows(files, "observations.csv")
    key = base64.b64decode(settings.hmac_key.get_secret_value())  # type: ignore[union-attr]
    for age, admitted in (("90+", ADMIT_A), ("44", ADMIT_B)):
        enc = encounters[age]
        shifted = datetime.fromisoformat(enc["admitted"])
        offset = shifted - admitted
        assert offset != timedelta(0)
        assert abs(offset) <= timedelta(days=365)
        public_id = stored.scalar(
            select(Patient.public_id)
            .join(Encounter, Encounter.patient_id == Patient.id)
            .where(Encounter.admitted_at == admitted)
        )
        assert offset == timedelta(days=shift_days(key, "default", str(public_id)))
        for o in (o for o in obs if o["encounter_id"] == enc["encounter_id"]):
            moved = datetime.fromisoformat(o["effective"]) - shifted
            assert moved.total_seconds() / 60 == pytest.approx(float(o["minutes_since_admission"]))
    manifest = json.loads(files["manifest.json"])
    assert "expert determination" in manifest["method"]


def test_E_G_I_K_L_P_numbers_vitalcast_never_holds(extract: dict[str, str]) -> None:
    # Fax, SSN, health plan, certificate/licence and vehicle numbers and biometrics have
    # no column in the store; the plan number hidden in a free-text attribute is dropped.
    text = _all(extract)
    assert "HP-5544332211" not in text
    assert re.search(r"\b\d{3}-\d{2}-\d{4}\b", text) is None  # SSN shape
    assert re.search(r"\b\d{3}-\d{4}\b", text) is None  # phone/fax shape
    header_words = " ".join(f.splitlines()[0] for n, f in extract.items() if n.endswith(".csv"))
    for word in ("fax", "ssn", "plan", "licen", "vehicle", "biometric", "photo", "zip"):
        assert word not in header_words.lower()


def test_N_O_urls_and_ip_addresses_are_absent(extract: dict[str, str]) -> None:
    csvs = "\n".join(v for k, v in extract.items() if k.endswith(".csv"))
    # Code system URIs name vocabularies, not people; no other URL may appear.
    urls = set(re.findall(r"https?://[^\s,\"]+", csvs))
    assert urls <= {"http://hl7.org/fhir/sid/icd-10"}, urls
    assert "example.org" not in csvs
    assert re.search(r"\b\d{1,3}(\.\d{1,3}){3}\b", csvs) is None


def test_R_other_unique_codes_are_replaced(extract: dict[str, str], stored: Session) -> None:
    text = _all(extract)
    public_ids = stored.scalars(select(Patient.public_id)).all()
    public_ids += stored.scalars(select(Encounter.public_id)).all()
    for pid in public_ids:
        assert pid not in text
    for ref in ("pa", "pb"):
        assert f",{ref}," not in text
    encounters = _rows(extract, "encounters.csv")
    assert len({e["patient_id"] for e in encounters}) == 2
    obs = _rows(extract, "observations.csv")
    assert {o["patient_id"] for o in obs} == {e["patient_id"] for e in encounters}


def test_free_text_is_dropped_and_numbers_kept(extract: dict[str, str]) -> None:
    text = _all(extract)
    for fragment in ("daughter", "Sepsis, per", "CT head", "payer_note"):
        assert fragment not in text
    a = next(e for e in _rows(extract, "encounters.csv") if e["age_years"] == "90+")
    assert json.loads(a["attributes"]) == {"insulin": True, "number_inpatient": 2}
    conditions = _rows(extract, "conditions.csv")
    assert [(c["code"], c["onset"]) for c in conditions] == [("A41.9", "2025")]
    imaging = _rows(extract, "imaging.csv")
    assert [(i["modality"], i["body_part"]) for i in imaging] == [("CT", "HEAD")]
    manifest = json.loads(extract["manifest.json"])
    assert manifest["dropped"] == {"encounter_text_attributes": 1, "observation_text_values": 1}
    assert len(manifest["identifiers"]) == 18


def test_export_is_audited_and_refuses_a_used_folder(
    settings: Settings, stored: Session, extract: dict[str, str], tmp_path: Path
) -> None:
    event = stored.scalars(select(AuditEvent).where(AuditEvent.event == "data.exported")).one()
    assert event.details is not None
    assert event.details["method"] == "safe_harbor"
    assert event.details["rows"]["encounters.csv"] == 2
    result = CliRunner().invoke(
        main, ["export", "--deidentified", str(tmp_path / "extract")], obj={"settings": settings}
    )
    assert result.exit_code == 1
    assert "not an empty folder" in result.output


def test_research_ids_differ_per_project(
    settings: Settings, stored: Session, tmp_path: Path
) -> None:
    one = _rows(_export(settings, tmp_path / "p1", "--project", "one"), "encounters.csv")
    two = _rows(_export(settings, tmp_path / "p2", "--project", "two"), "encounters.csv")
    assert {e["patient_id"] for e in one}.isdisjoint({e["patient_id"] for e in two})
