"""Tables of model monitoring: drift runs and their per-feature results, alerts, runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from vitalcast.db.base import Base, UTCDateTime, utcnow


class DriftRun(Base):
    """One comparison of a recent window with a model's training reference."""

    __tablename__ = "drift_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    task: Mapped[str] = mapped_column(String(64))
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    n_recent: Mapped[int] = mapped_column(Integer)
    severity: Mapped[str] = mapped_column(String(16))  # worst of the features: none/moderate/major
    flagged: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    results: Mapped[list[DriftResult]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="DriftResult.feature"
    )


class DriftResult(Base):
    """One feature's (or the score's) drift in a run; ``details`` holds every statistic."""

    __tablename__ = "drift_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("drift_runs.id"), index=True)
    feature: Mapped[str] = mapped_column(String(128))
    psi: Mapped[float | None] = mapped_column(Float, nullable=True)
    ks_statistic: Mapped[float | None] = mapped_column(Float, nullable=True)
    js_distance: Mapped[float | None] = mapped_column(Float, nullable=True)
    missing_rate_reference: Mapped[float] = mapped_column(Float)
    missing_rate_recent: Mapped[float] = mapped_column(Float)
    severity: Mapped[str] = mapped_column(String(16))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    run: Mapped[DriftRun] = relationship(back_populates="results")


class MonitorAlert(Base):
    """A monitoring alert: one row per incident, deduplicated on ``dedup_key``.

    ``open_key`` equals ``dedup_key`` while the incident is open or acknowledged and is
    cleared on resolution; its unique constraint (NULLs are distinct on PostgreSQL and
    SQLite alike) guarantees at most one live incident per key even under concurrent runs.
    """

    __tablename__ = "monitor_alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule: Mapped[str] = mapped_column(String(64), index=True)
    severity: Mapped[str] = mapped_column(String(16))  # warning | critical
    state: Mapped[str] = mapped_column(String(16), index=True)  # open | acknowledged | resolved
    dedup_key: Mapped[str] = mapped_column(String(200), index=True)
    open_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    summary: Mapped[str] = mapped_column(String(500))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    delivery: Mapped[str | None] = mapped_column(String(200), nullable=True)


class MonitorRun(Base):
    """One ``vitalcast monitor run``: what each rule found (and counters for rates)."""

    __tablename__ = "monitor_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    task: Mapped[str] = mapped_column(String(64))
    firing: Mapped[int] = mapped_column(Integer, default=0)
    results: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
