"""De-identified research extracts under HIPAA Safe Harbor, 45 CFR 164.514(b)(2).

Safe Harbor lists 18 identifier types (A)-(R) that must be removed from the data of the
individual and of relatives, employers and household members. This module writes only
columns that carry none of them:

* names, addresses, phones, e-mails, MRNs (A, B, D, F, H) live only in the encrypted
  ``identifiers_enc`` payload, which is never read here;
* dates (C): by default reduced to the year, with event times kept as *intervals* since
  admission (an interval is not a date element). ``dates="shift"`` instead moves every
  date of a patient by the same secret offset (HMAC of VITALCAST_HMAC_KEY, never
  written out). Shifted dates keep weekday/season structure but are still dates, so that
  mode belongs under an expert determination (164.514(b)(1)) or a limited data set
  agreement (164.514(e)), not Safe Harbor; the manifest says which mode was used;
* ages over 89 become the single category ``90+`` (164.514(b)(2)(i)(C));
* ZIP codes: none are exported at all. Safe Harbor would allow the first three digits
  where that area holds more than 20,000 people; HHS lists the 17 prefixes that do not
  (036, 059, 063, 102, 203, 556, 692, 790, 821, 823, 830, 831, 878, 879, 884, 890, 893;
  2000 Census, HHS "Guidance Regarding Methods for De-identification", 2012). Our
  models do not use geography, so dropping is simpler and safer than maintaining it;
* free text (observation ``value_text``, condition ``display``, imaging ``description``,
  string values of encounter attributes) is dropped: it can hold anything;
* device ids, study UIDs, source references and public ids (M, R) are dropped; rows
  carry research ids, an HMAC of the random public id under a per-project label — a
  re-identification code allowed by 164.514(c) (not derived from PHI, key not disclosed).

Safe Harbor also requires that the covered entity has no actual knowledge that the rest
could identify someone (164.514(b)(2)(ii)); rare units or tiny cohorts are the data
owner's judgement, which the manifest reminds the recipient of.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import (
    Condition,
    Encounter,
    ImagingStudy,
    Observation,
    Outcome,
    Patient,
)
from vitalcast.db.base import utcnow
from vitalcast.security import audit

logger = logging.getLogger(__name__)

DateMode = Literal["year", "shift"]
MAX_SHIFT_DAYS = 365
AGE_CEILING = 89  # 164.514(b)(2)(i)(C): ages over 89 aggregate into one category
RESTRICTED_ZIP3 = (
    "036", "059", "063", "102", "203", "556", "692", "790", "821",
    "823", "830", "831", "878", "879", "884", "890", "893",
)  # fmt: skip

SAFE_HARBOR: dict[str, str] = {
    "A names": "never read (encrypted payload)",
    "B geographic subdivisions smaller than a state, incl. ZIP": "not exported; no ZIP at all",
    "C dates (except year) and ages over 89": "year only, intervals since admission; 90+",
    "D telephone numbers": "never read (encrypted payload)",
    "E fax numbers": "not stored by vitalcast",
    "F e-mail addresses": "never read (encrypted payload)",
    "G social security numbers": "not stored by vitalcast",
    "H medical record numbers": "never read (encrypted payload and HMAC)",
    "I health plan beneficiary numbers": "not stored by vitalcast",
    "J account numbers": "source references (visit/account numbers) dropped",
    "K certificate/license numbers": "not stored by vitalcast",
    "L vehicle identifiers and serial numbers": "not stored by vitalcast",
    "M device identifiers and serial numbers": "device ids dropped",
    "N web URLs": "not exported (free text dropped)",
    "O IP addresses": "not exported (audit client addresses are not part of extracts)",
    "P biometric identifiers": "not stored by vitalcast",
    "Q full-face photographs and comparable images": "no pixel data stored; study UIDs dropped",
    "R any other unique identifying number or code": "public ids and source refs replaced by"
    " keyed research ids (164.514(c))",
}


def research_id(key: bytes, project: str, kind: str, public_id: str) -> str:
    """A stable pseudonym: HMAC of a random public id, per project, never reversible."""
    mac = hmac.new(key, f"deid|{project}|{kind}|{public_id}".encode(), hashlib.sha256)
    return kind[0].upper() + mac.hexdigest()[:20]


def shift_days(key: bytes, project: str, patient_public_id: str) -> int:
    """The patient's secret date offset in [-365, -1] ∪ [1, 365] days (never zero)."""
    mac = hmac.new(key, f"deid-shift|{project}|{patient_public_id}".encode(), hashlib.sha256)
    n = int.from_bytes(mac.digest()[:8], "big") % (2 * MAX_SHIFT_DAYS)
    return n - MAX_SHIFT_DAYS if n < MAX_SHIFT_DAYS else n - MAX_SHIFT_DAYS + 1


