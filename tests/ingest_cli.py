"""Running ``vitalcast ingest`` as a user does (click's runner, in this process) and
reading what it stored, shared by the tests of stays that imports change."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from vitalcast.cli import main
from vitalcast.clinical.tables import Encounter
from vitalcast.config import Settings


def ingest_json(settings: Settings, command: str, path: str) -> tuple[dict[str, Any], Result]:
    """``vitalcast ingest COMMAND PATH --json`` on the settings' database: its report
    (which must balance, the command having exited 0) and the run's result."""
    env = {
        "VITALCAST_ENV": "test",
        "VITALCAST_DATA_DIR": str(settings.data_dir),
        "VITALCAST_DATABASE_URL": str(settings.database_url),
    }
    result = CliRunner().invoke(main, ["ingest", command, path, "--json"], env=env)
    assert result.exit_code == 0, result.output
    # The app fixture's JSON log lines share stdout: the report is the indented object.
    lines = result.stdout.splitlines()
    report: dict[str, Any] = json.loads("\n".join(lines[lines.index("{") :]))
    assert report["balanced"] is True
    return report, result


def ingest_fhir_resources(
    settings: Settings, folder: Path, name: str, *resources: dict[str, Any]
) -> dict[str, Any]:
    """``vitalcast ingest fhir`` of a collection Bundle of ``resources`` written to
    ``folder/name.json`` (so report locations read ``name.json#Bundle.entry[i]...``)."""
    path = folder / f"{name}.json"
    bundle = {"resourceType": "Bundle", "type": "collection"}
    path.write_text(json.dumps(bundle | {"entry": [{"resource": r} for r in resources]}))
    return ingest_json(settings, "fhir", str(path))[0]


def fhir_heart_rate(oid: str, patient: str, encounter: str, at: datetime) -> dict[str, Any]:
    """A FHIR heart-rate Observation (118/min) of ``Patient/patient`` in
    ``Encounter/encounter``, effective ``at``."""
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "encounter": {"reference": f"Encounter/{encounter}"},
        "effectiveDateTime": at.isoformat(),
        "valueQuantity": {"value": 118, "unit": "/min", "system": "http://unitsofmeasure.org"},
    }


def only_stay(engine: Engine) -> Encounter:
    """The one stay stored, detached."""
    with Session(engine, expire_on_commit=False) as session:
        return session.scalars(select(Encounter)).one()


def count_rows(engine: Engine, table: Any, *where: Any) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)
