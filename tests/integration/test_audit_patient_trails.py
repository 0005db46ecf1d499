"""A patient's audit trail shows the bulk writes and ward reads that concerned them.

Bulk imports (the CLI, the HL7 MLLP listener, the MQTT consumer) write one
``ingest.batch`` event per unit of work, naming in ``details.patients`` the public ids
of the patients it wrote data about; ward reads (``patient.list``) name theirs the same
way. The per-patient trail (``audit export --patient``, the admin page and
``GET /api/v1/audit-events?patient_id=``, all through ``audit.about_patient``) finds
them there, on the real paths and PostgreSQL.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.conftest import Credentials
from tests.hl7_samples import ADT_A01, ORU_R01, msa
from tests.mqtt_helpers import Publisher, consuming, fresh_config
from vitalcast.cli import main
from vitalcast.clinical.records import PatientRecord, RecordBatch
from vitalcast.clinical.tables import Patient
from vitalcast.config import Settings
from vitalcast.db.session import make_session_factory, session_scope
from vitalcast.ingest.devices import bind_device
from vitalcast.ingest.mllp import MllpServer, send_messages
from vitalcast.ingest.mqtt import DeviceStreamConsumer
from vitalcast.ingest.service import store_batch
from vitalcast.security.audit import AuditFilter
from vitalcast.security.crypto import FieldCipher
from vitalcast.security.tables import AuditEvent


def _batches(engine: Engine) -> list[dict[str, Any]]:
    with make_session_factory(engine)() as s:
        rows = s.scalars(
            select(AuditEvent.details)
            .where(AuditEvent.event == "ingest.batch")
            .order_by(AuditEvent.id)
        ).all()
    return [dict(d or {}) for d in rows]


def _trail(engine: Engine, public_id: str) -> list[tuple[str, str | None]]:
    """(event, resource) of every event in the patient's trail, oldest first."""
    query = AuditFilter(patient_id=public_id).apply(select(AuditEvent).order_by(AuditEvent.id))
    with make_session_factory(engine)() as s:
        return [(e.event, e.resource) for e in s.scalars(query)]


def _public_ids(engine: Engine) -> list[str]:
    with make_session_factory(engine)() as s:
        return sorted(s.scalars(select(Patient.public_id)))


@pytest.mark.shared_data
def test_a_cli_import_is_in_the_trail_of_each_patient_it_wrote(
    settings: Settings, pg_engine: Engine, small_set: Path, shared_data: Path, tmp_path: Path
) -> None:
    outcomes = shared_data / "physionet2012" / "Outcomes-a.txt"

    def cli(*args: str) -> str:
        result = CliRunner().invoke(main, list(args), obj={"settings": settings})
        assert result.exit_code == 0, result.output
        return result.output

    cli("ingest", "physionet2012", str(small_set), "--outcomes", str(outcomes))
    patients = _public_ids(pg_engine)
    assert len(patients) == 10  # small_set: the first 10 records
    (first,) = _batches(pg_engine)
    assert first["patients"] == patients  # public ids only, sorted
    assert first["stored"] > 0
    # audit export --patient (the admin page shares AuditFilter) finds the import.
    out = tmp_path / "trail.jsonl"
    cli("audit", "export", "--patient", patients[0], "--out", str(out))
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(e["event"], e["resource"]) for e in exported] == [
        ("ingest.batch", f"IngestRun/{first['run_id']}")
    ]
    # The same file again stores nothing new (all duplicates): it names nobody.
    cli("ingest", "physionet2012", str(small_set), "--outcomes", str(outcomes))
    again = _batches(pg_engine)[1]
    assert (again["stored"], again["patients"]) == (0, [])
    assert len(_trail(pg_engine, patients[0])) == 1


def test_hl7_messages_over_mllp_are_in_the_patients_trail(
    mllp_server: MllpServer, pg_engine: Engine
) -> None:
    acks = send_messages("127.0.0.1", mllp_server.port, [ADT_A01, ORU_R01])
    assert [msa(a)[1] for a in acks] == ["AA", "AA"]
    (patient,) = _public_ids(pg_engine)
    admit, results = _batches(pg_engine)
    assert admit["patients"] == [patient]  # the patient and their stay were stored
    # Results: the patient is a duplicate, three readings stored, five quarantined.
    assert (results["stored"], results["patients"]) == (3, [patient])
    assert _trail(pg_engine, patient) == [
        ("ingest.batch", f"IngestRun/{admit['run_id']}"),
        ("ingest.batch", f"IngestRun/{results['run_id']}"),
    ]
    text = json.dumps([admit, results])
    for identifier in ("MRN0001", "Testpatient", "Alpha", "19500102"):
        assert identifier not in text


def test_mqtt_batches_are_in_the_trail_of_the_patients_they_wrote(
    mqtt_url: str, pg_engine: Engine, cipher: FieldCipher
) -> None:
    factory = make_session_factory(pg_engine)
    t0 = datetime.now(UTC) - timedelta(hours=1)
    with session_scope(factory) as s:
        batch = RecordBatch(patients=[PatientRecord(ref="m1"), PatientRecord(ref="m2")])
        store_batch(s, batch, source="test", location="t", cipher=cipher)
    with factory() as s:
        ids = {ref: pid for ref, pid in s.execute(select(Patient.source_ref, Patient.public_id))}
    with session_scope(factory) as s:
        bind_device(s, device_id="mon-a", patient_public_id=ids["m1"], now=t0)
    config = fresh_config(mqtt_url)
    prefix = config.topic_prefix
    consumer = DeviceStreamConsumer(factory, cipher, config)
    readings = [
        {
            "code": "8867-4",
            "value": 80 + i,
            "unit": "/min",
            "time": (t0 + timedelta(minutes=i + 1)).isoformat(),
        }
        for i in range(3)
    ]
    with consuming(consumer):
        pub = Publisher(mqtt_url, f"pub-{uuid.uuid4().hex[:8]}")
        for reading in readings:
            pub.publish(f"{prefix}/mon-a/observations", reading)
        pub.close()
        deadline = time.monotonic() + 30
        while consumer.stats.messages < len(readings) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert consumer.stats.messages == len(readings)
    mqtt = [d for d in _batches(pg_engine) if d["source"] == "mqtt"]
    assert mqtt, _batches(pg_engine)
    assert sum(d["stored"] for d in mqtt) == 3
    assert [d["patients"] for d in mqtt] == [[ids["m1"]]] * len(mqtt)
    # Both patients' trails show the import that created them; m1's also each MQTT batch.
    assert [e for e, _ in _trail(pg_engine, ids["m1"])] == ["ingest.batch"] * (1 + len(mqtt))
    assert len(_trail(pg_engine, ids["m2"])) == 1


def test_a_ward_page_read_is_in_the_trail_of_each_patient_listed(
    client: FlaskClient, creds: Credentials, ward: list[str], db_session: Session
) -> None:
    creds.login(client, creds.user("wendy", "nurse"))  # lands on the ward page
    assert client.get("/ward").status_code == 200
    auditor = creds.api_key("admin")
    for patient_id in ward[:3]:
        items = client.get(
            "/api/v1/audit-events",
            query_string={"patient_id": patient_id, "event": "patient.list"},
            headers=auditor,
        ).get_json()["items"]
        assert [(i["event"], i["actor"]) for i in items] == [("patient.list", "user:wendy")] * 2
    # Only the listed ones: a count under details.patients (a denial) matches nobody.
    nobody = client.get(
        "/api/v1/audit-events", query_string={"patient_id": "0" * 32}, headers=auditor
    ).get_json()["items"]
    assert nobody == []