def age_category(age_years: float | None) -> str:
    """Completed years, or ``90+`` for anyone over 89; empty when unknown."""
    if age_years is None or math.isnan(age_years):
        return ""
    years = int(age_years)  # completed years: 89.9 is "89", not over 89
    return "90+" if years > AGE_CEILING else str(years)


@dataclass
class ExportReport:
    """Rows written per file, for the CLI and the audit event."""

    out: Path
    dates: DateMode
    rows: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Stay:
    patient_rid: str
    encounter_rid: str
    admitted_at: datetime
    shift: timedelta


class _Dates:
    def __init__(self, mode: DateMode) -> None:
        self.mode = mode

    def show(self, at: date | None, shift: timedelta) -> str:
        """A time, or a day alone (a ``date``), as its year or shifted by whole days."""
        if at is None:
            return ""
        if self.mode == "year":
            return str(at.year)
        return (at + shift).isoformat()


def _hours(at: datetime | None, since: datetime) -> str:
    return "" if at is None else f"{(at - since).total_seconds() / 3600:.4f}"


def _numeric_attributes(attrs: dict[str, Any] | None) -> tuple[str, int]:
    """Numbers and booleans only: a string may be free text (and so may hide anything)."""
    if not attrs:
        return "", 0
    kept = {
        k: v
        for k, v in attrs.items()
        if isinstance(v, bool) or (isinstance(v, int | float) and math.isfinite(v))
    }
    return (json.dumps(kept, sort_keys=True) if kept else ""), len(attrs) - len(kept)


class _Writer:
    def __init__(self, out: Path, name: str, header: list[str], report: ExportReport) -> None:
        self.fh = (out / name).open("w", newline="", encoding="utf-8")
        self.csv = csv.writer(self.fh)
        self.csv.writerow(header)
        self.name, self.report = name, report
        report.rows[name] = 0

    def row(self, values: list[Any]) -> None:
        self.csv.writerow(values)
        self.report.rows[self.name] += 1

    def close(self) -> None:
        self.fh.close()


def _stays(
    session: Session, key: bytes, project: str, dates: _Dates, out: Path, report: ExportReport
) -> dict[int, _Stay]:
    stays: dict[int, _Stay] = {}
    patients: dict[int, tuple[str, str, timedelta]] = {}
    for p in session.execute(select(Patient.id, Patient.public_id, Patient.sex)).all():
        shift = timedelta(days=shift_days(key, project, p.public_id))
        patients[p.id] = (research_id(key, project, "patient", p.public_id), p.sex, shift)
    writer = _Writer(
        out,
        "encounters.csv",
        [
            "patient_id", "encounter_id", "sex", "age_years", "kind", "unit",
            "admission_source", "admitted", "length_of_stay_hours", "height_cm",
            "weight_kg", "attributes",
        ],
        report,
    )  # fmt: skip
    dropped = 0
    for enc in session.scalars(select(Encounter).order_by(Encounter.id)).yield_per(2000):
        patient_rid, sex, shift = patients[enc.patient_id]
        stay = _Stay(
            patient_rid,
            research_id(key, project, "encounter", enc.public_id),
            enc.admitted_at,
            shift,
        )
        stays[enc.id] = stay
        attrs, n = _numeric_attributes(enc.attributes)
        dropped += n
        writer.row(
            [
                patient_rid, stay.encounter_rid, sex, age_category(enc.age_years), enc.kind,
                enc.unit or "", enc.admission_source or "", dates.show(enc.admitted_at, shift),
                _hours(enc.discharged_at, enc.admitted_at), enc.height_cm, enc.weight_kg, attrs,
            ]
        )  # fmt: skip
    writer.close()
    report.dropped["encounter_text_attributes"] = dropped
    return stays


def _rows_by_patient(
    session: Session, key: bytes, project: str
) -> Iterator[tuple[int, str, timedelta]]:
    for p in session.execute(select(Patient.id, Patient.public_id)).all():
        yield (
            p.id,
            research_id(key, project, "patient", p.public_id),
            timedelta(days=shift_days(key, project, p.public_id)),
        )


