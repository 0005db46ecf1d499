"""Benchmark: latency from an observation posted over HTTP to its SSE risk event.

Trains a small champion on a synthetic cohort, stores current stays, starts the real
server (``vitalcast serve``: gunicorn, 2 gthread workers) on a fresh
PostgreSQL database, opens SSE streams on ``GET /api/v1/events`` (several, so that both
workers hold subscribers), then posts one observation at a time to
``POST /api/v1/observations`` and records, for each, the time from just before the POST
is sent to the arrival of the SSE event carrying the prediction the POST produced. The
event path crosses processes: the worker that stored and rescored notifies through
PostgreSQL LISTEN/NOTIFY, and every worker's listener fans it out to its streams.

    VITALCAST_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        OMP_NUM_THREADS=1 .venv/bin/python bench/ingest_to_event.py --n 300

Prints n, median, p95, p99 and max (ms) of the slowest stream's arrival per post, and the
load average. The target (issue 5) is p99 < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.live import live_server
from tests.services import DatabaseFactory

import _results
from _champion import train_small_champion
from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.config import load_settings
from vitalcast.db import create_db_engine, session_scope
from vitalcast.db.session import make_session_factory
from vitalcast.security import audit_keys
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.security.service import create_api_key
from vitalcast.synth import generate_cohort, store_cohort


def prepare(url: str, home: Path) -> tuple[str, list[tuple[str, str]]]:
    """Store 400 past and 10 current stays, train the champion; an API key and the stays."""
    settings = load_settings(env="test", data_dir=home, database_url=url)
    audit_keys.install_from_settings(settings)  # what it stores is audited
    engine = create_db_engine(url)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    cipher = cipher_from_settings(settings)
    with sessions() as session:
        store_cohort(
            session=session,
            batch=generate_cohort(n_current=10, n_historic=400, seed=11, now=now),
            cipher=cipher,
            now=now,
        )
    train_small_champion(
        sessions, home / "registry"
    )  # the first version of a task becomes champion
    with session_scope(sessions) as session:
        _, key = create_api_key(session, name="bench", role="integration")
        stays = list(
            session.execute(
                select(Patient.public_id, Encounter.public_id)
                .join(Encounter, Encounter.patient_id == Patient.id)
                .where(Encounter.discharged_at.is_(None))
            )
        )
    engine.dispose()
    if not stays:
        raise SystemExit("no stays stored")
    return key, stays


def listen(
    url: str,
    headers: dict[str, str],
    arrivals: queue.Queue[tuple[str, float]],
    ready: threading.Event,
    stop: threading.Event,
) -> None:
    with httpx.stream("GET", f"{url}/api/v1/events", headers=headers, timeout=60.0) as response:
        ready.set()
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                arrivals.put((event["prediction_id"], time.perf_counter()))
            if stop.is_set():
                return


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(
    url: str, key: str, stays: list[tuple[str, str]], n: int, streams: int
) -> tuple[list[float], list[float]]:
    """Per post: (ingest -> last stream's event, POST round trip), in ms."""
    headers = {"Authorization": f"Bearer {key}"}
    arrivals: queue.Queue[tuple[str, float]] = queue.Queue()
    stop = threading.Event()
    for _ in range(streams):
        ready = threading.Event()
        threading.Thread(
            target=listen, args=(url, headers, arrivals, ready, stop), daemon=True
        ).start()
        if not ready.wait(15):
            raise SystemExit("SSE stream did not open")
    time.sleep(1.0)
    latencies: list[float] = []
    posts: list[float] = []
    seen: dict[str, list[float]] = {}
    base = datetime.now(UTC) - timedelta(minutes=30)
    with httpx.Client(base_url=url, headers=headers, timeout=30.0) as client:
        for i in range(n):
            patient, encounter = stays[i % len(stays)]
            body = [
                {
                    "code": "8867-4",
                    "value": 80 + i % 40,
                    "unit": "/min",
                    "time": (base + timedelta(seconds=i)).isoformat(),
                    "patient": patient,
                    "encounter": encounter,
                }
            ]
            started = time.perf_counter()
            response = client.post("/api/v1/observations", json=body)
            posts.append((time.perf_counter() - started) * 1000)
            if response.status_code != 201:
                raise SystemExit(f"POST failed: {response.status_code} {response.text}")
            prediction_id = response.json()["rescored"][0]["prediction_id"]
            deadline = started + 60.0  # the first rescore per worker builds the explainer
            while len(seen.get(prediction_id, [])) < streams:
                try:
                    pid, at = arrivals.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    raise SystemExit(
                        f"event {i} ({prediction_id}) not delivered to all streams in 60 s;"
                        f" received: {seen}"
                    ) from None
                seen.setdefault(pid, []).append(at)
            latencies.append((max(seen.pop(prediction_id)) - started) * 1000)
    stop.set()
    return latencies, posts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="observations posted")
    parser.add_argument("--streams", type=int, default=3, help="SSE subscribers")
    parser.add_argument(
        "--warmup", type=int, default=10, help="first posts reported apart (cold start)"
    )
    parser.add_argument(
        "--save", action="store_true", help="write bench/results/ingest_to_event.json"
    )
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    admin = os.environ.get(
        "VITALCAST_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    factory = DatabaseFactory(admin)
    try:
        factory.prepare_template()
        url = factory.new()
        with tempfile.TemporaryDirectory(prefix="vitalcast-bench-") as tmp:
            home = Path(tmp)
            key, stays = prepare(url, home)
            env = {
                "VITALCAST_ENV": "test",
                "VITALCAST_DATA_DIR": str(home),
                "VITALCAST_DATABASE_URL": url,
                "VITALCAST_RATE_LIMIT_ENABLED": "false",
                "VITALCAST_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
                "OMP_NUM_THREADS": "1",
            }
            with live_server(env, workers=2) as server:
                try:
                    all_latencies, all_posts = run(
                        server.url, key, stays, args.n + args.warmup, args.streams
                    )
                except SystemExit:
                    print(server.log.read_text()[-3000:], file=sys.stderr)
                    raise
    finally:
        factory.drop_all()
    load = os.getloadavg()
    cold, latencies = all_latencies[: args.warmup], all_latencies[args.warmup :]
    posts = all_posts[args.warmup :]
    print(
        f"ingest -> SSE event, gunicorn 2 workers, {args.streams} streams: n={len(latencies)} "
        f"median={statistics.median(latencies):.1f} ms p95={percentile(latencies, 0.95):.1f} ms "
        f"p99={percentile(latencies, 0.99):.1f} ms max={max(latencies):.1f} ms; "
        f"POST round trip median={statistics.median(posts):.1f} ms "
        f"p99={percentile(posts, 0.99):.1f} ms; "
        f"first {args.warmup} posts after start (cold): max={max(cold, default=0):.1f} ms "
        f"(load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})"
    )
    if args.save:
        figures = {
            "n": len(latencies),
            "streams": args.streams,
            "workers": 2,
            "p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(percentile(latencies, 0.95), 1),
            "p99_ms": round(percentile(latencies, 0.99), 1),
            "max_ms": round(max(latencies), 1),
            "post_p50_ms": round(statistics.median(posts), 1),
            "post_p99_ms": round(percentile(posts, 0.99), 1),
            "cold_max_ms": round(max(cold, default=0), 1),
        }
        _results.save("ingest_to_event", figures, load_at_start=load_at_start)


if __name__ == "__main__":
    main()
