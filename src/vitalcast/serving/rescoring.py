"""Rescore encounters whose data changed, and announce the new risks.

Called after new observations are stored (HTTP, MQTT, HL7, FHIR), inside the same unit
of work: the predictions, their events and the observations commit together. The
challenger, when one is registered, is scored in shadow: stored with role "challenger",
never published to clinicians.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.db.base import utcnow
from vitalcast.modeling.tables import Prediction
from vitalcast.serving.realtime import risk_event
from vitalcast.serving.scoring import score_encounter
from vitalcast.serving.state import AppState


def rescore_encounters(
    session: Session,
    state: AppState,
    encounter_ids: Iterable[int],
    *,
    as_of: datetime | None = None,
) -> list[Prediction]:
    """Score each in-progress encounter with the champion (and the challenger in shadow)."""
    champion, challenger = state.predictor, state.challenger
    ids = sorted(set(encounter_ids))
    if champion is None or not ids:
        return []
    as_of = as_of or utcnow()
    rows = session.execute(
        select(Encounter, Patient.public_id)
        .join(Patient, Patient.id == Encounter.patient_id)
        .where(Encounter.id.in_(ids), Encounter.discharged_at.is_(None))
    ).all()
    served = []
    for encounter, patient_public_id in rows:
        prediction = score_encounter(session, champion, encounter, as_of=as_of)
        served.append(prediction)
        if challenger is not None:
            score_encounter(session, challenger, encounter, as_of=as_of, role="challenger")
        if state.bus is not None:
            state.bus.publish(
                session,
                risk_event(prediction, patient_public_id=patient_public_id, encounter=encounter),
            )
    return served
