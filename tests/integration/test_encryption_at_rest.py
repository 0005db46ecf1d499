"""Direct identifiers never sit in the database in clear; keys rotate online.

Known synthetic identities are ingested (through the FHIR adapter into PostgreSQL, and
through the synthetic store into the SQLite demo file), the whole database is dumped
(``pg_dump``; the raw SQLite file and its WAL), and no name, MRN, birth date, phone,
e-mail or address may appear, neither as text nor hex-encoded (how a plain dump shows
bytea). MRN search through the keyed hash must still find each patient.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.services import pg_dump
from vitalcast.cli import main
from vitalcast.clinical.records import PatientRecord
from vitalcast.clinical.tables import Patient
from vitalcast.config import Settings
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.db.session import make_session_factory
from vitalcast.errors import ConfigError
from vitalcast.ingest.sources.fhir import SOURCE as FHIR_SOURCE
from vitalcast.ingest.sources.fhir import iter_units
from vitalcast.ingest.units import ingest_units
from vitalcast.security.crypto import FieldCipher, cipher_from_settings
from vitalcast.security.identifiers import find_patient_by_mrn, key_usage, rotate_identifiers
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.app import create_app
from vitalcast.serving.state import get_state
from vitalcast.synth.cohort import generate_cohort
from vitalcast.synth.fhir import write_fhir_ndjson
from vitalcast.synth.service import store_cohort

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _cohort_patients(seed: int) -> tuple[object, list[PatientRecord]]:
    batch = generate_cohort(n_current=6, n_historic=6, seed=seed, now=NOW)
    patients = [p for p in batch.patients if p.mrn and p.name and p.birth_date]
    assert len(patients) == 12
    return batch, patients


def _needles(patients: list[PatientRecord]) -> dict[str, str]:
    found: dict[str, str] = {}
    for p in patients:
        assert p.birth_date is not None
        values = [p.mrn, p.name, p.birth_date.isoformat(), p.birth_date.strftime("%Y%m%d")]
        values += [p.phone, p.email, p.address]
        for value in values:
            if value:
                found[value] = p.ref
    return found


def _leaks(data: bytes, needles: dict[str, str]) -> list[str]:
    lowered = data.lower()
    leaks = []
    for needle in needles:
        if needle.lower().encode() in lowered or needle.encode().hex().encode() in lowered:
            leaks.append(needle)
    return leaks


def test_pg_dump_holds_no_identifier_in_clear(
    settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    batch, patients = _cohort_patients(seed=11)
    folder = tmp_path / "fhir"
    folder.mkdir()
    write_fhir_ndjson(batch, folder / "cohort.ndjson")  # type: ignore[arg-type]
    # The library path of `vitalcast ingest fhir` (the command itself does not dispose of
    # its engine, which pytest reports as an unclosed connection).
    engine = create_db_engine(pg_url)
    cipher = cipher_from_settings(settings)
    result = ingest_units(
        make_session_factory(engine),
        iter_units([folder / "cohort.ndjson"]),
        source=FHIR_SOURCE,
        location="cohort.ndjson",
        cipher=cipher,
    )
    assert result is not None
    dump = pg_dump(pg_url)
    needles = _needles(patients)
    with Session(engine) as session:
        stored = session.scalar(select(Patient).where(Patient.identifiers_enc.is_not(None)))
        assert stored is not None, "the FHIR patients were not stored"
        assert stored.identifiers_enc is not None
        assert stored.identifiers_enc.hex() in dump.decode(), "the dump must hold the data"
        for p in patients:
            assert p.mrn is not None
            found = find_patient_by_mrn(session, cipher, f"  {p.mrn.lower()} ")
            assert found is not None, "MRN search through the HMAC failed"
            assert (
                cipher.decrypt(
                    found.identifiers_enc or b"",
                    found.key_id or "",
                    context=f"patient:{found.public_id}",
                )["name"]
                == p.name
            )
    engine.dispose()
    assert _leaks(dump, needles) == []


def test_sqlite_demo_file_holds_no_identifier_in_clear(tmp_path: Path) -> None:
    batch, patients = _cohort_patients(seed=12)
    cipher = FieldCipher.from_strings(
        "demo1:" + base64.b64encode(os.urandom(32)).decode(),
        base64.b64encode(os.urandom(32)).decode(),
    )
    path = tmp_path / "vitalcast.db"
    engine = create_db_engine(f"sqlite:///{path}")
    upgrade_database(engine)
    with Session(engine) as session:
        report = store_cohort(session=session, batch=batch, cipher=cipher, now=NOW)  # type: ignore[arg-type]
        assert report.count("patient").stored == 12
        assert find_patient_by_mrn(session, cipher, patients[0].mrn or "") is not None
    engine.dispose()
    raw = b"".join(f.read_bytes() for f in tmp_path.iterdir() if f.name.startswith("vitalcast.db"))
    assert len(raw) > 100_000
    assert _leaks(raw, _needles(patients)) == []


def test_the_leak_check_can_fail() -> None:
    needles = {"Kai Brost": "p1", "MRN0042": "p1"}
    assert _leaks(b"INSERT ... 'kai brost' ...", needles) == ["Kai Brost"]
    assert _leaks(b"\\x" + b"MRN0042".hex().encode(), needles) == ["MRN0042"]


def test_keys_rotate_reencrypts_online_and_keeps_search(
    settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    batch, patients = _cohort_patients(seed=13)
    old = cipher_from_settings(settings)
    engine = create_db_engine(pg_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        store_cohort(session=session, batch=batch, cipher=old, now=NOW)  # type: ignore[arg-type]
        assert key_usage(session) == {old.current: 12}
    new_key = "k2:" + base64.b64encode(os.urandom(32)).decode()
    assert settings.field_key is not None
    keyring = f"{new_key},{settings.field_key.get_secret_value()}"
    rotated_settings = settings.model_copy(update={"field_key": type(settings.field_key)(keyring)})
    new = cipher_from_settings(rotated_settings)
    assert new.current == "k2"

    seen: list[int] = []
    report = rotate_identifiers(sessions, new, batch_size=5, progress=seen.append)
    assert (report.rotated, report.batches, report.remaining) == (12, 3, 0)
    assert seen == [5, 10, 12]
    with sessions() as session:
        assert key_usage(session) == {"k2": 12}
        for p in patients:
            row = find_patient_by_mrn(session, new, p.mrn or "")
            assert row is not None
            ids = new.decrypt(
                row.identifiers_enc or b"", row.key_id or "", context=f"patient:{row.public_id}"
            )
            assert ids["mrn"] == p.mrn
            with pytest.raises(ValueError, match="unknown field-encryption key id"):
                old.decrypt(row.identifiers_enc or b"", row.key_id or "", context="x")
        events = session.scalars(select(AuditEvent).where(AuditEvent.event == "keys.rotated")).all()
        assert [e.details["rows"] for e in events if e.details] == [5, 5, 2]
    engine.dispose()

    # The CLI says what to do next, and a second run has nothing left to do.
    result = CliRunner().invoke(main, ["keys", "rotate"], obj={"settings": rotated_settings})
    assert result.exit_code == 0, result.output
    assert "re-encrypted 0 patients" in result.output
    assert "remove it from VITALCAST_FIELD_KEY" in result.output
    status = CliRunner().invoke(main, ["keys", "status"], obj={"settings": rotated_settings})
    assert "k2: 12 patients" in status.output


def test_rotation_refuses_rows_under_an_unknown_key(settings: Settings, pg_url: str) -> None:
    batch, _ = _cohort_patients(seed=14)
    engine = create_db_engine(pg_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        store_cohort(session=session, batch=batch, cipher=cipher_from_settings(settings), now=NOW)  # type: ignore[arg-type]
    stranger = FieldCipher.from_strings(
        "k9:" + base64.b64encode(os.urandom(32)).decode(),
        base64.b64encode(os.urandom(32)).decode(),
    )
    with pytest.raises(ValueError, match="not in VITALCAST_FIELD_KEY"):
        rotate_identifiers(sessions, stranger)
    engine.dispose()


@pytest.mark.parametrize(
    ("field_key", "expected"),
    [
        # Another key under the right key's id (an unnamed key is always k0): only a
        # decryption tells them apart.
        (
            lambda key_id: f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}",
            "does not decrypt",
        ),
        # The old key dropped from the ring before `keys rotate` ran.
        (lambda _: "k9:" + base64.b64encode(os.urandom(32)).decode(), "does not hold"),
    ],
    ids=["wrong-key", "retired-key-removed"],
)
def test_a_keyring_that_cannot_read_the_store_stops_the_server_at_start(
    settings: Settings, pg_url: str, field_key: Callable[[str], str], expected: str
) -> None:
    """A server started with a wrong field key used to start, then answer every ward
    list and patient read with an internal error (500), whatever the route."""
    batch, _ = _cohort_patients(seed=15)
    engine = create_db_engine(pg_url)
    with make_session_factory(engine)() as session:
        store_cohort(session=session, batch=batch, cipher=cipher_from_settings(settings), now=NOW)  # type: ignore[arg-type]
    engine.dispose()
    assert settings.field_key is not None
    wrong = settings.model_copy(
        update={
            "field_key": type(settings.field_key)(field_key(cipher_from_settings(settings).current))
        }
    )
    with pytest.raises(ConfigError, match=expected):
        create_app(wrong)
    result = CliRunner().invoke(main, ["serve"], obj={"settings": wrong})
    assert result.exit_code != 0
    assert expected in result.output
    assert "Patient.identifiers_enc" in result.output
    # The right keyring still starts.
    get_state(create_app(settings)).close()
