"""PhysioNet 2012 sets A and B into PostgreSQL: counts add up against the data files.

Expected figures are derived here from the archive, MANIFEST.tsv and the Outcomes file
with plain parsing independent of the adapter; the vocabulary's plausible ranges are the
rule under test, so they are read from clinical.codes.
"""

from __future__ import annotations

import csv
import io
import tarfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vitalcast.clinical.codes import BY_KEY, BY_PHYSIONET, is_plausible
from vitalcast.clinical.tables import Encounter, Observation, Outcome, Patient
from vitalcast.ingest.files import ingest_physionet2012
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.security.crypto import FieldCipher

DESCRIPTORS = {"RecordID", "Age", "Gender", "Height", "ICUType", "Weight"}
# Descriptors held to the range of the same variable charted as an observation.
MEASURED_DESCRIPTORS = {"Height": BY_KEY["height"], "Weight": BY_KEY["weight"]}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Expected:
    files: int = 0
    manifest_rows: int = 0
    descriptor_rows: int = 0
    items: int = 0
    implausible: int = 0
    implausible_descriptors: int = 0
    unknown_parameter: int = 0
    duplicates: int = 0
    hr_zero: int = 0
    temp_minus_17_8: int = 0


def expected_from_archive(data: Path, set_name: str) -> Expected:
    exp = Expected()
    with (data / "MANIFEST.tsv").open() as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["set"] == f"set-{set_name}":
                exp.files += 1
                exp.manifest_rows += int(row["observation_rows"])
    seen_rows = 0
    with tarfile.open(data / f"set-{set_name}.tar.gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".txt"):
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            lines = fh.read().decode().splitlines()[1:]
            seen_rows += len(lines)
            descriptors: set[str] = set()
            keys: Counter[tuple[str, str, str]] = Counter()
            for line in lines:
                time, param, value = line.split(",")
                if param in DESCRIPTORS and time == "00:00" and param not in descriptors:
                    descriptors.add(param)
                    exp.descriptor_rows += 1
                    spec = MEASURED_DESCRIPTORS.get(param)
                    if spec is not None and value != "-1":  # -1: not recorded
                        exp.implausible_descriptors += not is_plausible(spec, float(value))
                    continue
                exp.items += 1
                spec = BY_PHYSIONET.get(param)
                if spec is None:
                    exp.unknown_parameter += 1
                    continue
                number = float(value) * (100 if param == "FiO2" else 1)
                if not is_plausible(spec, number):
                    exp.implausible += 1
                    exp.hr_zero += param == "HR" and float(value) == 0
                    exp.temp_minus_17_8 += param == "Temp" and value == "-17.8"
                    continue
                keys[(time, param, value)] += 1
            exp.duplicates += sum(n - 1 for n in keys.values())
    assert seen_rows == exp.manifest_rows, "archive rows must match MANIFEST.tsv"
    return exp


def outcome_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("set_name", ["a", "b"])
def test_set_counts_add_up(
    shared_data: Path, db_session: Session, cipher: FieldCipher, set_name: str
) -> None:
    data = shared_data / "physionet2012"
    exp = expected_from_archive(data, set_name)
    outcomes = outcome_rows(data / f"Outcomes-{set_name}.txt")
    report = ingest_physionet2012(
        db_session,
        data / f"set-{set_name}.tar.gz",
        outcomes=data / f"Outcomes-{set_name}.txt",
        cipher=cipher,
        now=NOW,
    )
    db_session.commit()

    assert report.balanced()
    # Every MANIFEST row is either a descriptor (patient/encounter fields) or an item.
    assert exp.descriptor_rows + exp.items == exp.manifest_rows
    assert exp.descriptor_rows == 6 * exp.files
    obs = report.kinds["observation"]
    assert obs.received == exp.items
    assert obs.quarantined == exp.implausible + exp.unknown_parameter
    assert obs.duplicates == exp.duplicates
    assert obs.stored == exp.items - obs.quarantined - exp.duplicates
    assert db_session.scalar(select(func.count()).select_from(Observation)) == obs.stored
    # A mistyped height or weight is quarantined on its own; the stay is stored without it.
    assert exp.implausible_descriptors > 0
    assert report.kinds["descriptor"].quarantined == exp.implausible_descriptors
    assert report.reasons["implausible_value"] == exp.implausible + exp.implausible_descriptors
    height, weight = BY_KEY["height"], BY_KEY["weight"]
    stored_implausible = db_session.scalar(
        select(func.count())
        .select_from(Encounter)
        .where(
            ~Encounter.height_cm.between(height.low, height.high)
            | ~Encounter.weight_kg.between(weight.low, weight.high)
        )
    )
    assert stored_implausible == 0
    assert report.reasons.get("unknown_parameter", 0) == exp.unknown_parameter
    # The artefacts named in the challenge description are quarantined with their rows.
    assert exp.hr_zero > 0
    hr_zero = db_session.scalar(
        select(func.count())
        .select_from(QuarantineItem)
        .where(QuarantineItem.code == "8867-4", QuarantineItem.reason.like("Heart rate 0 %"))
    )
    temp = db_session.scalar(
        select(func.count())
        .select_from(QuarantineItem)
        .where(QuarantineItem.code == "8310-5", QuarantineItem.reason.like("Temperature -17.8 %"))
    )
    assert (hr_zero, temp) == (exp.hr_zero, exp.temp_minus_17_8)

    assert report.kinds["patient"].stored == exp.files
    assert report.kinds["encounter"].stored == exp.files
    # Outcomes: death for every row, length of stay where recorded (-1 = missing).
    missing_los = sum(1 for r in outcomes if float(r["Length_of_stay"]) < 0)
    deaths = sum(1 for r in outcomes if r["In-hospital_death"] == "1")
    out = report.kinds["outcome"]
    assert out.received == 2 * len(outcomes)
    assert (out.stored, out.quarantined) == (2 * len(outcomes) - missing_los, missing_los)
    assert report.reasons["missing_value"] == missing_los
    stored_deaths = db_session.scalar(
        select(func.count())
        .select_from(Outcome)
        .where(Outcome.kind == "in_hospital_death", Outcome.value == 1.0)
    )
    assert stored_deaths == deaths
    # The outcome's discharge time completes the encounter.
    discharged = db_session.scalar(
        select(func.count()).select_from(Encounter).where(Encounter.discharged_at.is_not(None))
    )
    assert discharged == len(outcomes) - missing_los


@pytest.mark.shared_data
def test_folder_input_and_idempotent_rerun(
    shared_data: Path, tmp_path: Path, db_session: Session, cipher: FieldCipher
) -> None:
    data = shared_data / "physionet2012"
    folder = tmp_path / "set-a"
    folder.mkdir()
    with tarfile.open(data / "set-a.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()][:25]
        for m in members:
            fh = tar.extractfile(m)
            assert fh is not None
            (folder / Path(m.name).name).write_bytes(fh.read())
    ids = {Path(m.name).stem for m in members}
    subset = [r for r in outcome_rows(data / "Outcomes-a.txt") if r["RecordID"] in ids]
    outcomes = tmp_path / "Outcomes-a.txt"
    header = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
    outcomes.write_text(header + "".join(",".join(r.values()) + "\n" for r in subset))

    first = ingest_physionet2012(db_session, folder, outcomes=outcomes, cipher=cipher, now=NOW)
    db_session.commit()
    assert first.balanced()
    assert first.kinds["patient"].stored == 25
    stored = db_session.scalar(select(func.count()).select_from(Observation))
    assert stored == first.kinds["observation"].stored > 0

    again = ingest_physionet2012(db_session, folder, outcomes=outcomes, cipher=cipher, now=NOW)
    db_session.commit()
    assert again.balanced()
    assert db_session.scalar(select(func.count()).select_from(Observation)) == stored
    assert db_session.scalar(select(func.count()).select_from(Patient)) == 25
    for kind in ("patient", "encounter", "outcome"):
        assert again.kinds[kind].stored == 0
    assert again.kinds["observation"].duplicates == first.kinds["observation"].stored
