"""File imports (``vitalcast ingest fhir``, ``vitalcast ingest hl7``) rescore their stays.

Before this, only the streaming paths rescored: a stay in progress whose labs came by a
file import kept its old risk (or "Not scored") on the ward until something else scored
it. These run the real commands (click's runner, in this process) on real PostgreSQL with
a registered champion, and read what was stored.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, func, select

from tests.hl7_samples import ADT_A01, ADT_A03, ORU_R01
from vitalcast.cli import main
from vitalcast.clinical.tables import Encounter, Observation
from vitalcast.config import Settings
from vitalcast.db.session import make_session_factory
from vitalcast.modeling.tables import Prediction


def _ingest(settings: Settings, *args: str) -> Result:
    env = {
        "VITALCAST_ENV": "test",
        "VITALCAST_DATA_DIR": str(settings.data_dir),
        "VITALCAST_DATABASE_URL": str(settings.database_url),
    }
    return CliRunner().invoke(main, ["ingest", *args], env=env)


def _hl7_file(tmp_path: Path, *messages: str) -> str:
    path = tmp_path / "messages.hl7"
    path.write_text("\n".join(messages), encoding="utf-8")
    return str(path)


def _fhir_file(tmp_path: Path) -> str:
    """A Bundle: a patient, a stay in progress since two hours ago, and one heart rate."""
    start = datetime.now(UTC) - timedelta(hours=2)
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Patient",
            "id": "p-imp-1",
            "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "MRN-IMP-1"}],
            "gender": "female",
            "birthDate": "1950-02-03",
        },
        {
            "resourceType": "Encounter",
            "id": "e-imp-1",
            "status": "in-progress",
            "class": {"code": "IMP"},
            "subject": {"reference": "Patient/p-imp-1"},
            "period": {"start": start.isoformat()},
        },
        {
            "resourceType": "Observation",
            "id": "o-imp-1",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p-imp-1"},
            "encounter": {"reference": "Encounter/e-imp-1"},
            "effectiveDateTime": (start + timedelta(hours=1)).isoformat(),
            "valueQuantity": {"value": 118, "unit": "/min", "system": "http://unitsofmeasure.org"},
        },
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    return str(path)


def _stay(engine: Engine) -> Encounter:
    with make_session_factory(engine)() as s:
        return s.execute(select(Encounter)).scalar_one()


def _predictions(engine: Engine, role: str = "champion") -> int:
    with make_session_factory(engine)() as s:
        count = s.scalar(
            select(func.count()).select_from(Prediction).where(Prediction.role == role)
        )
        return int(count or 0)


def _observations(engine: Engine) -> int:
    with make_session_factory(engine)() as s:
        return int(s.scalar(select(func.count()).select_from(Observation)) or 0)


@pytest.mark.usefixtures("champion")
def test_fhir_import_rescores_the_stay_in_progress(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    result = _ingest(settings, "fhir", _fhir_file(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rescored"] == {"stays": 1, "failed": 0, "skipped": None}
    stay = _stay(pg_engine)
    assert stay.discharged_at is None
    with make_session_factory(pg_engine)() as s:
        (prediction,) = s.scalars(select(Prediction).where(Prediction.role == "champion"))
    assert prediction.encounter_id == stay.id


@pytest.mark.usefixtures("champion")
def test_hl7_import_rescores_the_stay_in_progress(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    result = _ingest(settings, "hl7", _hl7_file(tmp_path, ADT_A01, ORU_R01))
    assert result.exit_code == 0, result.output
    assert "stays in progress rescored with the champion: 1\n" in result.stdout
    assert _predictions(pg_engine) == 1
    # Importing the same file again stores nothing new, so it scores nothing either.
    again = _ingest(settings, "hl7", _hl7_file(tmp_path, ADT_A01, ORU_R01))
    assert again.exit_code == 0, again.output
    assert "stays in progress rescored with the champion: 0 (no new observations," in again.stdout
    assert _predictions(pg_engine) == 1


@pytest.mark.usefixtures("champion")
def test_no_rescore_stores_only(settings: Settings, pg_engine: Engine, tmp_path: Path) -> None:
    result = _ingest(settings, "fhir", _fhir_file(tmp_path), "--no-rescore", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rescored"] == {"stays": 0, "failed": 0, "skipped": "not_requested"}
    assert report["by_kind"]["observation"]["stored"] == 1
    assert _predictions(pg_engine) == 0
    text = _ingest(settings, "hl7", _hl7_file(tmp_path, ADT_A01, ORU_R01), "--no-rescore")
    assert text.exit_code == 0, text.output
    assert "stays in progress rescored with the champion: 0 (--no-rescore)" in text.stdout
    assert _predictions(pg_engine) == 0


@pytest.mark.usefixtures("champion")
def test_a_discharged_stay_is_not_scored(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    result = _ingest(settings, "hl7", _hl7_file(tmp_path, ADT_A01, ORU_R01, ADT_A03), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["by_kind"]["observation"]["stored"] > 0
    assert _stay(pg_engine).discharged_at is not None
    assert report["rescored"] == {"stays": 0, "failed": 0, "skipped": None}
    assert _predictions(pg_engine) == 0


def test_without_a_champion_the_report_says_so_and_exits_0(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    result = _ingest(settings, "hl7", _hl7_file(tmp_path, ADT_A01, ORU_R01))
    assert result.exit_code == 0, result.output
    assert (
        "stays in progress rescored with the champion: 0 (no champion to score with)"
        in result.stdout
    )
    assert _observations(pg_engine) > 0
    assert _predictions(pg_engine) == 0


@pytest.mark.usefixtures("champion")
def test_a_scoring_failure_keeps_the_data_and_exits_3(
    settings: Settings,
    pg_engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fails(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a model that cannot score MRN0001")

    monkeypatch.setattr("vitalcast.serving.rescoring.score_encounter", fails)
    result = _ingest(settings, "hl7", _hl7_file(tmp_path, ADT_A01, ORU_R01), "--json")
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    assert report["rescored"] == {"stays": 0, "failed": 1, "skipped": None}
    assert "error: stays not rescored: 1 " in result.stderr
    assert report["by_kind"]["observation"]["stored"] == _observations(pg_engine) > 0
    assert _predictions(pg_engine) == 0
    assert "rescoring failed" in caplog.text
    stay = _stay(pg_engine)
    for identifier in ("MRN0001", "V0001", stay.public_id, "Testpatient"):
        assert identifier not in caplog.text + result.output


def _bundle(tmp_path: Path, name: str, *resources: dict[str, Any]) -> str:
    path = tmp_path / name
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }
    path.write_text(json.dumps(bundle), encoding="utf-8")
    return str(path)


@pytest.mark.usefixtures("champion")
def test_a_newer_version_of_the_stay_or_its_patient_rescores_it(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    """The patient's sex and the stay's admission time are features: a newer version of
    either, with no new observation, changes the risk's inputs, so the stay is rescored;
    the same version again changes nothing and scores nothing."""
    assert _ingest(settings, "fhir", _fhir_file(tmp_path)).exit_code == 0
    assert _predictions(pg_engine) == 1
    resources = json.loads(Path(_fhir_file(tmp_path)).read_text())["entry"]
    patient, encounter = resources[0]["resource"], resources[1]["resource"]

    patient_v2 = {**patient, "gender": "male", "meta": {"versionId": "2"}}
    result = _ingest(settings, "fhir", _bundle(tmp_path, "p2.json", patient_v2), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rescored"]["stays"] == 1
    assert _predictions(pg_engine) == 2

    earlier = datetime.fromisoformat(encounter["period"]["start"]) - timedelta(hours=6)
    encounter_v2 = {
        **encounter,
        "period": {"start": earlier.isoformat()},
        "meta": {"versionId": "2"},
    }
    path = _bundle(tmp_path, "e2.json", encounter_v2)
    assert json.loads(_ingest(settings, "fhir", path, "--json").stdout)["rescored"]["stays"] == 1
    assert _predictions(pg_engine) == 3
    assert _stay(pg_engine).admitted_at == earlier

    again = json.loads(_ingest(settings, "fhir", path, "--json").stdout)
    assert again["rescored"]["stays"] == 0
    assert _predictions(pg_engine) == 3
