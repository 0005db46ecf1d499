"""Model changes and ingest batches are audited in the same transaction as the action.

Registration, promotion and rollback (through the CLI, which any HTTP route shares via
``modeling.service``) each write one event; a promotion refused because the artifact was
altered leaves neither the promotion nor its success event, only a ``failure`` event.
Each ingest unit writes an ``ingest.batch`` event with its source and counts, naming its
patients by public id only (no MRN, name, birth date or visit number); rolled back, the
event goes with the data.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.hl7_samples import ADT_A01, ORU_R01
from tests.modeling_data import register_small_model
from vitalcast.cli import main
from vitalcast.clinical.records import PatientRecord, RecordBatch
from vitalcast.config import Settings
from vitalcast.ingest.service import store_batch
from vitalcast.modeling.service import get_champion
from vitalcast.security import audit
from vitalcast.security.crypto import FieldCipher
from vitalcast.security.tables import AuditEvent

TASK = "icu-mortality"


def _register(
    session: Session, registry: Path, seed: int, *, servable: bool = True
) -> tuple[str, Path]:
    return register_small_model(
        session,
        registry,
        seed,
        servable=servable,
        agent=audit.Agent("user:mo", role="data_scientist", client_addr="10.1.2.3"),
    )


def _model_events(session: Session) -> list[tuple[str, str, str, str | None, str | None]]:
    session.expire_all()
    return [
        (e.event, e.outcome, e.actor, e.resource, (e.details or {}).get("alias"))
        for e in session.scalars(
            select(AuditEvent).where(AuditEvent.event.startswith("model.")).order_by(AuditEvent.id)
        )
    ]


def _cli(settings: Settings, args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, obj={"settings": settings})
    return result.exit_code, result.output


def test_register_promote_rollback_are_audited(
    settings: Settings, db_session: Session, tmp_path: Path
) -> None:
    v1, _ = _register(db_session, tmp_path, 1)
    v2, path2 = _register(db_session, tmp_path, 2)
    v3, path3 = _register(db_session, tmp_path, 3)
    assert _model_events(db_session) == [
        ("model.registered", "success", "user:mo", f"model/{v1}", "champion"),
        ("model.registered", "success", "user:mo", f"model/{v2}", None),
        ("model.registered", "success", "user:mo", f"model/{v3}", None),
    ]
    registered = db_session.scalars(
        select(AuditEvent).where(AuditEvent.event == "model.registered")
    ).all()
    assert {(e.role, e.client_addr) for e in registered} == {("data_scientist", "10.1.2.3")}

    code, out = _cli(settings, ["models", "promote", v2])
    assert code == 0, out
    code, out = _cli(settings, ["models", "rollback", "--task", TASK])
    assert code == 0, out
    assert _model_events(db_session)[3:] == [
        ("model.promoted", "success", "cli", f"model/{v2}", "champion"),
        ("model.rolled_back", "success", "cli", f"model/{v1}", "champion"),
    ]
    promoted = db_session.scalars(
        select(AuditEvent).where(AuditEvent.event == "model.promoted")
    ).one()
    assert promoted.details == {"task": TASK, "alias": "champion", "replaced": v1}

    # An altered artifact: the promotion is refused and rolled back with its success
    # event; the refusal itself is recorded.
    data = bytearray(path3.read_bytes())
    data[len(data) // 2] ^= 0x01
    path3.write_bytes(bytes(data))
    code, out = _cli(settings, ["models", "promote", v3])
    assert code != 0
    assert "altered or corrupted" in out
    db_session.expire_all()
    assert get_champion(db_session, TASK).version == v1  # type: ignore[union-attr]
    last = _model_events(db_session)[5:]
    assert last == [("model.promoted", "failure", "cli", f"model/{v3}", "champion")]
    assert audit.verify_chain(db_session).ok
    assert path2.is_file()

    # An artifact that verifies and loads but cannot serve is refused the same way: the
    # servers would stay on the old model while the registry named the new one.
    v4, _ = _register(db_session, tmp_path, 4, servable=False)
    code, out = _cli(settings, ["models", "promote", v4])
    assert code != 0
    assert f"{v4} cannot be served" in out
    db_session.expire_all()
    assert get_champion(db_session, TASK).version == v1  # type: ignore[union-attr]
    assert _model_events(db_session)[-1] == (
        "model.promoted",
        "failure",
        "cli",
        f"model/{v4}",
        "champion",
    )


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_each_ingest_unit_is_audited_without_identifiers(
    settings: Settings, db_session: Session, tmp_path: Path
) -> None:
    adt = _write(tmp_path, "Testpatient-admit.hl7", ADT_A01)
    oru = _write(tmp_path, "results.hl7", ORU_R01)
    code, out = _cli(settings, ["ingest", "hl7", "--json", str(adt), str(oru)])
    assert code == 0, out
    report = json.loads(out)
    events = db_session.scalars(
        select(AuditEvent).where(AuditEvent.event == "ingest.batch").order_by(AuditEvent.id)
    ).all()
    assert len(events) == 2  # one per message (each message is a unit of work)
    assert {(e.actor, e.action, e.outcome) for e in events} == {("cli", "C", "success")}
    details = [e.details or {} for e in events]
    for key in ("received", "stored", "duplicates", "quarantined"):
        assert sum(d[key] for d in details) == report[key], key
    assert {d["source"] for d in details} == {"hl7v2"}
    assert sum(sum(d["reasons"].values()) for d in details) == report["quarantined"]
    assert all(e.resource == f"IngestRun/{e.details['run_id']}" for e in events if e.details)
    text = " ".join(json.dumps(e.details) + str(e.resource) + str(e.patient_id) for e in events)
    for identifier in ("MRN0001", "Testpatient", "Alpha", "19500102", "V0001"):
        assert identifier not in text


def test_ingest_audit_rolls_back_with_the_batch(db_session: Session, cipher: FieldCipher) -> None:
    batch = RecordBatch(patients=[PatientRecord(ref="p-rb", mrn="MRN-RB-1", name="Rolle Back")])
    agent = audit.Agent("mqtt:test")
    report = store_batch(db_session, batch, source="mqtt", location="b", cipher=cipher, agent=agent)
    assert report.stored == 1
    pending = db_session.scalars(select(AuditEvent).where(AuditEvent.event == "ingest.batch"))
    assert [e.actor for e in pending] == ["mqtt:test"]
    db_session.rollback()
    assert db_session.scalars(select(AuditEvent)).all() == []
