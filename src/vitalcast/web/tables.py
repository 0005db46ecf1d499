"""Clinician feedback on risk scores: alert acknowledgements and agree/disagree verdicts.

Kept as data (not only in the audit trail) because model monitoring and governance read
it back: how often clinicians disagree with the model, and why, is a signal of drift or of
a model that misses what the bedside sees.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from vitalcast.db.base import Base, UTCDateTime, utcnow
from vitalcast.db.types import BigIntPK

FEEDBACK_KINDS = ("acknowledge", "agree", "disagree")


class Feedback(Base):
    """One clinician response to the risk shown for an encounter."""

    __tablename__ = "ui_feedback"
    __table_args__ = (Index("ix_ui_feedback_encounter_time", "encounter_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"), nullable=True)
    # The score the clinician was looking at (null when the stay had no score yet).
    prediction_id: Mapped[int | None] = mapped_column(
        BigIntPK, ForeignKey("predictions.id"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    actor: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Integer, not an enum: new kinds must not need a schema change on SQLite.
    score_shown_permille: Mapped[int | None] = mapped_column(Integer, nullable=True)
