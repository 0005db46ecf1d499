"""Bulk writes of observation rows, idempotent through the unique (patient, ``dedup_key``).

PostgreSQL: rows are streamed with ``COPY`` into a temporary staging table, then moved
with ``INSERT ... SELECT ... ON CONFLICT (patient_id, dedup_key) DO NOTHING``. ``COPY``
is the fastest way into PostgreSQL, and ``ON CONFLICT`` makes a re-run, or a duplicate
within the batch, a no-op even with concurrent writers (the MQTT consumer may store the
same reading while a file is loaded). Other backends (the embedded SQLite demo) use one
``INSERT ... ON CONFLICT DO NOTHING`` per row. Both run inside the caller's transaction.

Each row is ``(patient_id, encounter_id, code, value, value_text, unit, effective_at,
source_ref, device_id, dedup_key, source_version)`` with ``effective_at`` naive UTC, as
stored by :class:`vitalcast.db.base.UTCDateTime`.

Versioned rows (a FHIR Observation's ``meta``): the dedup key names the resource, not
its version, so a newer version *replaces* the stored row (``ON CONFLICT ... DO UPDATE
... WHERE`` the incoming version is greater), while the same or an older version changes
nothing. Unversioned rows never update (their version is NULL).
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

Row = tuple[
    int,
    int | None,
    str,
    float | None,
    str | None,
    str | None,
    datetime,
    str,
    str | None,
    uuid.UUID,
    str | None,
]
COLUMNS = (
    "patient_id",
    "encounter_id",
    "code",
    "value",
    "value_text",
    "unit",
    "effective_at",
    "source_ref",
    "device_id",
    "dedup_key",
    "source_version",
)


@dataclass
class Written:
    """What one insert wrote: rows per encounter id (None: no stay), how many of them
    replaced an older version, and the patients they belong to (for the audit trail)."""

    stored: Counter[int | None]
    updated: int
    patients: set[int]


_STAGE = "vc_observation_stage"
_COLS = ", ".join(COLUMNS)
_UPSERT = (
    " ON CONFLICT (patient_id, dedup_key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in ("patient_id", "dedup_key"))
    + ", received_at = excluded.received_at"
    " WHERE excluded.source_version IS NOT NULL AND (observations.source_version IS NULL"
    " OR excluded.source_version > observations.source_version)"
)
_KEEP = " ON CONFLICT (patient_id, dedup_key) DO NOTHING"
# SQLAlchemy's SQLite DateTime storage format: text compares in time order only when
# every row uses exactly this form (microseconds included).
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def insert_observations(
    session: Session, rows: list[Row], *, source: str, received_at: datetime
) -> Written:
    """Insert rows whose dedup key is new, replace older versions.

    Returns the rows written (inserted or replaced) per encounter id, how many of them
    replaced an older version, and the patients they belong to.
    """
    if not rows:
        return Written(Counter(), 0, set())
    # Unversioned batches (PhysioNet, CSV, HL7 results, devices: the bulk of the data)
    # keep the plain DO NOTHING insert; only versioned ones pay for the upsert.
    versioned = any(row[10] is not None for row in rows)
    conflict = _UPSERT if versioned else _KEEP
    if versioned:
        rows = _latest(rows)
    if session.get_bind().dialect.name == "postgresql":
        return _insert_postgresql(session, rows, source, received_at, conflict)
    return _insert_generic(session, rows, source, received_at, conflict)


def _latest(rows: list[Row]) -> list[Row]:
    """One row per dedup key (the highest version): an upsert may touch a row only once."""
    best: dict[tuple[int, uuid.UUID], Row] = {}
    for row in rows:
        have = best.get((row[0], row[9]))
        if have is None or (row[10] is not None and (have[10] is None or row[10] > have[10])):
            best[(row[0], row[9])] = row
    return rows if len(best) == len(rows) else list(best.values())


def _insert_postgresql(
    session: Session, rows: list[Row], source: str, received_at: datetime, conflict: str
) -> Written:
    conn = session.connection()
    # ON COMMIT DROP: the table lives for this transaction only; a second batch in the same
    # transaction reuses it (emptied below), and a rollback removes it with everything else.
    conn.execute(
        text(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ("
            "patient_id integer, encounter_id integer, code varchar(64), value float8,"
            " value_text varchar(200), unit varchar(16), effective_at timestamp,"
            " source_ref varchar(300), device_id varchar(64), dedup_key uuid,"
            " source_version varchar(64)) ON COMMIT DROP"
        )
    )
    dbapi: Any = conn.connection.driver_connection
    with dbapi.cursor() as cur:
        with cur.copy(f"COPY {_STAGE} ({_COLS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        # xmax is 0 on a freshly inserted row, the updating transaction's id otherwise.
        cur.execute(
            f"WITH ins AS (INSERT INTO observations ({_COLS}, source, received_at)"
            f" SELECT {_COLS}, %s, %s FROM {_STAGE}{conflict}"
            " RETURNING patient_id, encounter_id, xmax = 0 AS inserted)"
            " SELECT patient_id, encounter_id, count(*), count(*) FILTER (WHERE NOT inserted)"
            " FROM ins GROUP BY patient_id, encounter_id",
            (source, received_at.replace(tzinfo=None)),
        )
        written = Written(Counter(), 0, set())
        for patient_id, encounter_id, n, replaced in cur.fetchall():
            written.stored[encounter_id] += n
            written.updated += replaced
            written.patients.add(patient_id)
        cur.execute(f"TRUNCATE {_STAGE}")
    return written


def _insert_generic(
    session: Session, rows: list[Row], source: str, received_at: datetime, conflict: str
) -> Written:
    conn = session.connection()
    dbapi: Any = conn.connection.driver_connection
    placeholders = ", ".join("?" for _ in range(len(COLUMNS) + 2))
    sql = (
        f"INSERT INTO observations ({_COLS}, source, received_at) VALUES ({placeholders})"
        + conflict
    )
    written = Written(Counter(), 0, set())
    at = received_at.strftime(_SQLITE_TIME)
    cur = dbapi.cursor()
    try:
        # One statement per row keeps the per-encounter count exact (rowcount is 0 on a
        # conflict left alone); SQLite runs this in-process, so a round trip costs
        # microseconds. A versioned row is looked up first to tell a replacement apart.
        for row in rows:
            existed = row[10] is not None and (
                cur.execute(
                    "SELECT 1 FROM observations WHERE patient_id = ? AND dedup_key = ?",
                    (row[0], row[9].hex),
                ).fetchone()
                is not None
            )
            cur.execute(
                sql,
                (
                    *row[:6],
                    row[6].strftime(_SQLITE_TIME),
                    *row[7:9],
                    row[9].hex,
                    row[10],
                    source,
                    at,
                ),
            )
            if cur.rowcount == 1:
                written.stored[row[1]] += 1
                written.updated += existed
                written.patients.add(row[0])
    finally:
        cur.close()
    return written
