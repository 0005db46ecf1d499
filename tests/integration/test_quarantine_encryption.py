"""Quarantined raw items are encrypted at rest, shown only to permitted roles, audited.

A FHIR Patient that fails validation is quarantined with its raw resource, which names
the patient and gives the MRN; the stored bytes and a ``pg_dump`` of the database must not
contain the name or the MRN (neither as text nor hex-encoded, as a dump shows bytea).
Reading the raw item back needs ``identifiers:read``; a data scientist is refused, and
both are audited.
Migration 0007 encrypts rows that were stored in clear before it, and key rotation
re-encrypts quarantine rows too.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from tests.services import pg_dump
from vitalcast.cli import main
from vitalcast.config import Settings
from vitalcast.db import create_db_engine
from vitalcast.db.session import downgrade_database, make_session_factory, upgrade_database
from vitalcast.errors import Forbidden
from vitalcast.ingest.quarantine import decrypt_raw, list_quarantine
from vitalcast.ingest.sources.fhir import SOURCE as FHIR_SOURCE
from vitalcast.ingest.sources.fhir import parse_bytes
from vitalcast.ingest.tables import IngestRun, QuarantineItem
from vitalcast.ingest.units import store_unit
from vitalcast.security import audit
from vitalcast.security.crypto import FieldCipher, cipher_from_settings
from vitalcast.security.identifiers import quarantine_key_usage as key_usage
from vitalcast.security.identifiers import rotate_identifiers
from vitalcast.security.service import create_user
from vitalcast.security.tables import AuditEvent

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NAME = "Quenby"
SURNAME = "Zyxwald"
MRN = "MRNQZ778812"


PATIENT = {
    "resourceType": "Patient",
    "id": "p-quar-1",
    "identifier": [{"type": {"text": "MR"}, "system": "urn:mrn", "value": MRN}],
    "name": [{"family": SURNAME, "given": [NAME]}],
    "gender": "female",
    "birthDate": "1961-13-45",  # no 13th month: the resource is quarantined whole
}
OBSERVATION = {
    "resourceType": "Observation",
    "id": "o-quar-1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    "subject": {"reference": "Patient/p-quar-1"},
    "effectiveDateTime": "2026-10-30T10:00:00Z",
    "valueQuantity": {"value": 88, "unit": "/min", "system": "http://unitsofmeasure.org"},
}


def msg_text() -> str:
    """The rejected Patient resource as the quarantine keeps it (compact JSON)."""
    return json.dumps(PATIENT)


def _leaks(data: bytes) -> list[str]:
    found = []
    low = data.lower()
    for needle in (MRN, SURNAME, NAME):
        if needle.lower().encode() in low or needle.encode().hex().encode() in low:
            found.append(needle)
    return found


def _store_rejected(session: Session, cipher: FieldCipher) -> int:
    """Ingest a bundle whose Patient is invalid; returns how many items were quarantined."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": PATIENT}, {"resource": OBSERVATION}],
    }
    unit = parse_bytes(json.dumps(bundle).encode(), "bad-patient.json")
    report = store_unit(session, unit, source=FHIR_SOURCE, cipher=cipher, now=NOW)
    session.commit()
    assert report.reasons == {"invalid_resource": 1, "unknown_patient": 1}
    return report.quarantined


def test_quarantined_raw_bytes_hold_no_identifier(
    pg_engine: Engine, pg_url: str, cipher: FieldCipher
) -> None:
    assert MRN in msg_text()
    assert SURNAME in msg_text()
    with Session(pg_engine) as session:
        assert _store_rejected(session, cipher) == 2
        items = session.scalars(select(QuarantineItem)).all()
        assert all(i.raw_enc is not None and i.key_id == cipher.current for i in items)
        for item in items:
            assert _leaks(item.raw_enc or b"") == []
        # Decrypting gives the message back: the item is kept, only not in clear.
        raws = [decrypt_raw(cipher, i) for i in items]
        assert msg_text() in raws
        # The ciphertext is bound to its row: moved to another row it does not decrypt.
        a, b = items[0], items[1]
        moved = QuarantineItem(run_id=b.run_id, location=b.location, raw_enc=a.raw_enc)
        moved.key_id = a.key_id
        with pytest.raises(ValueError, match="failed authentication"):
            decrypt_raw(cipher, moved)
    dump = pg_dump(pg_url)
    assert b"COPY public.quarantine" in dump
    assert _leaks(dump) == []
    assert _leaks(b"... " + MRN.encode() + b" ...") == [MRN]  # the check can fail


def test_raw_items_shown_only_with_identifiers_read_and_audited(
    pg_engine: Engine, cipher: FieldCipher
) -> None:
    with Session(pg_engine, expire_on_commit=False) as session:
        n = _store_rejected(session, cipher)
        scientist = audit.Agent("user:dora", role="data_scientist", client_addr="10.0.0.9")
        listed = list_quarantine(session, agent=scientist, source="fhir")
        assert len(listed) == n
        assert {r.raw_state for r in listed} == {"withheld"}
        assert all(r.raw is None for r in listed)
        with pytest.raises(Forbidden, match="identifiers:read"):
            list_quarantine(session, agent=scientist, cipher=cipher, reveal=True)
        session.commit()
        admin = audit.Agent("user:ada", role="admin", client_addr="10.0.0.1")
        shown = list_quarantine(session, agent=admin, cipher=cipher, reveal=True, limit=500)
        session.commit()
        assert {r.raw_state for r in shown} == {"shown"}
        assert msg_text() in [r.raw for r in shown]
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.event.like("quarantine.%")).order_by(AuditEvent.id)
        ).all()
        summary = [(e.event, e.actor, e.outcome) for e in events]
        assert summary[:2] == [
            ("quarantine.listed", "user:dora", "success"),
            ("quarantine.raw_viewed", "user:dora", "denied"),
        ]
        viewed = [e for e in events[2:] if e.event == "quarantine.raw_viewed"]
        assert len(viewed) == n
        assert {(e.actor, e.role, e.outcome) for e in viewed} == {("user:ada", "admin", "success")}
        assert {e.resource for e in viewed} == {f"QuarantineItem/{r.id}" for r in shown}
        assert summary[-1] == ("quarantine.listed", "user:ada", "success")
        assert all(_leaks(str(e.details).encode()) == [] for e in events)
        assert audit.verify_chain(session).ok


