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
) -> Select[*tuple[Any, ...]]:
    # Columns, not entities: the ward page lists hundreds of stays, and loading full ORM
    # objects (with every prediction's explanation JSON) cost more than the queries.
    latest = _latest_predictions()
    query: Select[*tuple[Any, ...]] = (
        select(
            Encounter.public_id,
            Encounter.unit,
            Encounter.age_years,
            Encounter.admitted_at,
            Patient.public_id,
            Patient.sex,
            Patient.identifiers_enc,
            Patient.key_id,
            Prediction.score,
            Prediction.band,
            Prediction.as_of,
            Prediction.data_freshness_at,
            Prediction.model_version_id,
            Prediction.missing_inputs,
        )
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
    for (
        enc_id,
        unit_name,
        age,
        admitted_at,
        patient_id,
        sex,
        blob,
        key_id,
        score,
        band,
        as_of,
        freshness,
        version_id,
        missing,
    ) in session.execute(query).all():
        identifiers = None
        if cipher is not None:
            identifiers = (
                cipher.decrypt(blob, key_id, context=f"patient:{patient_id}")
                if blob is not None and key_id is not None
                else {}
            )
        rows.append(
            WardRow(
                patient_id=patient_id,
                encounter_id=enc_id,
                unit=unit_name,
                age_years=age,
                sex=sex,
                admitted_at=admitted_at,
                score=score,
                band=band,
                scored_at=as_of,
                data_freshness_at=freshness,
                model_version_id=version_id,
                missing_inputs=list(missing or []),
                identifiers=identifiers,
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
