"""Property-based fuzzing of the CSV, HL7 v2 and FHIR entry points, through the store.

For arbitrary bytes and garbled rows/fields, reading either fails with the project's
clear input error (:class:`~vitalcast.errors.IngestError`, message starting with the
input's name) or yields a unit that the store takes without raising; and what the store
wrote is exactly what its report says: per kind, the new rows in the database equal the
report's stored count (less replacements), quarantine rows equal quarantined items, and
received = stored + duplicates + quarantined. Nothing is half-written.

Runs on PostgreSQL (one database for the module; each example rolls back), the store a
hospital runs: it refuses text that SQLite keeps (a NUL character, an unpaired
surrogate), so fuzzing on SQLite once hid a file that failed whole on PostgreSQL.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from tests.hl7_samples import ADT_A01, ADT_A03, ORU_R01
from tests.services import DatabaseFactory
from vitalcast.clinical.tables import Condition, Encounter, Observation, Outcome, Patient
from vitalcast.db import create_db_engine
from vitalcast.errors import IngestError
from vitalcast.ingest.files import ingest_csv
from vitalcast.ingest.report import IngestReport
from vitalcast.ingest.sources import csv as csv_source
from vitalcast.ingest.sources.fhir import SOURCE as FHIR
from vitalcast.ingest.sources.fhir import parse_bytes
from vitalcast.ingest.sources.hl7v2 import SOURCE as HL7
from vitalcast.ingest.sources.hl7v2 import decode_text, parse_message
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.ingest.units import store_unit
from vitalcast.security.crypto import FieldCipher

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
KINDS = {
    "patient": Patient,
    "encounter": Encounter,
    "observation": Observation,
    "condition": Condition,
    "outcome": Outcome,
}
CIPHER = FieldCipher.from_strings(
    "fz1:" + base64.b64encode(os.urandom(32)).decode(), base64.b64encode(os.urandom(32)).decode()
)


@pytest.fixture(scope="module")
def store(databases: DatabaseFactory) -> Iterator[Engine]:
    engine = create_db_engine(databases.new())
    with Session(engine) as session:  # a known patient and stay for HL7 results to join
        msg = parse_message(ADT_A01, origin="seed.hl7", pseudonym=CIPHER.mrn_hash)
        store_unit(session, msg.unit, source=HL7, cipher=CIPHER, now=NOW)
        session.commit()
    yield engine
    engine.dispose()


def _counts(session: Session) -> dict[str, int]:
    tables = {**KINDS, "quarantine": QuarantineItem}
    return {k: session.scalar(select(func.count()).select_from(t)) or 0 for k, t in tables.items()}


def _check(engine: Engine, name: str, write: Callable[[Session], IngestReport]) -> None:
    """Run ``write``: a clear IngestError and nothing written, or exactly its report."""
    error: str | None = None
    with Session(engine) as session:
        before = _counts(session)
        try:
            report = write(session)
        except IngestError as exc:
            error = str(exc)
        after = _counts(session)
        session.rollback()
    if error is not None:
        _note("input error")
        assert error.startswith(name), error
        return
    _note("stored" if report.stored else "nothing stored")
    assert report.balanced(), report.to_dict()
    for kind in KINDS:
        counts = report.kinds.get(kind)
        new_rows = (counts.stored if counts else 0) - report.updated.get(kind, 0)
        assert after[kind] - before[kind] == new_rows, (kind, report.to_dict())
    assert after["quarantine"] - before["quarantine"] == report.quarantined


# -- CSV ---------------------------------------------------------------------------------
PROFILE = csv_source.load_profile("diabetes130")
COLUMNS = sorted(PROFILE.required_columns())
GARBAGE = st.one_of(
    st.sampled_from(["?", "", "None", "-1", "1e308", "nan", "12345678901234567890", "[9-1)"]),
    st.text(max_size=12),
)
VALID = {
    "age": st.sampled_from(["[0-10)", "[70-80)", "[90-100)"]),
    "gender": st.sampled_from(["Female", "Male", "Unknown/Invalid"]),
    "readmitted": st.sampled_from(["NO", "<30", ">30"]),
    "time_in_hospital": st.integers(1, 14).map(str),
    "encounter_id": st.integers(1, 50).map(str),
    "patient_nbr": st.integers(1, 20).map(str),
}
DIAG = st.sampled_from(["250.01", "V57", "428", "?"])


@st.composite
def garbled_row(draw: st.DrawFn) -> list[str]:
    """A plausible row with zero to two cells replaced by garbage."""
    row = [draw(VALID.get(c, DIAG)) for c in COLUMNS]
    for i in draw(st.lists(st.integers(0, len(COLUMNS) - 1), max_size=2)):
        row[i] = draw(GARBAGE)
    return row


ROW = garbled_row()


def _note(text: str) -> None:
    """Hypothesis statistics (``--hypothesis-show-statistics``); no-op outside a test."""
    with contextlib.suppress(Exception):  # called outside a Hypothesis test
        event(text)


def _csv_bytes(rows: list[list[str]], header: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def _ingest_csv_bytes(engine: Engine, data: bytes, tmp: Path) -> None:
    path = tmp / "fuzz.csv"
    path.write_bytes(data)
    _check(
        engine,
        "fuzz.csv",
        lambda s: ingest_csv(s, path, profile="diabetes130", cipher=CIPHER, now=NOW),
    )


@FUZZ
@given(data=st.binary(max_size=400))
def test_csv_arbitrary_bytes(store: Engine, tmp_path: Path, data: bytes) -> None:
    _ingest_csv_bytes(store, data, tmp_path)


@FUZZ
@given(rows=st.lists(ROW, max_size=6), drop=st.one_of(st.none(), st.integers(0, len(COLUMNS) - 1)))
# Found by this test: a length of stay of 1e308 days overflowed and crashed the file.
@example(
    rows=[["[0-10)", "250.01", "250.01", "250.01", "1", "Female", "1", "NO", "1e308"]], drop=None
)
def test_csv_garbled_rows(
    store: Engine, tmp_path: Path, rows: list[list[str]], drop: int | None
) -> None:
    """Every required column present (or, by ``drop``, one of them missing)."""
    header = [c for i, c in enumerate(COLUMNS) if i != drop]
    body = [[v for i, v in enumerate(r) if i != drop] for r in rows]
    _ingest_csv_bytes(store, _csv_bytes(body, header), tmp_path)


# -- HL7 v2 ------------------------------------------------------------------------------
def _ingest_hl7(engine: Engine, data: bytes) -> None:
    def write(session: Session) -> IngestReport:
        text = decode_text(data, "fuzz.hl7")
        msg = parse_message(text, origin="fuzz.hl7", pseudonym=CIPHER.mrn_hash)
        return store_unit(session, msg.unit, source=HL7, cipher=CIPHER, now=NOW)

    _check(engine, "fuzz.hl7", write)


@FUZZ
@given(data=st.binary(max_size=300))
def test_hl7_arbitrary_bytes(store: Engine, data: bytes) -> None:
    _ingest_hl7(store, data)


@FUZZ
@given(data=st.data())
def test_hl7_garbled_fields(store: Engine, data: st.DataObject) -> None:
    """One to three fields of a real ADT^A01/A03 or ORU^R01 replaced by arbitrary text."""
    segments = data.draw(st.sampled_from([ADT_A01, ADT_A03, ORU_R01])).split("\r")
    for _ in range(data.draw(st.integers(1, 3))):
        s = data.draw(st.integers(0, len(segments) - 1))
        fields = segments[s].split("|")
        f = data.draw(st.integers(1, len(fields) - 1))
        fields[f] = data.draw(st.text(st.characters(codec="utf-8"), max_size=25))
        segments[s] = "|".join(fields)
    _ingest_hl7(store, "\r".join(segments).encode())


@pytest.mark.parametrize("msh2", ["00&", "^^\\&", "^~\\^", "^~a&"])
def test_hl7_coinciding_delimiters_are_a_clear_error(msh2: str) -> None:
    """Found by the fuzzer: MSH-2 characters that coincide made the hl7 package fail an
    internal assertion instead of a parse error."""
    fields = ADT_A01.split("\r")[0].split("|")
    fields[1] = msh2
    text = "\r".join(["|".join(fields), *ADT_A01.split("\r")[1:]])
    with pytest.raises(IngestError, match=r"^fuzz\.hl7: not an HL7 v2 message \(MSH-1/MSH-2"):
        parse_message(text, origin="fuzz.hl7", pseudonym=CIPHER.mrn_hash)


# -- FHIR JSON ---------------------------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=300))
def test_fhir_arbitrary_bytes(store: Engine, data: bytes) -> None:
    _check(
        store,
        "fuzz.json",
        lambda s: store_unit(
            s, parse_bytes(data, "fuzz.json"), source=FHIR, cipher=CIPHER, now=NOW
        ),
    )


def test_the_check_can_fail(store: Engine) -> None:
    """A report that claims less than what was written is caught."""

    def lying(session: Session) -> IngestReport:
        session.add(Patient(source="x", source_ref="liar"))
        session.flush()
        report = IngestReport(source="x", location="y")
        report.count("patient").received = 1
        report.count("patient").duplicates = 1
        return report

    with pytest.raises(AssertionError, match="patient"):
        _check(store, "y", lying)
