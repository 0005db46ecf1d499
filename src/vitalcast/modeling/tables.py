"""Tables of the model registry and of served predictions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from vitalcast.db.base import Base, UTCDateTime, utcnow
from vitalcast.db.types import BigIntPK


def _one_per_task(alias: str) -> Index:
    """At most one row of a task holds ``alias`` (migration 0015): two champions would
    leave serving (newest promotion) and everything that asks for *the* champion
    disagreeing about which model scores patients."""
    where = text(f"alias = '{alias}'")
    return Index(
        f"uq_model_versions_task_{alias}",
        "task",
        unique=True,
        postgresql_where=where,
        sqlite_where=where,
    )


class ModelVersion(Base):
    """A registered artifact. ``alias`` is champion, challenger, retired (a former
    champion, which a rollback may restore), withdrawn (rolled back from) or null.

    ``sidecar_sha256`` is the hash of ``model.json`` at registration (null for versions
    registered before migration 0015): serving takes the threshold and feature list from
    it, so it is verified on load like the artifact.
    """

    __tablename__ = "model_versions"
    __table_args__ = (_one_per_task("champion"), _one_per_task("challenger"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(80), unique=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    artifact_path: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    sidecar_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    threshold: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    alias: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


# Decimal places of a risk in every JSON answer (REST, FHIR, live events): one figure
# everywhere, so a client comparing the risk POST /predict returned with the one a
# patient's page or event shows finds them equal. Six places keep the stored score to
# within 5·10⁻⁷, far below any clinical difference and below the model's own precision.
PROBABILITY_DECIMALS = 6


def public_probability(score: float) -> float:
    """A stored score as every surface answers it (:data:`PROBABILITY_DECIMALS` places)."""
    return round(float(score), PROBABILITY_DECIMALS)


class Prediction(Base):
    """One score served (or computed in shadow), with what it was based on."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_encounter_time", "encounter_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), nullable=True)
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"), nullable=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    task: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16), default="champion")
    score: Mapped[float] = mapped_column(Float)
    band: Mapped[str] = mapped_column(String(16))
    as_of: Mapped[datetime] = mapped_column(UTCDateTime)
    data_freshness_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    features_digest: Mapped[str] = mapped_column(String(64))
    explanation: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    missing_inputs: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
