"""Read models of patients for the API and the ward page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.modeling.tables import Prediction
from vitalcast.security.crypto import FieldCipher


@dataclass(frozen=True)
class WardRow:
    """One in-progress stay with its latest champion risk."""

    patient_id: str
    encounter_id: str
    unit: str | None
    age_years: float | None
    sex: str
    admitted_at: datetime
    score: float | None
    band: str | None
    scored_at: datetime | None
    data_freshness_at: datetime | None
    model_version_id: int | None
    missing_inputs: list[str]
    identifiers: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.patient_id,
            "encounter_id": self.encounter_id,
            "unit": self.unit,
            "age_years": None if self.age_years is None else round(self.age_years),
            "sex": self.sex,
            "admitted_at": self.admitted_at.isoformat(),
            "identifiers": self.identifiers,
            "risk": None
            if self.score is None
            else {
                "probability": round(self.score, 4),
                "band": self.band,
                "as_of": self.scored_at.isoformat() if self.scored_at else None,
                "data_freshness_at": self.data_freshness_at.isoformat()
                if self.data_freshness_at
                else None,
                "missing_inputs": len(self.missing_inputs),
            },
        }


def _latest_predictions() -> Any:
    return (
        select(Prediction.encounter_id, func.max(Prediction.id).label("pid"))
        .where(Prediction.role == "champion")
        .group_by(Prediction.encounter_id)
        .subquery()
    )


def _ward_query(
    unit: str | None, mrn_hmac: str | None = None, patient_public_id: str | None = None
) -> Select[Encounter, Patient, Prediction]:
    latest = _latest_predictions()
    query = (
        select(Encounter, Patient, Prediction)
        .join(Patient, Patient.id == Encounter.patient_id)
        .outerjoin(latest, latest.c.encounter_id == Encounter.id)
        .outerjoin(Prediction, Prediction.id == latest.c.pid)
        .where(Encounter.discharged_at.is_(None))
    )
    if unit:
        query = query.where(Encounter.unit == unit)
    if mrn_hmac:
        query = query.where(Patient.mrn_hmac == mrn_hmac)
    if patient_public_id:
        query = query.where(Patient.public_id == patient_public_id)
    return query


def list_ward(
    session: Session,
    *,
    unit: str | None = None,
    limit: int = 50,
    offset: int = 0,
    cipher: FieldCipher | None = None,
    mrn_hmac: str | None = None,
    patient_public_id: str | None = None,
) -> tuple[list[WardRow], int]:
    """In-progress stays, highest current risk first; with identifiers when a cipher is given.

    ``mrn_hmac`` restricts the list to the patient whose keyed MRN hash matches (exact MRN
    search without decrypting anyone); ``patient_public_id`` to one patient's stay (the
    live ward row).
    """
    base = _ward_query(unit, mrn_hmac, patient_public_id)
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    query = (
        base.order_by(Prediction.score.desc().nulls_last(), Encounter.id)
        .limit(limit)
        .offset(offset)
    )
    rows = []
    for encounter, patient, prediction in session.execute(query).all():
        rows.append(
            WardRow(
                patient_id=patient.public_id,
                encounter_id=encounter.public_id,
                unit=encounter.unit,
                age_years=encounter.age_years,
                sex=patient.sex,
                admitted_at=encounter.admitted_at,
                score=prediction.score if prediction else None,
                band=prediction.band if prediction else None,
                scored_at=prediction.as_of if prediction else None,
                data_freshness_at=prediction.data_freshness_at if prediction else None,
                model_version_id=prediction.model_version_id if prediction else None,
                missing_inputs=list(prediction.missing_inputs or []) if prediction else [],
                identifiers=decrypt_identifiers(cipher, patient) if cipher else None,
            )
        )
    return rows, int(total)


def decrypt_identifiers(cipher: FieldCipher, patient: Patient) -> dict[str, str]:
    """A patient's direct identifiers in clear (callers must hold identifiers:read)."""
    if patient.identifiers_enc is None or patient.key_id is None:
        return {}
    return cipher.decrypt(
        patient.identifiers_enc, patient.key_id, context=f"patient:{patient.public_id}"
    )


def ward_units(session: Session) -> list[str]:
    """Units that have patients in progress."""
    rows = session.scalars(
        select(Encounter.unit)
        .where(and_(Encounter.discharged_at.is_(None), Encounter.unit.is_not(None)))
        .distinct()
        .order_by(Encounter.unit)
    ).all()
    return [r for r in rows if r]
