"""`vitalcast ingest ...` against real PostgreSQL: reports, --json, and clear errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pydicom.data
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select

from vitalcast.cli import main
from vitalcast.clinical.tables import Observation, Patient

DICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


@pytest.fixture
def run(pg_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {"VITALCAST_DATABASE_URL": pg_url, "VITALCAST_DATA_DIR": str(tmp_path / "var")}

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, ["ingest", *args], env=env)

    return invoke


def count(pg_url: str, table: type) -> int:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(table)) or 0)
    finally:
        engine.dispose()


@pytest.mark.shared_data
def test_physionet_report_and_json(run, pg_url: str, small_set: Path, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    outcomes = shared_data / "physionet2012" / "Outcomes-a.txt"
    result = run("physionet2012", str(small_set), "--outcomes", str(outcomes), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["balanced"] is True
    assert report["by_kind"]["patient"]["stored"] == 10
    assert report["received"] == report["stored"] + report["duplicates"] + report["quarantined"]
    assert count(pg_url, Observation) == report["by_kind"]["observation"]["stored"]
    # Outcomes of the 3,990 stays not in this archive are quarantined, not dropped.
    assert report["reasons"]["unknown_encounter"] > 0

    text = run("physionet2012", str(small_set))
    assert text.exit_code == 0, text.output
    assert "received" in text.stdout
    assert "duplicates" in text.stdout


@pytest.mark.shared_data
def test_truncated_archive_stores_nothing(
    run, pg_url: str, small_set: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cut = tmp_path / "cut.tar.gz"
    data = small_set.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    result = run("physionet2012", str(cut))
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "cut.tar.gz" in lines[0]
    assert "Traceback" not in result.output
    assert count(pg_url, Patient) == 0
    assert count(pg_url, Observation) == 0


def test_missing_input_is_one_line(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for args in (
        ("physionet2012", str(tmp_path / "absent.tar.gz")),
        ("csv", "--profile", "diabetes130", str(tmp_path / "absent.csv")),
        ("mimic-iv", str(tmp_path / "absent")),
        ("dicom", str(tmp_path / "absent.dcm")),
    ):
        result = run(*args)
        assert result.exit_code == 2, args
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: ")


def test_csv_errors(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("encounter_id,patient_nbr\n1,Müller\n".encode("latin-1"))
    result = run("csv", "--profile", "diabetes130", str(latin1))
    assert result.exit_code == 2
    assert "not UTF-8" in result.stderr

    wrong = tmp_path / "wrong.csv.gz"
    wrong.write_bytes(gzip.compress(b"a,b\n1,2\n"))
    result = run("csv", "--profile", "diabetes130", str(wrong))
    assert result.exit_code == 2
    assert "columns" in result.stderr
    assert "missing" in result.stderr

    result = run("csv", "--profile", "nope", str(wrong))
    assert result.exit_code == 2
    assert "diabetes130" in result.stderr  # names the profiles that exist


@pytest.mark.shared_data
def test_mimic_iv_json(run, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    result = run("mimic-iv", str(shared_data / "mimic-iv-demo-2.2"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["balanced"] is True
    assert report["by_kind"]["patient"]["stored"] == 100


def test_dicom_exit_zero_with_quarantine(run) -> None:  # type: ignore[no-untyped-def]
    result = run("dicom", str(DICOM_FILES / "CT_small.dcm"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reasons"] == {"unknown_patient": 1}
    assert run("dicom", str(DICOM_FILES / "CT_small.dcm"), "--timezone", "Mars/Base").exit_code == 2
