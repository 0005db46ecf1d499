"""Tables of the ingestion layer: runs and the quarantine of rejected items."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from vitalcast.db.base import Base, UTCDateTime, utcnow
from vitalcast.db.types import BigIntPK


class IngestRun(Base):
    """One unit of input (a file, a message, a batch) and what became of its items."""

    __tablename__ = "ingest_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    location: Mapped[str] = mapped_column(String(500))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    received: Mapped[int] = mapped_column(Integer, default=0)
    stored: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class QuarantineItem(Base):
    """An input item that was not stored. The raw payload is kept for review.

    The raw item may hold direct identifiers (a PID segment, a FHIR Patient, a CSV row
    with a name), so it is stored like ``Patient.identifiers_enc``: AES-GCM under
    ``key_id``, bound to :func:`raw_context` of the row (see :mod:`.quarantine`).
    """

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_runs.id"), nullable=True)
    source: Mapped[str] = mapped_column(String(32), index=True)
    location: Mapped[str] = mapped_column(String(500))
    reason_code: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(String(500))
    raw_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), nullable=True)
    code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    effective_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def raw_context(run_id: int | None, location: str) -> str:
    """Associated data of a quarantined raw item's ciphertext (binds it to its row)."""
    return f"quarantine:{run_id if run_id is not None else ''}:{location}"
