"""Row-by-row mapping of MIMIC-IV tables to canonical records (see :mod:`.mimic`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from vitalcast.clinical.records import (
    ConditionRecord,
    EncounterRecord,
    ObservationRecord,
    OutcomeRecord,
    PatientRecord,
    RecordBatch,
    Rejected,
)
from vitalcast.clinical.times import OUT_OF_RANGE, TimeOutOfRange
from vitalcast.ingest.sources.mimic import (
    ICD_SYSTEMS,
    LAB_ITEMS,
    SEX,
    Table,
    local_time,
    raw_row,
    shifted_offset,
)


class MimicMapper:
    """Maps one export; keeps per-patient date offsets and per-admission facts."""

    def __init__(self, tables: dict[str, Table], prefix: str) -> None:
        self.tables = tables
        self.prefix = prefix
        self.batch = RecordBatch()
        self.offsets: dict[str, timedelta] = {}
        self.anchors: dict[str, tuple[int, float]] = {}  # subject -> (anchor_year, anchor_age)
        self.admissions: dict[str, dict[str, Any]] = {}  # hadm_id -> outcome facts

    def run(self) -> RecordBatch:
        self._patients()
        transfers = self._transfers()
        self._admissions(transfers)
        self._icustays()
        self._diagnoses()
        self._labs()
        return self.batch

    # -- helpers -------------------------------------------------------------------------
    def _pref(self, subject_id: str) -> str:
        return f"{self.prefix}:{subject_id}"

    def _reject(self, table: Table, line: int, code: str, reason: str, row: Any, kind: str) -> None:
        self.batch.received += 1
        self.batch.rejected.append(
            Rejected(f"{table.name}:{line}", code, reason, raw_row(row), kind)
        )

    def _times(
        self, table: Table, line: int, row: dict[str, str], kind: str, *columns: str
    ) -> tuple[datetime | None, ...] | None:
        """The row's times in ``columns`` (None where empty), or None after quarantining
        the row when one is not a date-time or falls outside the clinical years.

        Each row's times are read before anything of it is recorded, so a rejected row
        leaves nothing behind; before, one malformed time stopped the whole import with a
        traceback.
        """
        offset = self.offsets[row["subject_id"]]
        try:
            return tuple(local_time(row[c], offset, c) for c in columns)
        except TimeOutOfRange as exc:
            self._reject(table, line, OUT_OF_RANGE, str(exc), row, kind)
        except ValueError as exc:
            self._reject(table, line, "invalid_time", str(exc), row, kind)
        return None

    def _age(self, subject_id: str, shifted_wall: str) -> float | None:
        anchor_year, anchor_age = self.anchors[subject_id]
        # MIMIC-IV: age = anchor_age + (year of the event - anchor_year), both shifted years.
        return anchor_age + (int(shifted_wall[:4]) - anchor_year)

    # -- tables --------------------------------------------------------------------------
    def _patients(self) -> None:
        table = self.tables["patients"]
        for line, row in table.rows:
            try:
                subject = row["subject_id"]
                self.offsets[subject] = shifted_offset(row["anchor_year"], row["anchor_year_group"])
                self.anchors[subject] = (int(row["anchor_year"]), float(row["anchor_age"]))
            except (ValueError, IndexError) as exc:
                self._reject(
                    table, line, "invalid_row", f"bad anchor fields ({exc})", row, "patient"
                )
                continue
            self.batch.received += 1
            self.batch.patients.append(
                PatientRecord(
                    ref=self._pref(subject),
                    sex=SEX.get(row["gender"], "unknown"),
                    source_ref=f"{table.name}:{line}",
                )
            )

    def _transfers(self) -> dict[str, list[dict[str, str | None]]]:
        """Transfers per admission; ED visits without an admission become encounters."""
        by_hadm: dict[str, list[dict[str, str | None]]] = {}
        table = self.tables.get("transfers", Table("transfers", []))
        for line, row in table.rows:
            subject = row["subject_id"]
            if subject not in self.offsets:
                self._reject(
                    table, line, "unknown_patient", "subject not in patients", row, "encounter"
                )
                continue
            times = self._times(table, line, row, "encounter", "intime", "outtime")
            if times is None:
                continue
            intime, outtime = times
            if row["hadm_id"]:
                by_hadm.setdefault(row["hadm_id"], []).append(
                    {
                        "transfer_id": row["transfer_id"],
                        "eventtype": row["eventtype"],
                        "careunit": row["careunit"] or None,
                        "in_at": intime.isoformat() if intime else None,
                        "out_at": outtime.isoformat() if outtime else None,
                    }
                )
                continue
            self.batch.received += 1
            if intime is None:
                self._reject(
                    table, line, "missing_value", "transfer without intime", row, "encounter"
                )
                self.batch.received -= 1
                continue
            self.batch.encounters.append(
                EncounterRecord(
                    ref=f"{self.prefix}:transfer:{row['transfer_id']}",
                    patient_ref=self._pref(subject),
                    admitted_at=intime,
                    discharged_at=outtime,
                    kind="emergency",
                    unit=row["careunit"] or None,
                    age_years=self._age(subject, row["intime"]),
                    source_ref=f"{table.name}:{line}",
                )
            )
        return by_hadm

    def _admissions(self, transfers: dict[str, list[dict[str, str | None]]]) -> None:
        table = self.tables["admissions"]
        for line, row in table.rows:
            subject, hadm = row["subject_id"], row["hadm_id"]
            if subject not in self.offsets:
                self._reject(
                    table, line, "unknown_patient", "subject not in patients", row, "encounter"
                )
                continue
            times = self._times(
                table, line, row, "encounter", "admittime", "dischtime", "deathtime"
            )
            if times is None:
                continue
            admitted, discharged, deathtime = times
            if admitted is None:
                self._reject(
                    table, line, "missing_value", "admission without admittime", row, "encounter"
                )
                continue
            self.batch.received += 1
            moves = sorted(transfers.get(hadm, []), key=lambda t: t["in_at"] or "")
            units = [
                t["careunit"] for t in moves if t["careunit"] and t["eventtype"] != "discharge"
            ]
            ref = f"{self.prefix}:hadm:{hadm}"
            self.batch.encounters.append(
                EncounterRecord(
                    ref=ref,
                    patient_ref=self._pref(subject),
                    admitted_at=admitted,
                    discharged_at=discharged,
                    kind="inpatient",
                    unit=units[-1][:64] if units else None,
                    admission_source=(row.get("admission_location") or None),
                    age_years=self._age(subject, row["admittime"]),
                    attributes={
                        "admission_type": row.get("admission_type") or None,
                        "discharge_location": row.get("discharge_location") or None,
                        "transfers": moves,
                    },
                    source_ref=f"{table.name}:{line}",
                )
            )
            died = row["hospital_expire_flag"] == "1"
            death_at = deathtime if died else None
            self.admissions[hadm] = {"died": died, "death_at": death_at, "known_at": discharged}
            self.batch.outcomes.append(self._death(subject, ref, hadm, f"{table.name}:{line}"))

    def _death(self, subject: str, ref: str, hadm: str, where: str) -> OutcomeRecord:
        facts = self.admissions[hadm]
        return OutcomeRecord(
            self._pref(subject),
            ref,
            "in_hospital_death",
            1.0 if facts["died"] else 0.0,
            facts["death_at"] or facts["known_at"],
            facts["known_at"],
            f"{where} hospital_expire_flag",
        )

    def _icustays(self) -> None:
        table = self.tables.get("icustays", Table("icustays", []))
        for line, row in table.rows:
            subject, hadm = row["subject_id"], row["hadm_id"]
            times = (
                self._times(table, line, row, "encounter", "intime", "outtime")
                if subject in self.offsets
                else (None, None)
            )
            if times is None:
                continue
            intime, outtime = times
            if intime is None or hadm not in self.admissions:
                reason = "ICU stay of an unknown patient or admission, or without intime"
                self._reject(table, line, "unknown_encounter", reason, row, "encounter")
                continue
            self.batch.received += 1
            ref = f"{self.prefix}:stay:{row['stay_id']}"
            self.batch.encounters.append(
                EncounterRecord(
                    ref=ref,
                    patient_ref=self._pref(subject),
                    admitted_at=intime,
                    discharged_at=outtime,
                    kind="icu",
                    unit=(row["first_careunit"] or None) and row["first_careunit"][:64],
                    age_years=self._age(subject, row["intime"]),
                    attributes={"hadm_id": hadm, "last_careunit": row["last_careunit"] or None},
                    source_ref=f"{table.name}:{line}",
                )
            )
            self.batch.outcomes.append(self._death(subject, ref, hadm, f"{table.name}:{line}"))

    def _diagnoses(self) -> None:
        table = self.tables.get("diagnoses_icd", Table("diagnoses_icd", []))
        for line, row in table.rows:
            system = ICD_SYSTEMS.get(row["icd_version"])
            if system is None or not row["icd_code"].strip():
                reason = f"ICD version {row['icd_version']!r} or empty code"
                self._reject(table, line, "invalid_row", reason, row, "condition")
                continue
            self.batch.received += 1
            self.batch.conditions.append(
                ConditionRecord(
                    self._pref(row["subject_id"]),
                    row["icd_code"].strip(),
                    system,
                    encounter_ref=f"{self.prefix}:hadm:{row['hadm_id']}"
                    if row["hadm_id"]
                    else None,
                    source_ref=f"{table.name}:{line}",
                )
            )

    def _labs(self) -> None:
        table = self.tables.get("labevents", Table("labevents", []))
        labels = (
            {r["itemid"]: r["label"] for _, r in self.tables["d_labitems"].rows}
            if "d_labitems" in self.tables
            else {}
        )
        for line, row in table.rows:
            item = row["itemid"]
            mapped = LAB_ITEMS.get(item)
            if mapped is None:
                label = labels.get(item, "unknown item")
                reason = f"lab item {item} ({label}) is not a modelled variable"
                self._reject(table, line, "unmapped_item", reason, row, "observation")
                continue
            subject = row["subject_id"]
            if subject not in self.offsets:
                self._reject(
                    table, line, "unknown_patient", "subject not in patients", row, "observation"
                )
                continue
            times = self._times(table, line, row, "observation", "charttime")
            if times is None:
                continue
            (at,) = times
            try:
                value = float(row["valuenum"])
            except ValueError:
                reason = f"no numeric value (text result {row.get('value', '')[:40]!r})"
                self._reject(table, line, "non_numeric_value", reason, row, "observation")
                continue
            if at is None:
                self._reject(table, line, "missing_value", "no charttime", row, "observation")
                continue
            self.batch.received += 1
            code, unit = mapped
            self.batch.observations.append(
                ObservationRecord(
                    patient_ref=self._pref(subject),
                    code=code,
                    effective_at=at,
                    value=value,
                    unit=unit or row["valueuom"] or None,
                    encounter_ref=f"{self.prefix}:hadm:{row['hadm_id']}"
                    if row["hadm_id"]
                    else None,
                    source_ref=f"{table.name}:{line}",
                    identity=f"{self.prefix}:lab:{row['labevent_id']}",
                )
            )
