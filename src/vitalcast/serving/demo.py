"""The embedded demo: data, a model, users and scores, created once and then reused.

``vitalcast demo`` is the one command a newcomer runs. The first run generates the
synthetic cohort into SQLite under the data directory, trains and registers the first
``icu-mortality`` model and creates two demo users; later runs find all of it and only
score patients that have no score yet, so the server is up within seconds.

Each stay scored here also gets its risk history: hourly scores over the last
:data:`HISTORY_HOURS` (or since admission), computed from the observations as they stood
at each hour by the same feature and scoring code as live scores, so the ward's sparklines
and the patient page's risk over time show a course instead of one point.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.config import Settings
from vitalcast.db import create_db_engine, session_scope, upgrade_database
from vitalcast.db.base import utcnow
from vitalcast.db.session import make_session_factory
from vitalcast.modeling.tables import Prediction
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.security.service import create_user
from vitalcast.security.tables import User

if TYPE_CHECKING:
    from vitalcast.serving.predictor import Predictor

logger = logging.getLogger(__name__)

DEMO_SEED = 2012
DEMO_HISTORIC = 1500
DEMO_USERS = (("clinician", "clinician"), ("admin", "admin"))
_CHUNK = 100
HISTORY_HOURS = 24


@dataclass(frozen=True)
class DemoInfo:
    patients: int
    model_version: str | None
    scored: int
    credentials_file: Path
    credentials: dict[str, str]
    seconds: float


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def prepare_demo(settings: Settings, *, echo: Callable[[str], None]) -> DemoInfo:
    """Make sure the demo database has data, a champion model, users and scores."""
    started = time.monotonic()
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)
    sessions = make_session_factory(engine)
    cipher = cipher_from_settings(settings)

    with sessions() as session:
        patients = session.scalar(select(func.count()).select_from(Patient)) or 0
    if patients == 0:
        from vitalcast.synth import generate_cohort, store_cohort

        now = utcnow()
        echo(f"generating {settings.demo_patients} current and {DEMO_HISTORIC} past ICU stays ...")
        batch = generate_cohort(
            n_current=settings.demo_patients, n_historic=DEMO_HISTORIC, seed=DEMO_SEED, now=now
        )
        with sessions() as session:
            report = store_cohort(session=session, batch=batch, cipher=cipher, now=now)
        echo(report.render().splitlines()[0])
        with sessions() as session:
            patients = session.scalar(select(func.count()).select_from(Patient)) or 0

    from vitalcast.modeling.service import get_champion, train_and_register
    from vitalcast.modeling.train import FAST_BUDGET

    with sessions() as session:
        champion = get_champion(session, "icu-mortality")
    if champion is None:
        echo("training the first icu-mortality model on the synthetic cohort ...")
        with session_scope(sessions) as session:
            # The fast search budget and 3 folds keep a first demo within a minute or two;
            # `vitalcast train` uses the full documented budget.
            result = train_and_register(
                "icu-mortality",
                session=session,
                registry_dir=settings.resolved_registry_dir,
                budget=FAST_BUDGET,
                n_splits=3,
                n_boot=50,
            )
        version: str | None = result.version
    else:
        version = champion.version

    credentials = _ensure_users(settings, sessions)
    scored = _score_unscored(settings, sessions)
    engine.dispose()
    return DemoInfo(
        patients=patients,
        model_version=version,
        scored=scored,
        credentials_file=settings.data_dir / "keys" / "demo-credentials",
        credentials=credentials,
        seconds=time.monotonic() - started,
    )


def _ensure_users(settings: Settings, sessions: sessionmaker[Session]) -> dict[str, str]:
    path = settings.data_dir / "keys" / "demo-credentials"
    credentials: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, password = line.partition(" ")
            credentials[name] = password
    with session_scope(sessions) as session:
        for username, role in DEMO_USERS:
            exists = session.scalar(select(User.id).where(User.username == username))
            if exists is not None and username in credentials:
                continue
            if exists is None:
                password = credentials.get(username) or secrets.token_urlsafe(12)
                create_user(session, username=username, password=password, role=role)
                credentials[username] = password
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_secret(path, "".join(f"{u} {p}\n" for u, p in credentials.items()))
    return credentials


def _score_unscored(settings: Settings, sessions: sessionmaker[Session]) -> int:
    """Score in-progress stays that have no champion score yet (all of them on first run)."""
    from vitalcast.serving.predictor import load_champion
    from vitalcast.serving.state import AppState

    state = AppState(
        settings=settings,
        engine=_engine_of(sessions),
        sessions=sessions,
        cipher=cipher_from_settings(settings),
    )
    predictor = load_champion(state)
    if predictor is None:
        return 0
    scored_ids = select(Prediction.encounter_id).where(
        Prediction.role == "champion", Prediction.model_version_id == predictor.model_version_id
    )
    with sessions() as session:
        todo = session.scalars(
            select(Encounter.id).where(Encounter.in_progress, Encounter.id.not_in(scored_ids))
        ).all()
    now = utcnow()
    for start in range(0, len(todo), _CHUNK):
        with session_scope(sessions) as session:
            for encounter_id in todo[start : start + _CHUNK]:
                encounter = session.get(Encounter, encounter_id)
                assert encounter is not None
                score_with_history(session, predictor, encounter, now=now)
    return len(todo)


def score_with_history(
    session: Session,
    predictor: Predictor,
    encounter: Encounter,
    *,
    now: datetime,
    hours: int = HISTORY_HOURS,
) -> int:
    """Score ``encounter`` at each whole hour of the last ``hours`` and at ``now``.

    The stay's observations are read once; :func:`~vitalcast.features.stay_features` uses
    only those at or before each hour, exactly as a live score at that hour would have.
    Past scores are stored without an explanation (the page explains the current one),
    oldest first and the current score last, so "the newest score" means the same by
    time of data and by time of storage. Returns the number of scores stored.
    """
    from vitalcast.features import stay_features
    from vitalcast.serving.scoring import record_prediction, stay_input

    stay = stay_input(session, encounter, now)
    first = max(now - timedelta(hours=hours), encounter.admitted_at + timedelta(hours=1))
    at = first.replace(minute=0, second=0, microsecond=0)
    if at < first:
        at += timedelta(hours=1)
    times = []
    while at < now:
        times.append(at)
        at += timedelta(hours=1)
    observed = [t for _code, _value, t in stay.observations]
    for i, moment in enumerate([*times, now]):
        freshness = observed[bisect_right(observed, moment) - 1] if observed else None
        if freshness is not None and freshness > moment:
            freshness = None
        record_prediction(
            session,
            predictor,
            stay_features(stay, moment),
            role="champion",
            as_of=moment,
            freshness=freshness,
            encounter=encounter,
            explain=i == len(times),
        )
    return len(times) + 1


def _engine_of(sessions: sessionmaker[Session]) -> Engine:
    engine = sessions.kw["bind"]
    assert isinstance(engine, Engine)
    return engine
