"""Bulk writes of observation rows, idempotent through the unique (patient, ``dedup_key``).

PostgreSQL: rows are streamed with ``COPY`` into a temporary staging table, then moved
with ``INSERT ... SELECT ... ON CONFLICT (patient_id, dedup_key) DO NOTHING``. ``COPY``
is the fastest way into PostgreSQL, and ``ON CONFLICT`` makes a re-run, or a duplicate
within the batch, a no-op even with concurrent writers (the MQTT consumer may store the
same reading while a file is loaded). Other backends (the embedded SQLite demo) use one
``INSERT ... ON CONFLICT DO NOTHING`` per row. Both run inside the caller's transaction.

Each row is ``(patient_id, encounter_id, code, value, value_text, unit, effective_at,
source_ref, device_id, dedup_key)`` with ``effective_at`` naive UTC, as stored by
:class:`vitalcast.db.base.UTCDateTime`.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

Row = tuple[
    int, int | None, str, float | None, str | None, str | None, datetime, str, str | None, uuid.UUID
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
)
_STAGE = "vc_observation_stage"
_COLS = ", ".join(COLUMNS)
# SQLAlchemy's SQLite DateTime storage format: text compares in time order only when
# every row uses exactly this form (microseconds included).
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def insert_observations(
    session: Session, rows: list[Row], *, source: str, received_at: datetime
) -> Counter[int | None]:
    """Insert rows whose dedup key is new; returns the stored count per encounter id."""
    if not rows:
        return Counter()
    if session.get_bind().dialect.name == "postgresql":
        return _insert_postgresql(session, rows, source=source, received_at=received_at)
    return _insert_generic(session, rows, source=source, received_at=received_at)


def _insert_postgresql(
    session: Session, rows: list[Row], *, source: str, received_at: datetime
) -> Counter[int | None]:
    conn = session.connection()
    # ON COMMIT DROP: the table lives for this transaction only; a second batch in the same
    # transaction reuses it (emptied below), and a rollback removes it with everything else.
    conn.execute(
        text(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ("
            "patient_id integer, encounter_id integer, code varchar(32), value float8,"
            " value_text varchar(200), unit varchar(16), effective_at timestamp,"
            " source_ref varchar(300), device_id varchar(64), dedup_key uuid"
            ") ON COMMIT DROP"
        )
    )
    dbapi: Any = conn.connection.driver_connection
    with dbapi.cursor() as cur:
        with cur.copy(f"COPY {_STAGE} ({_COLS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(
            f"WITH ins AS (INSERT INTO observations ({_COLS}, source, received_at)"
            f" SELECT {_COLS}, %s, %s FROM {_STAGE}"
            " ON CONFLICT (patient_id, dedup_key) DO NOTHING RETURNING encounter_id)"
            " SELECT encounter_id, count(*) FROM ins GROUP BY encounter_id",
            (source, received_at.replace(tzinfo=None)),
        )
        stored: Counter[int | None] = Counter(dict(cur.fetchall()))
        cur.execute(f"TRUNCATE {_STAGE}")
    return stored


def _insert_generic(
    session: Session, rows: list[Row], *, source: str, received_at: datetime
) -> Counter[int | None]:
    conn = session.connection()
    dbapi: Any = conn.connection.driver_connection
    placeholders = ", ".join("?" for _ in range(len(COLUMNS) + 2))
    sql = (
        f"INSERT INTO observations ({_COLS}, source, received_at) VALUES ({placeholders})"
        " ON CONFLICT (patient_id, dedup_key) DO NOTHING"
    )
    stored: Counter[int | None] = Counter()
    at = received_at.strftime(_SQLITE_TIME)
    cur = dbapi.cursor()
    try:
        # One statement per row keeps the per-encounter count exact (rowcount is 0 on a
        # conflict); SQLite runs this in-process, so a round trip costs microseconds.
        for row in rows:
            cur.execute(
                sql,
                (*row[:6], row[6].strftime(_SQLITE_TIME), *row[7:9], row[9].hex, source, at),
            )
            if cur.rowcount == 1:
                stored[row[1]] += 1
    finally:
        cur.close()
    return stored