def export_deidentified(
    session: Session,
    *,
    out: Path,
    hmac_key: bytes,
    dates: DateMode = "year",
    project: str = "default",
    actor: str = "cli",
) -> ExportReport:
    """Write the extract into the empty folder ``out`` and audit it in ``session``.

    Raises:
        ValueError: ``out`` exists and is not an empty folder, or an unknown date mode.
    """
    if dates not in ("year", "shift"):
        raise ValueError("dates must be 'year' or 'shift'")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; choose a new one")
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out=out, dates=dates)
    show = _Dates(dates)
    stays = _stays(session, hmac_key, project, show, out, report)
    by_patient = {
        pid: (rid, shift) for pid, rid, shift in _rows_by_patient(session, hmac_key, project)
    }

    obs = _Writer(
        out,
        "observations.csv",
        [
            "patient_id",
            "encounter_id",
            "code",
            "value",
            "unit",
            "minutes_since_admission",
            "effective",
        ],
        report,
    )
    free_text = 0
    query = select(Observation).order_by(Observation.id)
    for o in session.scalars(query).yield_per(5000):
        rid, shift = by_patient[o.patient_id]
        stay = stays.get(o.encounter_id) if o.encounter_id is not None else None
        minutes = (
            ""
            if stay is None
            else f"{(o.effective_at - stay.admitted_at).total_seconds() / 60:.1f}"
        )
        if o.value is None:  # a text-only result: nothing left once free text is dropped
            free_text += 1
            continue
        obs.row(
            [
                rid,
                stay.encounter_rid if stay else "",
                o.code,
                o.value,
                o.unit or "",
                minutes,
                show.show(o.effective_at, shift),
            ]
        )
    obs.close()
    report.dropped["observation_text_values"] = free_text

    cond = _Writer(
        out, "conditions.csv", ["patient_id", "encounter_id", "system", "code", "onset"], report
    )
    for c in session.scalars(select(Condition).order_by(Condition.id)).yield_per(5000):
        rid, shift = by_patient[c.patient_id]
        stay = stays.get(c.encounter_id) if c.encounter_id is not None else None
        cond.row(
            [
                rid,
                stay.encounter_rid if stay else "",
                c.system,
                c.code,
                show.show(c.onset_at or c.onset_on, shift),
            ]
        )
    cond.close()

    img = _Writer(
        out,
        "imaging.csv",
        [
            "patient_id",
            "encounter_id",
            "modality",
            "body_part",
            "started",
            "series_count",
            "instance_count",
        ],
        report,
    )
    for s in session.scalars(select(ImagingStudy).order_by(ImagingStudy.id)).yield_per(5000):
        rid, shift = by_patient[s.patient_id]
        stay = stays.get(s.encounter_id) if s.encounter_id is not None else None
        img.row(
            [
                rid,
                stay.encounter_rid if stay else "",
                s.modality or "",
                s.body_part or "",
                show.show(s.started_at or s.started_on, shift),
                s.series_count,
                s.instance_count,
            ]
        )
    img.close()

    outc = _Writer(
        out,
        "outcomes.csv",
        ["patient_id", "encounter_id", "kind", "value", "hours_since_admission"],
        report,
    )
    for r in session.scalars(select(Outcome).order_by(Outcome.id)).yield_per(5000):
        stay = stays[r.encounter_id]
        outc.row(
            [
                stay.patient_rid,
                stay.encounter_rid,
                r.kind,
                r.value,
                _hours(r.occurred_at, stay.admitted_at),
            ]
        )
    outc.close()

    _write_manifest(out, report, project)
    audit.record(
        session,
        audit.Event(
            "data.exported",
            "E",
            actor=actor,
            resource="DeidentifiedExtract",
            details={
                "method": "safe_harbor" if dates == "year" else "date_shift",
                "project": project,
                "folder": out.name,
                "rows": report.rows,
            },
        ),
    )
    logger.info("de-identified extract written", extra={"rows": report.rows, "dates": dates})
    return report


def _write_manifest(out: Path, report: ExportReport, project: str) -> None:
    manifest = {
        "created_year": utcnow().year,
        "method": "HIPAA Safe Harbor, 45 CFR 164.514(b)(2)"
        if report.dates == "year"
        else "date shifting (per-patient secret offset): needs an expert determination,"
        " 45 CFR 164.514(b)(1), or a limited data set agreement, 164.514(e)",
        "dates": report.dates,
        "project": project,
        "identifiers": SAFE_HARBOR,
        "zip_codes": "none exported; restricted 3-digit prefixes per HHS (2000 Census): "
        + ", ".join(RESTRICTED_ZIP3),
        "rows": report.rows,
        "dropped": report.dropped,
        "recipient_notice": "Do not attempt re-identification. Small cells (rare units,"
        " rare codes) may still need suppression before publication (164.514(b)(2)(ii)).",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
