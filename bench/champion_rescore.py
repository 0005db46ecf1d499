"""How long a new champion takes to reach every stay in progress.

After `vitalcast models promote`/`rollback` (or `retrain --auto-promote`) every open stay
is rescored with the new champion (``serving.rescoring.rescore_stays_in_progress``):
features from the store as of now, the compiled scorer, the explanation, the stored
prediction, its live event (``pg_notify``) and one audit event per 200 stays. This
stores a synthetic ward of open stays through the ingestion service, trains a small
model on synthetic history (not timed), and times the rescoring.

It also times the query a stream command runs at start to find the stays a killed run
left unscored (``serving.rescoring.stays_with_unscored_data``), before the rescoring (no
stay scored: each stay's first observation answers) and after it (every stay scored: each
stay's observations are all read, the worst case).

    .venv/bin/python bench/champion_rescore.py                  # 500 open stays
    .venv/bin/python bench/champion_rescore.py --patients 1000 --save
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import _results
from _champion import train_small_champion
from _scratch import scratch_database
from vitalcast.clinical.tables import Observation
from vitalcast.config import load_settings
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.db.session import make_session_factory
from vitalcast.security import audit_keys
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.serving.predictor import load_predictor
from vitalcast.serving.realtime import EventBus
from vitalcast.serving.rescoring import rescore_stays_in_progress, stays_with_unscored_data
from vitalcast.synth.cohort import generate_cohort
from vitalcast.synth.service import store_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=500, help="open stays on the ward")
    parser.add_argument("--save", action="store_true", help="write bench/results/*.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    with scratch_database("vc_bench_rescore") as url, tempfile.TemporaryDirectory() as tmp:
        figures = _run(url, Path(tmp), args.patients)
    print(
        f"rescored {figures['stays']} open stays in {figures['seconds']:.1f} s"
        f" ({figures['stays_per_second']:.0f} stays/s, {figures['ms_per_stay']:.1f} ms each;"
        f" load average {load_at_start:.1f} at start)"
    )
    print(
        f"start-up catch-up query over {figures['observations']:.0f} observations:"
        f" {figures['catch_up_none_scored_s'] * 1000:.0f} ms with no stay scored,"
        f" {figures['catch_up_all_scored_s'] * 1000:.0f} ms with every stay scored"
    )
    if args.save:
        _results.save("champion_rescore", figures, load_at_start=load_at_start)


def _run(url: str, data_dir: Path, patients: int) -> dict[str, float]:
    settings = load_settings(env="test", data_dir=data_dir, database_url=url, log_json=True)
    audit_keys.install_from_settings(settings)  # each chunk writes its audit event
    engine = create_db_engine(url)
    upgrade_database(engine)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    history = generate_cohort(n_current=0, n_historic=400, seed=11, now=now)
    ward = generate_cohort(
        n_current=patients, n_historic=0, seed=5, now=now, first_record_id=100_000
    )
    cipher = cipher_from_settings(settings)
    with sessions() as session:
        store_cohort(session=session, batch=history, cipher=cipher, now=now)
        store_cohort(session=session, batch=ward, cipher=cipher, now=now)
    train_small_champion(sessions, data_dir / "registry")
    champion = load_predictor(sessions, "icu-mortality", "champion")
    assert champion is not None
    bus = EventBus(engine)  # pg_notify in each chunk's transaction, as the CLI does
    none_scored = _catch_up_seconds(sessions, patients)
    started = time.perf_counter()
    done = rescore_stays_in_progress(sessions, champion, bus=bus)
    seconds = time.perf_counter() - started
    all_scored = _catch_up_seconds(sessions, 0)
    with sessions() as session:
        observations = session.scalar(select(func.count()).select_from(Observation)) or 0
    engine.dispose()
    return {
        "catch_up_none_scored_s": round(none_scored, 3),
        "catch_up_all_scored_s": round(all_scored, 3),
        "observations": observations,
        "stays": done.stays,
        "seconds": round(seconds, 2),
        "stays_per_second": round(done.stays / seconds, 1),
        "ms_per_stay": round(1000 * seconds / done.stays, 2),
    }


def _catch_up_seconds(sessions: sessionmaker[Session], expected: int) -> float:
    """The best of three runs of the start-up query; checks it finds ``expected`` stays."""
    times = []
    for _ in range(3):
        with sessions() as session:
            started = time.perf_counter()
            found = stays_with_unscored_data(session)
            times.append(time.perf_counter() - started)
        assert len(found) == expected, (len(found), expected)
    return min(times)


if __name__ == "__main__":
    main()
