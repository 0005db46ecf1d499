"""What the demo's 24 h risk history adds to scoring a ward patient (CPU per 100 stays).

Runs on a prepared demo database (``vitalcast demo --no-serve`` first) and scores the
same open stays two ways, alternating, each inside a transaction that is rolled back:
the current score only (``score_encounter``, what the demo did before) and the current
score plus the hourly history of the last 24 h (``score_with_history``).

    VITALCAST_DATA_DIR=var OMP_NUM_THREADS=1 .venv/bin/python bench/demo_history.py --stays 100
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter
from vitalcast.config import load_settings
from vitalcast.db import create_db_engine
from vitalcast.db.base import utcnow
from vitalcast.db.session import make_session_factory
from vitalcast.security import audit_keys
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.serving.demo import score_with_history
from vitalcast.serving.predictor import load_champion
from vitalcast.serving.scoring import score_encounter
from vitalcast.serving.state import AppState


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=100)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("VITALCAST_DATA_DIR", "var"))
    )
    args = parser.parse_args()
    settings = load_settings(env="demo", data_dir=args.data_dir)
    audit_keys.install_from_settings(settings)  # what it stores is audited
    engine = create_db_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)
    state = AppState(
        settings=settings, engine=engine, sessions=sessions, cipher=cipher_from_settings(settings)
    )
    predictor = load_champion(state)
    assert predictor is not None, "no champion: run `vitalcast demo --no-serve` first"
    with sessions() as session:
        ids = session.scalars(
            select(Encounter.id).where(Encounter.discharged_at.is_(None)).order_by(Encounter.id)
        ).all()[: args.stays]
    now = utcnow()
    ways: dict[str, Callable[[Session, Encounter], object]] = {
        "current score only": lambda s, e: score_encounter(s, predictor, e, as_of=now),
        "current + 24 h history": lambda s, e: score_with_history(s, predictor, e, now=now),
    }
    print(f"load average {os.getloadavg()}")
    for _ in range(2):
        for label, way in ways.items():
            with sessions() as session:
                cpu, wall = time.process_time(), time.perf_counter()
                for encounter_id in ids:
                    encounter = session.get(Encounter, encounter_id)
                    assert encounter is not None
                    way(session, encounter)
                print(
                    f"{label:<24} {len(ids)} stays: CPU {time.process_time() - cpu:6.1f} s"
                    f"  wall {time.perf_counter() - wall:6.1f} s",
                    flush=True,
                )
                session.rollback()
    print(f"load average {os.getloadavg()}")
    engine.dispose()


if __name__ == "__main__":
    main()