def test_cli_reveals_only_for_a_permitted_user(settings: Settings, pg_engine: Engine) -> None:
    cipher = cipher_from_settings(settings)
    with Session(pg_engine) as session:
        _store_rejected(session, cipher)
        create_user(session, username="dora", password="x" * 16, role="data_scientist")
        create_user(session, username="ada", password="x" * 16, role="admin")
        session.commit()
    runner = CliRunner()
    obj = {"settings": settings}
    listing = runner.invoke(main, ["ingest", "quarantine"], obj=obj)
    assert listing.exit_code == 0, listing.output
    assert "(withheld: encrypted)" in listing.output
    assert SURNAME not in listing.output
    refused = runner.invoke(main, ["ingest", "quarantine", "--raw", "--as", "dora"], obj=obj)
    assert refused.exit_code == 1
    assert "identifiers:read" in refused.output
    assert SURNAME not in refused.output
    shown = runner.invoke(main, ["ingest", "quarantine", "--raw", "--as", "ada"], obj=obj)
    assert shown.exit_code == 0, shown.output
    assert SURNAME in shown.output
    with Session(pg_engine) as session:
        outcomes = session.scalars(
            select(AuditEvent.outcome).where(
                AuditEvent.event == "quarantine.raw_viewed", AuditEvent.actor == "user:dora"
            )
        ).all()
        assert outcomes == ["denied"]


def test_rotation_reencrypts_quarantine(settings: Settings, pg_engine: Engine) -> None:
    old = cipher_from_settings(settings)
    with Session(pg_engine) as session:
        n = _store_rejected(session, old)
        assert key_usage(session) == {old.current: n}
    assert settings.field_key is not None
    keyring = "k7:" + base64.b64encode(os.urandom(32)).decode()
    keyring += "," + settings.field_key.get_secret_value()
    new = FieldCipher.from_strings(keyring, base64.b64encode(old.hmac_key).decode())
    report = rotate_identifiers(make_session_factory(pg_engine), new, batch_size=2)
    assert (report.quarantine_rotated, report.remaining) == (n, 0)
    with Session(pg_engine) as session:
        assert key_usage(session) == {"k7": n}
        assert msg_text() in [decrypt_raw(new, i) for i in session.scalars(select(QuarantineItem))]
        rotated = session.scalars(
            select(AuditEvent).where(AuditEvent.resource == "QuarantineItem.raw_enc")
        ).all()
        assert sum((e.details or {})["rows"] for e in rotated) == n


def _plain_rows(engine: Engine) -> None:
    with engine.begin() as conn:
        run_id = conn.execute(
            text(
                "INSERT INTO ingest_runs (source, location, started_at, received, stored,"
                " duplicates, quarantined) VALUES ('fhir', 'old.json', :t, 2, 0, 0, 2)"
                " RETURNING id"
            ),
            {"t": NOW.replace(tzinfo=None)},
        ).scalar_one()
        for n, raw in enumerate((msg_text(), None)):
            conn.execute(
                text(
                    "INSERT INTO quarantine (run_id, source, location, reason_code, reason,"
                    " raw, received_at) VALUES (:r, 'fhir', :loc, 'invalid_resource',"
                    " 'bad gender', :raw, :t)"
                ),
                {
                    "r": run_id,
                    "loc": f"old.json#entry[{n}]",
                    "raw": raw,
                    "t": NOW.replace(tzinfo=None),
                },
            )


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_migration_0007_encrypts_existing_rows_and_downgrades(
    backend: str,
    pg_url: str,
    cipher: FieldCipher,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if backend == "postgresql":
        engine = create_db_engine(pg_url)
    else:
        engine = create_db_engine(f"sqlite:///{tmp_path / 'demo.db'}")
        upgrade_database(engine)
    downgrade_database(engine, "0006")
    _plain_rows(engine)
    # Without a key (production settings never invent one), the upgrade refuses and
    # changes nothing.
    with monkeypatch.context() as env:
        for name in [k for k in os.environ if k.startswith("VITALCAST_")]:
            env.delenv(name)
        env.setenv("VITALCAST_ENV", "production")
        with pytest.raises(RuntimeError, match="must encrypt or decrypt 1 quarantined raw items"):
            upgrade_database(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(raw) FROM quarantine")).scalar_one() == 1
    upgrade_database(engine, cipher=cipher)
    with Session(engine) as session:
        items = session.scalars(select(QuarantineItem).order_by(QuarantineItem.id)).all()
        assert [i.raw_enc is not None for i in items] == [True, False]
        assert _leaks(items[0].raw_enc or b"") == []
        assert decrypt_raw(cipher, items[0]) == msg_text()
        assert session.scalar(select(IngestRun.quarantined)) == 2
    downgrade_database(engine, "0006", cipher=cipher)
    with engine.connect() as conn:
        raws = conn.execute(text("SELECT raw FROM quarantine ORDER BY id")).scalars().all()
    assert raws == [msg_text(), None]
    upgrade_database(engine, cipher=cipher)
    engine.dispose()
