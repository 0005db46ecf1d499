"""Synthetic cohort writers: PhysioNet 2012 files round-trip through the parser; FHIR ndjson
validates against the FHIR R4B models."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from vitalcast.cli import main
from vitalcast.clinical.codes import BY_CODE
from vitalcast.clinical.records import RecordBatch
from vitalcast.ingest.sources.physionet import (
    RecordText,
    iter_records,
    parse_outcomes,
    parse_record,
)
from vitalcast.synth import generate_cohort
from vitalcast.synth.fhir import write_fhir_ndjson
from vitalcast.synth.physionet import record_id, write_physionet

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def small() -> RecordBatch:
    return generate_cohort(n_current=4, n_historic=8, seed=21, now=NOW)


def _key(code: str, at: datetime, value: float) -> tuple[str, datetime, float]:
    # FiO2 travels as a fraction: compare in percent, rounded to the generator's precision.
    return code, at, round(value * 100 if code == "3150-0" else value, 6)


def test_physionet_round_trip(small: RecordBatch, tmp_path: Path) -> None:
    written = write_physionet(small, tmp_path)
    encounters = {e.ref: e for e in small.encounters}
    expected = Counter(
        _key(o.code, o.effective_at, o.value if o.code != "3150-0" else o.value / 100)
        for o in small.observations
        if o.value is not None and BY_CODE[o.code].physionet is not None
    )
    skipped = len(small.observations) - sum(expected.values())
    assert written.skipped == skipped
    assert written.observations == sum(expected.values())
    parsed: Counter[tuple[str, datetime, float]] = Counter()
    records = list(iter_records(written.folder))
    assert len(records) == len(small.encounters)
    for record in records:
        ref = f"synth:{Path(record.name).stem}"
        enc = encounters[ref]
        batch = parse_record(
            RecordText(record.name, record.text), anchor=enc.admitted_at, prefix="synth"
        )
        assert batch.rejected == []
        got = batch.encounters[0]
        assert (got.ref, got.unit, got.age_years, got.height_cm, got.weight_kg) == (
            enc.ref,
            enc.unit,
            enc.age_years,
            enc.height_cm,
            enc.weight_kg,
        )
        assert batch.patients[0].sex == next(p.sex for p in small.patients if p.ref == ref)
        for obs in batch.observations:
            assert obs.value is not None
            parsed[_key(obs.code, obs.effective_at, obs.value)] += 1
    assert parsed == expected

    outcomes_file = tmp_path / "Outcomes-synth.txt"
    outcomes = parse_outcomes(outcomes_file.read_text(), prefix="synth")
    truth = {o.encounter_ref: o.value for o in small.outcomes}
    deaths = {o.encounter_ref: o.value for o in outcomes.outcomes if o.kind == "in_hospital_death"}
    assert deaths == truth
    header = outcomes_file.read_text().splitlines()[0]
    assert header == "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"


def test_physionet_record_layout(small: RecordBatch, tmp_path: Path) -> None:
    write_physionet(small, tmp_path)
    enc = small.encounters[0]
    lines = (tmp_path / "set-synth" / f"{record_id(enc.ref)}.txt").read_text().splitlines()
    assert lines[0] == "Time,Parameter,Value"
    assert [line.split(",")[1] for line in lines[1:7]] == [
        "RecordID",
        "Age",
        "Gender",
        "Height",
        "ICUType",
        "Weight",
    ]
    assert all(line.startswith("00:00,") for line in lines[1:7])
    fio2 = [float(line.split(",")[2]) for line in lines if ",FiO2," in line]
    assert all(0.21 <= v <= 1.0 for v in fio2)
    stamps = [line.split(",")[0] for line in lines[7:]]
    minutes = [int(s.split(":")[0]) * 60 + int(s.split(":")[1]) for s in stamps]
    assert minutes == sorted(minutes)


def test_fhir_ndjson_validates_and_codes_values(small: RecordBatch, tmp_path: Path) -> None:
    counts = write_fhir_ndjson(small, tmp_path)
    models = {"Patient": Patient, "Encounter": Encounter, "Observation": Observation}
    for kind, model in models.items():
        lines = (tmp_path / f"{kind}.ndjson").read_text().splitlines()
        assert len(lines) == counts[kind]
        for line in lines:
            model.model_validate_json(line)  # raises on any R4B schema violation
    descriptors = sum(
        (e.height_cm is not None) + (e.weight_kg is not None) for e in small.encounters
    )
    assert counts["Observation"] == len(small.observations) + descriptors
    first = small.observations[0]
    obs_lines = (tmp_path / "Observation.ndjson").read_text().splitlines()
    resource = json.loads(obs_lines[descriptors])
    assert resource["code"]["coding"][0]["code"] == first.code
    assert resource["valueQuantity"]["code"] == first.unit
    assert resource["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    assert resource["valueQuantity"]["value"] == first.value
    died = {o.encounter_ref for o in small.outcomes if o.value == 1.0}
    for line in (tmp_path / "Encounter.ndjson").read_text().splitlines():
        enc = json.loads(line)
        disposition = enc.get("hospitalization", {}).get("dischargeDisposition")
        if enc["status"] == "in-progress":
            assert disposition is None
        else:
            expected = "exp" if enc["id"].replace("-", ":") in died else "home"
            assert disposition["coding"][0]["code"] == expected


def test_cli_writes_physionet_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "synth",
            "--patients",
            "2",
            "--historic",
            "3",
            "--seed",
            "4",
            "--format",
            "physionet",
            "--out",
            str(tmp_path),
            "--now",
            "2026-03-01T12:00",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "set-synth").glob("*.txt"))) == 5
    assert len((tmp_path / "Outcomes-synth.txt").read_text().splitlines()) == 4
    batch = generate_cohort(n_current=2, n_historic=3, seed=4, now=NOW)
    for p in batch.patients:
        assert p.name is not None
        assert p.name not in result.output
        assert p.mrn is not None
        assert p.mrn not in result.output


def test_cli_needs_out_for_files() -> None:
    result = CliRunner().invoke(main, ["synth", "--patients", "1", "--format", "fhir"])
    assert result.exit_code == 2
    assert "--format fhir needs --out DIR" in result.output
