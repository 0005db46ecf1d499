"""Rescore encounters whose data changed, or every stay when the champion changes, and
announce the new risks.

:func:`rescore_encounters` is called after new observations are stored. Over HTTP
(``POST /api/v1/observations``) it runs inside the same unit of work: the predictions, their
events and the observations commit together. The stream processes (MQTT, HL7 over MLLP)
call it through :mod:`vitalcast.serving.stream_scoring`, after their ingest transaction has
committed and the messages are acknowledged, in a transaction of its own and at most once
per stay and interval: a reading must never wait for, or be lost with, a risk derived from
it. The FHIR and HL7 file imports call it the same way, once, after their last commit
(``--no-rescore`` skips it). The challenger, when one is registered, is scored in
shadow: stored with role "challenger", never published to clinicians.

:func:`rescore_stays_in_progress` runs after a new champion is promoted (or an old one
restored). Without it a ward kept showing the retired model's risks, or "Not scored",
until each stay's next observation: the model a clinician sees would depend on how
recently a nurse charted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.db.base import utcnow
from vitalcast.db.session import session_scope
from vitalcast.modeling.tables import Prediction
from vitalcast.modeling.tasks import STAY_POPULATION, Population
from vitalcast.security import audit
from vitalcast.serving.models import scoring_models
from vitalcast.serving.predictor import DEFAULT_TASK, Predictor, aliases_in, load_predictor
from vitalcast.serving.realtime import EventBus, risk_event
from vitalcast.serving.scoring import in_population, score_encounter, served_population
from vitalcast.serving.state import AppState

logger = logging.getLogger(__name__)

# Stays scored per transaction when the champion changes: a ward of a thousand stays is
# not one long transaction holding its locks, and a failure keeps what was committed.
RESCORE_CHUNK = 200


def rescore_encounters(
    session: Session,
    state: AppState,
    encounter_ids: Iterable[int],
    *,
    as_of: datetime | None = None,
) -> list[Prediction]:
    """Score each in-progress encounter inside the stay model's population with the
    champion (and the challenger in shadow); the others are left unscored.

    The models are the registry's as this transaction sees them, not merely the ones the
    process's watcher last loaded (:func:`vitalcast.serving.models.scoring_models`): a
    prediction of a retired champion stored after a promotion's rescoring pass would stay
    on the ward until the stay's next observation.
    """
    ids = sorted(set(encounter_ids))
    if not ids:
        return []
    champion, challenger = scoring_models(session, state)
    if champion is None:
        return []
    as_of = as_of or utcnow()
    population = served_population(state.settings)
    rows = session.execute(_stays_in_progress(population).where(Encounter.id.in_(ids))).all()
    served = []
    for encounter, patient_public_id in rows:
        served.append(
            _score_and_announce(session, champion, encounter, patient_public_id, state.bus, as_of)
        )
        if challenger is not None:
            score_encounter(session, challenger, encounter, as_of=as_of, role="challenger")
    return served


@dataclass(frozen=True)
class StaysRescored:
    """What :func:`rescore_stays_in_progress` did."""

    version: str
    stays: int
    # Stopped because another champion was promoted meanwhile: its own rescoring, run
    # after its commit, scores the stays this one did not reach.
    superseded: bool = False


def rescore_stays_in_progress(
    sessions: sessionmaker[Session],
    champion: Predictor,
    *,
    bus: EventBus | None = None,
    agent: audit.Agent = audit.SYSTEM,
    as_of: datetime | None = None,
    chunk: int = RESCORE_CHUNK,
    population: Population | None = STAY_POPULATION,
) -> StaysRescored:
    """Score every stay still in progress inside ``population`` (a deployment's is
    :func:`served_population`) with ``champion`` and announce each risk.

    Runs in transactions of ``chunk`` stays; each commits its predictions, their live
    events and one ``prediction.rescored`` audit event (model and count, no identifiers).
    Stays are taken in id order, so a stay admitted meanwhile is scored by its own data
    arrival, and a failure leaves the earlier chunks scored.

    A chunk commits only while ``champion`` is still the champion: when two promotions
    follow each other, the first one's pass would otherwise go on storing its model's
    risks after the second one's pass. The check is read after the chunk's audit event,
    under the chain lock that every alias change also takes, so no promotion commits
    between it and the chunk's commit; a superseded chunk is rolled back and the pass
    stops.
    """
    as_of = as_of or utcnow()
    last_id, total = 0, 0
    while True:
        try:
            with session_scope(sessions) as session:
                scored = _rescore_chunk(
                    session, champion, last_id, chunk, population, bus, agent, as_of
                )
        except _Superseded:
            logger.warning(
                "rescoring stopped: the champion changed meanwhile",
                extra={"version": champion.version, "stays": total},
            )
            return StaysRescored(version=champion.version, stays=total, superseded=True)
        if not scored:
            return StaysRescored(version=champion.version, stays=total)
        last_id = scored[-1]
        total += len(scored)


class _Superseded(Exception):
    """The champion being rescored with is no longer the registry's."""


