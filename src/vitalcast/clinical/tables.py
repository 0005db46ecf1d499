"""The canonical clinical store: the contract between ingestion, features and serving.

Direct identifiers (name, MRN, birth date, contact details) never sit in plaintext
columns: ``Patient.identifiers_enc`` holds them AES-GCM encrypted under ``key_id``, and
``mrn_hmac`` lets staff find a patient by exact MRN through a keyed hash. Everything a
model uses (sex, age at admission, unit, measurements) is stored in the clear.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    Uuid,
    and_,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql import ColumnElement

from vitalcast.db.base import Base, UTCDateTime, utcnow
from vitalcast.db.types import BigIntPK, new_public_id


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("source", "source_ref"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    source: Mapped[str] = mapped_column(String(32))
    source_ref: Mapped[str] = mapped_column(String(200))
    source_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sex: Mapped[str] = mapped_column(String(8), default="unknown")
    identifiers_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    mrn_hmac: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    encounters: Mapped[list[Encounter]] = relationship(back_populates="patient")


class Encounter(Base):
    __tablename__ = "encounters"
    __table_args__ = (
        UniqueConstraint("source", "source_ref"),
        Index("ix_encounters_unit_discharged", "unit", "discharged_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    source: Mapped[str] = mapped_column(String(32))
    source_ref: Mapped[str] = mapped_column(String(200))
    source_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str] = mapped_column(String(16), default="icu")
    unit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    admission_source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    admitted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    discharged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    age_years: Mapped[float | None] = mapped_column(Float, nullable=True)
    height_cm: Mapped[float | None] = mapped_column(Float, nullable=True)
    weight_kg: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Encounter-level facts of tabular sources (e.g. Diabetes 130's admission type,
    # prior visits, medications) that have no LOINC observation equivalent.
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when a later version from the source said the stay never was one (FHIR
    # entered-in-error, cancelled): it is then no longer in progress, never scored, and
    # kept with its data (nothing is deleted). Final: a later version does not reopen it.
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    withdrawn_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The version of the newest message that cancelled the stay's discharge (HL7
    # ADT^A13): a discharge no newer than it (an old A03 resent, re-imported or late)
    # does not discharge the stay again. None: no discharge of it was ever cancelled.
    discharge_cancelled_version: Mapped[str | None] = mapped_column(String(64), nullable=True)

    patient: Mapped[Patient] = relationship(back_populates="encounters")

    @hybrid_property
    def in_progress(self) -> bool:
        """Not discharged and not withdrawn: a stay on the ward, to score and monitor.
        Every query for stays in progress uses this (in SQL, the same condition)."""
        return self.discharged_at is None and self.withdrawn_at is None

    @in_progress.inplace.expression
    @classmethod
    def _in_progress_expression(cls) -> ColumnElement[bool]:
        return and_(cls.discharged_at.is_(None), cls.withdrawn_at.is_(None))


class Observation(Base):
    """One measurement: the fact table, written by bulk ingest and read by features.

    Deliberately without foreign keys to ``patients`` and ``encounters``: every row is
    written by :func:`vitalcast.ingest.service.store_batch`, which resolves (or creates)
    the patient and encounter in the same transaction, and patients are never deleted.
    Each foreign-key check takes a share lock on the parent row, and dropping both,
    together with the (patient, key) unique index below, made bulk inserts about three
    times faster (docs/benchmarks.md, Ingestion). ``vitalcast db check`` reports orphans.
    The unique index leads with ``patient_id`` so that a batch, which arrives patient by
    patient, writes to a few index pages instead of random ones.
    """

    __tablename__ = "observations"
    __table_args__ = (
        Index("ix_observations_encounter_time", "encounter_id", "effective_at"),
        Index("ix_observations_patient_code_time", "patient_id", "code", "effective_at"),
        UniqueConstraint("patient_id", "dedup_key"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    patient_id: Mapped[int] = mapped_column()
    encounter_id: Mapped[int | None] = mapped_column(nullable=True)
    code: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    value_text: Mapped[str | None] = mapped_column(String(200), nullable=True)
    unit: Mapped[str | None] = mapped_column(String(16), nullable=True)
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    source: Mapped[str] = mapped_column(String(32))
    source_ref: Mapped[str] = mapped_column(String(300), default="")
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dedup_key: Mapped[uuid.UUID] = mapped_column(Uuid)
    source_version: Mapped[str | None] = mapped_column(String(64), nullable=True)


class RetractedResult(Base):
    """A result its source took back (HL7 OBX-11 ``W``/``D``/``X``, a FHIR Observation
    ``entered-in-error`` or ``cancelled``), by its source identity and the retraction's
    version: the newest retraction per result.

    Why: deleting the stored row is not enough. A result arriving after its retraction
    (out-of-order delivery), or the same result sent or imported again, would otherwise
    be stored and scored as if never taken back. :func:`vitalcast.ingest.service.store_batch`
    quarantines a result whose version is not newer than its retraction.
    """

    __tablename__ = "retracted_results"
    __table_args__ = (UniqueConstraint("patient_id", "dedup_key"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    dedup_key: Mapped[uuid.UUID] = mapped_column(Uuid)
    version: Mapped[str] = mapped_column(String(64))
    code: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Condition(Base):
    """A diagnosis or problem. Its onset is ``onset_at`` when the source gave a point in
    time, ``onset_on`` when it gave a day alone (never both): a day is neither dropped nor
    placed at an invented hour, and :func:`vitalcast.clinical.times.known_from` says from
    when either may be used."""

    __tablename__ = "conditions"
    __table_args__ = (UniqueConstraint("patient_id", "system", "code", "encounter_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"), nullable=True)
    system: Mapped[str] = mapped_column(String(100))
    code: Mapped[str] = mapped_column(String(64))
    display: Mapped[str | None] = mapped_column(String(300), nullable=True)
    onset_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    onset_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    source: Mapped[str] = mapped_column(String(32))
    source_ref: Mapped[str] = mapped_column(String(300), default="")


class ImagingStudy(Base):
    """An imaging study's metadata; its start is ``started_at`` or, known to the day
    only, ``started_on`` (as :class:`Condition`'s onset)."""

    __tablename__ = "imaging_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"), nullable=True)
    study_uid: Mapped[str] = mapped_column(String(128), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    body_part: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    description: Mapped[str | None] = mapped_column(String(300), nullable=True)
    series_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    instance_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source: Mapped[str] = mapped_column(String(32))
    source_ref: Mapped[str] = mapped_column(String(300), default="")


class Outcome(Base):
    __tablename__ = "outcomes"
    __table_args__ = (UniqueConstraint("encounter_id", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    encounter_id: Mapped[int] = mapped_column(ForeignKey("encounters.id"))
    kind: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    known_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    source: Mapped[str] = mapped_column(String(32))


class DeviceBinding(Base):
    """Which patient a bedside or wearable device is measuring, and since when."""

    __tablename__ = "device_bindings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"), nullable=True)
    bound_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    unbound_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    extra: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
