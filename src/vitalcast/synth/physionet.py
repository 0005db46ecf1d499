"""Write canonical records in the PhysioNet/CinC Challenge 2012 format.

One ``<RecordID>.txt`` per stay with ``Time,Parameter,Value`` rows, the six descriptors
first at 00:00 (``-1`` when not recorded), times as HH:MM since ICU admission (hours may
exceed 23), FiO2 as a fraction; plus ``Outcomes-<set>.txt`` with the challenge's columns
for stays whose outcome is known. SAPS-I and SOFA are written as ``-1`` (not computed),
which the challenge also uses for missing scores. Length of stay and survival are whole
days, as in the challenge. Reference: https://physionet.org/content/challenge-2012/1.0.0/.

This is the inverse of :mod:`vitalcast.ingest.sources.physionet`, so ingestion tests can
run on synthetic data.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from vitalcast.clinical.codes import BY_CODE, ICU_TYPES
from vitalcast.clinical.records import (
    EncounterRecord,
    ObservationRecord,
    OutcomeRecord,
    RecordBatch,
)

_ICU_TYPE = {unit: number for number, unit in ICU_TYPES.items()}
_GENDER = {"female": "0", "male": "1"}
_HEADER = "Time,Parameter,Value"
_OUTCOME_HEADER = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"
# Descriptors that are encounter facts, not time series, in the challenge files.
_DESCRIPTOR_ONLY = frozenset({"Height"})


@dataclass(frozen=True, slots=True)
class PhysionetWritten:
    """What :func:`write_physionet` wrote."""

    folder: Path
    records: int
    outcomes: int
    observations: int
    skipped: int  # observations with no PhysioNet parameter (e.g. SpO2) or before admission


def record_id(ref: str) -> int:
    """The numeric RecordID of an encounter reference such as ``synth:200001``.

    Raises:
        ValueError: the reference does not end in a number.
    """
    tail = ref.rsplit(":", 1)[-1]
    if not tail.isdigit():
        raise ValueError(f"encounter reference {ref!r} has no numeric RecordID")
    return int(tail)


def format_value(value: float) -> str:
    """Shortest text that parses back to the same float (integers without ``.0``)."""
    return str(int(value)) if value.is_integer() else repr(value)


def write_physionet(
    batch: RecordBatch, out: Path, *, set_name: str = "set-synth"
) -> PhysionetWritten:
    """Write every encounter of ``batch`` as a record file under ``out/<set_name>/``."""
    folder = out / set_name
    folder.mkdir(parents=True, exist_ok=True)
    sexes = {p.ref: p.sex for p in batch.patients}
    by_stay: dict[str | None, list[ObservationRecord]] = defaultdict(list)
    for obs in batch.observations:
        by_stay[obs.encounter_ref].append(obs)
    written = skipped = 0
    for enc in batch.encounters:
        rid = record_id(enc.ref)
        lines, dropped = _record_lines(enc, rid, sexes.get(enc.patient_ref), by_stay[enc.ref])
        (folder / f"{rid}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        written += len(lines) - 7
        skipped += dropped
    outcomes = _outcome_lines(batch.encounters, batch.outcomes)
    suffix = set_name.removeprefix("set-")
    (out / f"Outcomes-{suffix}.txt").write_text(
        "\n".join([_OUTCOME_HEADER, *outcomes]) + "\n", encoding="utf-8"
    )
    return PhysionetWritten(folder, len(batch.encounters), len(outcomes), written, skipped)


def _record_lines(
    enc: EncounterRecord, rid: int, sex: str | None, observations: list[ObservationRecord]
) -> tuple[list[str], int]:
    def descriptor(value: float | None) -> str:
        return "-1" if value is None else format_value(float(value))

    lines = [
        _HEADER,
        f"00:00,RecordID,{rid}",
        f"00:00,Age,{descriptor(enc.age_years)}",
        f"00:00,Gender,{_GENDER.get(sex or '', '-1')}",
        f"00:00,Height,{descriptor(enc.height_cm)}",
        f"00:00,ICUType,{_ICU_TYPE.get(enc.unit or '', -1)}",
        f"00:00,Weight,{descriptor(enc.weight_kg)}",
    ]
    rows: list[tuple[int, str, str]] = []
    skipped = 0
    for obs in observations:
        spec = BY_CODE.get(obs.code)
        offset = obs.effective_at - enc.admitted_at
        if (
            spec is None
            or spec.physionet is None
            or spec.physionet in _DESCRIPTOR_ONLY
            or obs.value is None
            or offset < timedelta(0)
        ):
            skipped += 1
            continue
        minutes = int(offset.total_seconds() // 60)
        # The challenge records FiO2 as a fraction; the store keeps percent (LOINC 3150-0).
        value = obs.value / 100.0 if spec.physionet == "FiO2" else obs.value
        rows.append((minutes, spec.physionet, format_value(value)))
    rows.sort(key=lambda row: row[0])  # stable: keeps the generator's order within a minute
    lines.extend(f"{m // 60:02d}:{m % 60:02d},{p},{v}" for m, p, v in rows)
    return lines, skipped


def _outcome_lines(encounters: list[EncounterRecord], outcomes: list[OutcomeRecord]) -> list[str]:
    deaths = {o.encounter_ref: o for o in outcomes if o.kind == "in_hospital_death"}
    lines = []
    for enc in encounters:
        outcome = deaths.get(enc.ref)
        if outcome is None:
            continue
        end = enc.discharged_at or outcome.occurred_at
        los_days = math.ceil((end - enc.admitted_at).total_seconds() / 86400) if end else -1
        died = int(outcome.value)
        survival = los_days if died else -1  # days to death; -1: no recorded death
        lines.append(f"{record_id(enc.ref)},-1,-1,{los_days},{survival},{died}")
    return lines
