"""MIMIC-IV (v2.x) CSV export: patients, admissions, transfers, ICU stays, labs, diagnoses.

Reads ``hosp/patients``, ``hosp/admissions``, ``hosp/transfers``, ``icu/icustays``,
``hosp/labevents`` (with ``hosp/d_labitems`` for labels) and ``hosp/diagnoses_icd``, as
``.csv.gz`` or ``.csv``. ``icu/chartevents`` is not read (the public demo copy lacks it).

Mapping decisions (Johnson et al., MIMIC-IV, Sci Data 2023;10:1, and the MIMIC-IV docs):

- **Dates.** MIMIC shifts each patient's dates into 2100-2200 for de-identification;
  ``anchor_year`` is a shifted year that falls in the real ``anchor_year_group`` (e.g.
  "2011 - 2013"). Every time of a patient is moved back by the constant offset from
  ``anchor_year`` to the first year of that group, which keeps all intervals exact and
  puts the stay in its real era (within the group's three years) instead of the future.
  Times are BIDMC (Boston) wall-clock times and are converted from America/New_York to UTC.
- **Encounters.** Each admission (``hadm_id``) is an ``inpatient`` encounter; each ICU
  stay (``stay_id``) is an ``icu`` encounter of its own (unit = first care unit); an ED
  visit without an admission (a ``transfers`` row with no ``hadm_id``) is an
  ``emergency`` encounter. Transfers of an admission are kept in its attributes.
- **Outcomes.** ``hospital_expire_flag`` is ``in_hospital_death`` of the admission and of
  each of its ICU stays, known at hospital discharge.
- **Labs.** MIMIC-IV 2.2's ``d_labitems`` has no LOINC column, so :data:`LAB_ITEMS` maps the
  itemids of the variables vitalcast models (checked against the d_labitems labels). Every
  other lab item is quarantined with reason ``unmapped_item`` (raw row kept), so it is
  counted in the report and can be replayed when the map grows; never silently dropped.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from vitalcast.clinical.records import RecordBatch, Sex
from vitalcast.clinical.times import check_year

SOURCE = "mimic-iv"
LOCAL_TZ = ZoneInfo("America/New_York")
ICD_SYSTEMS = {"9": "http://hl7.org/fhir/sid/icd-9-cm", "10": "http://hl7.org/fhir/sid/icd-10-cm"}
SEX: dict[str, Sex] = {"F": "female", "M": "male"}

# itemid -> (LOINC code of clinical/codes.py, unit override where MIMIC's is not UCUM-like).
# Blood-gas analyser duplicates of chemistry analytes (50809 glucose, 50822 potassium) are
# deliberately not mapped: they are whole-blood methods, not the serum tests of the codes.
LAB_ITEMS: dict[str, tuple[str, str | None]] = {
    "50862": ("1751-7", None),  # Albumin, g/dL
    "50863": ("6768-6", None),  # Alkaline Phosphatase, IU/L
    "50861": ("1742-6", None),  # Alanine Aminotransferase (ALT), IU/L
    "50878": ("1920-8", None),  # Asparate Aminotransferase (AST), IU/L
    "50885": ("1975-2", None),  # Bilirubin, Total, mg/dL
    "51006": ("3094-0", None),  # Urea Nitrogen, mg/dL
    "50907": ("2093-3", None),  # Cholesterol, Total, mg/dL
    "50912": ("2160-0", None),  # Creatinine, mg/dL
    "50931": ("2345-7", None),  # Glucose (chemistry), mg/dL
    "50882": ("1963-8", None),  # Bicarbonate (chemistry), mEq/L
    "51221": ("4544-3", None),  # Hematocrit, %
    "50971": ("2823-3", None),  # Potassium (chemistry), mEq/L
    "50813": ("2524-7", None),  # Lactate (blood gas), mmol/L
    "50960": ("19123-9", None),  # Magnesium, mg/dL
    "50983": ("2951-2", None),  # Sodium, mEq/L
    "50818": ("2019-8", None),  # pCO2 (blood gas), mm Hg
    "50821": ("2703-7", None),  # pO2 (blood gas), mm Hg
    "50820": ("2744-1", "[pH]"),  # pH (blood gas); MIMIC writes the unit as "units"
    "51265": ("777-3", None),  # Platelet Count, K/uL
    "50817": ("2708-6", None),  # Oxygen Saturation (blood gas), %
    "50816": ("3150-0", None),  # Oxygen (inspired O2 fraction at the gas draw), %
    "51002": ("10839-9", None),  # Troponin I, ng/mL
    "51003": ("6598-7", None),  # Troponin T, ng/mL
    "51301": ("6690-2", None),  # White Blood Cells, K/uL
    "51300": ("6690-2", None),  # WBC Count, K/uL
}

TABLES: dict[str, tuple[str, set[str], bool]] = {
    # name -> (module, required columns, required file)
    "patients": (
        "hosp",
        {"subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group"},
        True,
    ),
    "admissions": (
        "hosp",
        {"subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "hospital_expire_flag"},
        True,
    ),
    "transfers": (
        "hosp",
        {"subject_id", "hadm_id", "transfer_id", "eventtype", "careunit", "intime", "outtime"},
        False,
    ),
    "icustays": (
        "icu",
        {
            "subject_id",
            "hadm_id",
            "stay_id",
            "first_careunit",
            "last_careunit",
            "intime",
            "outtime",
        },
        False,
    ),
    "d_labitems": ("hosp", {"itemid", "label"}, False),
    "labevents": (
        "hosp",
        {"labevent_id", "subject_id", "hadm_id", "itemid", "charttime", "valuenum", "valueuom"},
        False,
    ),
    "diagnoses_icd": (
        "hosp",
        {"subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"},
        False,
    ),
}


class MimicFormatError(ValueError):
    """The folder is not a readable MIMIC-IV export."""


@dataclass(frozen=True)
class Table:
    """One CSV table: its location name and rows with their line numbers."""

    name: str
    rows: list[tuple[int, dict[str, str]]]


def read_export(folder: Path) -> dict[str, Table]:
    """Read every table the adapter uses; optional ones may be absent.

    Raises:
        MimicFormatError: not a folder, a required table missing, unreadable or
            truncated gzip, not UTF-8, or a table without its expected columns.
    """
    if not folder.is_dir():
        raise MimicFormatError(f"{folder}: not a folder (expected a MIMIC-IV export with hosp/)")
    tables: dict[str, Table] = {}
    for name, (module, columns, required) in TABLES.items():
        path = next(
            (
                p
                for p in (folder / module / f"{name}.csv.gz", folder / module / f"{name}.csv")
                if p.is_file()
            ),
            None,
        )
        if path is None:
            if required:
                raise MimicFormatError(f"{folder.name}: {module}/{name}.csv.gz is missing")
            continue
        tables[name] = _read_table(path, f"{module}/{path.name}", columns)
    return tables


def _read_table(path: Path, name: str, columns: set[str]) -> Table:
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise MimicFormatError(f"{name}: cannot read ({exc})") from None
    except UnicodeDecodeError as exc:
        raise MimicFormatError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = columns - set(reader.fieldnames or [])
    if missing:
        raise MimicFormatError(f"{name}: missing columns {', '.join(sorted(missing))}")
    rows: list[tuple[int, dict[str, str]]] = []
    line = 2
    for row in reader:
        rows.append((line, row))
        line = reader.line_num + 1
    return Table(name, rows)


def parse_export(tables: dict[str, Table], *, prefix: str = SOURCE) -> RecordBatch:
    """Map the tables of :func:`read_export` to canonical records."""
    from vitalcast.ingest.sources._mimic_rows import MimicMapper

    return MimicMapper(tables, prefix).run()


def shifted_offset(anchor_year: str, anchor_year_group: str) -> timedelta:
    """Offset moving a patient's shifted dates back to the first year of the real group."""
    real = int(anchor_year_group.split("-")[0].strip())
    return datetime(real, 1, 1) - datetime(int(anchor_year), 1, 1)


def local_time(text: str, offset: timedelta, what: str = "time") -> datetime | None:
    """A MIMIC wall-clock time, shifted back, as aware UTC (``None`` when empty).

    The year rule of :mod:`vitalcast.clinical.times` applies to the time shifted back
    (the export's own years run to about 2210, on purpose).

    Raises:
        ValueError: not an ISO date-time (the text is not echoed);
            :class:`~vitalcast.clinical.times.TimeOutOfRange` for the year.
    """
    if not text:
        return None
    try:
        wall = datetime.fromisoformat(text) + offset
    except (ValueError, OverflowError):
        raise ValueError(f"{what} is not an ISO 8601 date-time") from None
    check_year(wall, what)
    return wall.replace(tzinfo=LOCAL_TZ).astimezone(UTC)


def raw_row(row: dict[str, str]) -> str:
    """The raw row as JSON for the quarantine."""
    return json.dumps(row)
