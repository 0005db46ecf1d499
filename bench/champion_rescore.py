"""How long a new champion takes to reach every stay in progress.

After `vitalcast models promote`/`rollback` (or `retrain --auto-promote`) every open stay
is rescored with the new champion (``serving.rescoring.rescore_stays_in_progress``):
features from the store as of now, the compiled scorer, the explanation, the stored
prediction, its live event (``pg_notify``) and one audit event per 200 stays. This
stores a synthetic ward of open stays through the ingestion service, trains a small
model on synthetic history (not timed), and times the rescoring.

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

import _results
from _champion import train_small_champion
from _scratch import scratch_database
from vitalcast.config import load_settings
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.db.session import make_session_factory
from vitalcast.security import audit_keys
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.serving.predictor import load_predictor
from vitalcast.serving.realtime import EventBus
from vitalcast.serving.rescoring import rescore_stays_in_progress
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
    started = time.perf_counter()
    done = rescore_stays_in_progress(sessions, champion, bus=bus)
    seconds = time.perf_counter() - started
    engine.dispose()
    return {
        "stays": done.stays,
        "seconds": round(seconds, 2),
        "stays_per_second": round(done.stays / seconds, 1),
        "ms_per_stay": round(1000 * seconds / done.stays, 2),
    }


if __name__ == "__main__":
    main()