def _rescore_chunk(
    session: Session,
    champion: Predictor,
    last_id: int,
    chunk: int,
    population: Population | None,
    bus: EventBus | None,
    agent: audit.Agent,
    as_of: datetime,
) -> list[int]:
    """Score the next ``chunk`` stays in progress after ``last_id``; their ids, in order."""
    rows = session.execute(
        _stays_in_progress(population)
        .where(Encounter.id > last_id)
        .order_by(Encounter.id)
        .limit(chunk)
    ).all()
    if not rows:
        return []
    for encounter, patient_public_id in rows:
        _score_and_announce(session, champion, encounter, patient_public_id, bus, as_of)
    audit.record(
        session,
        agent.event(
            "prediction.rescored",
            "E",
            resource=f"model/{champion.version}",
            details={"stays": len(rows), "reason": "champion changed"},
        ),
    )
    if aliases_in(session, champion.task).get("champion") != champion.model_version_id:
        raise _Superseded
    return [encounter.id for encounter, _ in rows]


def rescore_after_champion_change(
    database_url: str,
    redis_url: str | None,
    task: str,
    agent: audit.Agent,
    population: Population | None = STAY_POPULATION,
) -> StaysRescored | None:
    """Rescore the stays in progress with ``task``'s champion as it now stands, from a
    process outside the server (the ``models promote``/``rollback`` and ``retrain``
    commands), announcing each risk to every server's live pages.

    None when ``task`` is not the one scored on stays in progress (a readmission model
    scores at discharge) or when it has no champion that loads.
    """
    from vitalcast.db import create_db_engine
    from vitalcast.db.session import make_session_factory

    if task != DEFAULT_TASK:
        return None
    engine = create_db_engine(database_url)
    try:
        sessions = make_session_factory(engine)
        champion = load_predictor(sessions, task, "champion")
        if champion is None:
            return None
        # A publisher only: it never subscribes, so it starts no listener thread.
        bus = EventBus(engine, redis_url)
        return rescore_stays_in_progress(
            sessions, champion, bus=bus, agent=agent, population=population
        )
    finally:
        engine.dispose()


def stays_with_unscored_data(
    session: Session,
    task: str = DEFAULT_TASK,
    population: Population | None = STAY_POPULATION,
) -> list[int]:
    """Stays in progress holding an observation stored after their newest champion
    prediction of ``task`` (or with observations and no such prediction); in id order.

    A stream process that was killed (SIGKILL, a node lost) had stays waiting for their
    coalescing interval; nothing else rescores them until their next data. Their readings
    were committed, so the database says which they are: the stream commands score these
    at start. Costs one pass over the stays' observation index (an EXISTS that stops at
    the first newer row).
    """
    newest = (
        select(func.max(Prediction.created_at))
        .where(
            Prediction.encounter_id == Encounter.id,
            Prediction.role == "champion",
            Prediction.task == task,
        )
        .scalar_subquery()
    )
    unscored = (
        select(Observation.id)
        .where(
            Observation.encounter_id == Encounter.id,
            or_(newest.is_(None), Observation.received_at > newest),
        )
        .exists()
    )
    query = (
        select(Encounter.id)
        .where(Encounter.in_progress, in_population(population), unscored)
        .order_by(Encounter.id)
    )
    return list(session.scalars(query))


def _stays_in_progress(population: Population | None) -> Select[Encounter, str]:
    """Encounters not yet discharged and inside the stay model's population (an outpatient
    visit in progress is not a stay to score), with their patient's public id (for the
    event)."""
    return (
        select(Encounter, Patient.public_id)
        .join(Patient, Patient.id == Encounter.patient_id)
        .where(Encounter.in_progress, in_population(population))
    )


def _score_and_announce(
    session: Session,
    predictor: Predictor,
    encounter: Encounter,
    patient_public_id: str,
    bus: EventBus | None,
    as_of: datetime,
) -> Prediction:
    prediction = score_encounter(session, predictor, encounter, as_of=as_of)
    if bus is not None:
        bus.publish(
            session,
            risk_event(prediction, patient_public_id=patient_public_id, encounter=encounter),
        )
    return prediction
