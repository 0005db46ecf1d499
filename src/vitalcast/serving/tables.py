"""Tables of the serving layer: clinician and EHR feedback on served risks."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from vitalcast.db.base import Base, UTCDateTime, utcnow
from vitalcast.db.types import BigIntPK


class CdsFeedback(Base):
    """What the EHR user did with a CDS card (CDS Hooks feedback: accepted or overridden)."""

    __tablename__ = "cds_feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[str] = mapped_column(String(100))
    card_uuid: Mapped[str] = mapped_column(String(64), index=True)
    prediction_id: Mapped[int | None] = mapped_column(
        BigIntPK, ForeignKey("predictions.id"), nullable=True
    )
    outcome: Mapped[str] = mapped_column(String(16))  # accepted | overridden
    override_reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    user_comment: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    outcome_at: Mapped[datetime] = mapped_column(UTCDateTime)
    client: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
