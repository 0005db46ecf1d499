"""Tables of the serving layer: clinician and EHR feedback on served risks, and the CDS
client JWTs already used (replay protection)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
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


# Longest issuer (``iss``) and JWT id (``jti``) remembered; longer ones are refused
# (the issuer by the settings, the jti by ``cds_auth``), never cut.
MAX_CDS_ISSUER_CHARS = 2048
MAX_CDS_JTI_CHARS = 255


class CdsJwtUse(Base):
    """A CDS client JWT already accepted, named by its issuer and ``jti``, kept until it
    expires: the unique constraint makes a second use (a replay) fail to insert, in
    whichever worker it arrives (``serving/cds_auth.py``)."""

    __tablename__ = "cds_jwt_uses"
    __table_args__ = (UniqueConstraint("issuer", "jti"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    issuer: Mapped[str] = mapped_column(String(MAX_CDS_ISSUER_CHARS))
    jti: Mapped[str] = mapped_column(String(MAX_CDS_JTI_CHARS))
    # The token's exp plus the clock leeway: until then a replay could pass the exp check.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
