"""Ward page server time for a 500+ patient ward (target: under 300 ms).

Stores a synthetic cohort of open ICU stays through the ingestion service (names and MRNs
encrypted as in production), writes a 24 h risk history per stay (hourly scores: what
the ward's sparklines and trends read), then requests ``GET /ward`` through the real app
in process and reports the time from request to complete HTML — database queries,
decryption of every listed patient's identifiers, the audit write and template
rendering; the network is excluded. The scores are stored rows, because the page reads
scores and never computes them.

    .venv/bin/python bench/ward_page.py                     # PostgreSQL on 127.0.0.1
                                    # (admin URL: VITALCAST_BENCH_DATABASE_URL)
    .venv/bin/python bench/ward_page.py --sqlite            # the embedded demo database
    .venv/bin/python bench/ward_page.py --patients 1000 --runs 30
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

import _results
from vitalcast.clinical.tables import Encounter
from vitalcast.config import load_settings
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.db.types import new_public_id
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.security import audit_keys
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.security.service import create_user
from vitalcast.serving.app import create_app
from vitalcast.serving.state import get_state
from vitalcast.synth.cohort import generate_cohort
from vitalcast.synth.service import store_cohort

PG_ADMIN = os.environ.get(
    "VITALCAST_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
PASSWORD = "benchmark password"
MAX_SECONDS = 120.0


def _store(url: str, data_dir: Path, patients: int, now: datetime) -> None:
    settings = load_settings(env="test", data_dir=data_dir, database_url=url, log_json=True)
    audit_keys.install_from_settings(settings)  # what it stores is audited
    engine = create_db_engine(url)
    upgrade_database(engine)
    started = time.perf_counter()
    batch = generate_cohort(n_current=patients, n_historic=0, seed=5, now=now)
    with Session(engine, expire_on_commit=False) as session:
        store_cohort(session=session, batch=batch, cipher=cipher_from_settings(settings), now=now)
    with Session(engine) as session, session.begin():
        version = ModelVersion(
            version="bench-ward",
            task="icu-mortality",
            artifact_path="-",
            sha256="0" * 64,
            threshold=0.3,
            metrics={},
        )
        session.add(version)
        session.flush()
        n = 0
        for enc in session.scalars(select(Encounter).where(Encounter.discharged_at.is_(None))):
            base = 0.02 + ((enc.id * 37) % 100) / 110
            for hours_ago in range(24, -1, -1):
                at = now - timedelta(hours=hours_ago)
                if at < enc.admitted_at:
                    continue
                score = min(0.98, base + 0.004 * (24 - hours_ago) * (enc.id % 3 - 1))
                session.add(
                    Prediction(
                        public_id=new_public_id(),
                        patient_id=enc.patient_id,
                        encounter_id=enc.id,
                        model_version_id=version.id,
                        task="icu-mortality",
                        role="champion",
                        score=max(score, 0.01),
                        band="high" if score >= 0.3 else "low",
                        as_of=at,
                        data_freshness_at=at,
                        features_digest="0" * 64,
                        explanation=[],
                        missing_inputs=["lactate_last"] if enc.id % 4 == 0 else [],
                    )
                )
                n += 1
        create_user(session, username="bench-nurse", password=PASSWORD, role="nurse")
        create_user(session, username="bench-ds", password=PASSWORD, role="data_scientist")
    engine.dispose()
    print(f"stored {patients} open stays and {n} scores in {time.perf_counter() - started:.1f} s")


def _signed_in(url: str, data_dir: Path, username: str) -> tuple[Flask, FlaskClient]:
    """The real app in process and a client signed in through the real form."""
    settings = load_settings(env="test", data_dir=data_dir, database_url=url, log_json=True)
    app = create_app(settings)
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert token
    signed = client.post(
        "/login", data={"username": username, "password": PASSWORD, "csrf_token": token.group(1)}
    )
    assert signed.status_code == 302, signed.status_code
    return app, client


def _measure(
    url: str, data_dir: Path, username: str, runs: int
) -> tuple[list[float], list[float], int, int]:
    app, client = _signed_in(url, data_dir, username)
    times = []
    cpu = []
    rows = size = 0
    deadline = time.monotonic() + MAX_SECONDS
    for i in range(runs + 3):
        started, cpu_started = time.perf_counter(), time.process_time()
        response = client.get("/ward")
        html = response.get_data()
        elapsed = (time.perf_counter() - started) * 1000
        cpu_ms = (time.process_time() - cpu_started) * 1000
        assert response.status_code == 200
        if i >= 3:  # the first requests warm pools, caches and compiled templates
            times.append(elapsed)
            cpu.append(cpu_ms)
        rows, size = html.count(b"data-patient="), len(html)
        if time.monotonic() > deadline:
            break
    get_state(app).close()
    return times, cpu, rows, size


def _profile(url: str, data_dir: Path, username: str, runs: int) -> None:
    """cProfile of ``runs`` requests plus each SQL statement's count and total time."""
    import cProfile
    import pstats

    from sqlalchemy import event

    app, client = _signed_in(url, data_dir, username)
    client.get("/ward")
    sql: dict[str, list[float]] = {}
    engine = get_state(app).engine

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        conn.info["t0"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        key = " ".join(statement.split())[:110]
        sql.setdefault(key, []).append(time.perf_counter() - conn.info["t0"])

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        client.get("/ward")
    profiler.disable()
    stats = pstats.Stats(profiler).sort_stats("cumulative")
    stats.print_stats(30)
    stats.sort_stats("tottime").print_stats(20)
    print("SQL per request (count, total ms):")
    for key, times in sorted(sql.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {len(times) / runs:5.1f}  {1000 * sum(times) / runs:8.1f} ms  {key}")


def _report(label: str, times: list[float], cpu: list[float], rows: int, size: int) -> None:
    """Wall time, and the app process's CPU time (what a quiet machine would approach)."""
    times = sorted(times)
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print(
        f"{label:<34} rows {rows:>4}  html {size / 1024:4.0f} KiB  runs {len(times):>3}  "
        f"wall median {statistics.median(times):6.1f} ms  p95 {p95:6.1f} ms  "
        f"max {times[-1]:6.1f} ms  app CPU median {statistics.median(cpu):6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=520)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--sqlite", action="store_true", help="embedded SQLite instead")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN)
    parser.add_argument(
        "--profile", action="store_true", help="cProfile and SQL timings of the nurse's page"
    )
    parser.add_argument("--save", action="store_true", help="write bench/results/ward_page.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    figures: dict[str, object] = {"patients": args.patients, "runs": args.runs}
    now = datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="vc-bench-ward-") as tmp:
        data_dir = Path(tmp) / "var"
        admin = None
        name = f"vc_bench_ward_{uuid.uuid4().hex[:8]}"
        if args.sqlite:
            url = f"sqlite:///{Path(tmp) / 'ward.db'}"
        else:
            admin = create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = str(
                create_engine(args.pg_admin_url)
                .url.set(database=name)
                .render_as_string(hide_password=False)
            )
        try:
            print(f"database: {'SQLite' if args.sqlite else 'PostgreSQL'}", flush=True)
            _store(url, data_dir, args.patients, now)
            if args.profile:
                _profile(url, data_dir, "bench-nurse", min(args.runs, 5))
                return
            for user, key, label in (
                ("bench-nurse", "nurse", "GET /ward (nurse: names decrypted)"),
                ("bench-ds", "data_scientist", "GET /ward (data scientist: no ids)"),
            ):
                times, cpu, rows, size = _measure(url, data_dir, user, args.runs)
                _report(label, times, cpu, rows, size)
                figures[key] = {
                    "rows": rows,
                    "html_kib": round(size / 1024),
                    "median_ms": round(statistics.median(times), 1),
                    "max_ms": round(max(times), 1),
                    "app_cpu_median_ms": round(statistics.median(cpu), 1),
                }
            figures["database"] = "SQLite" if args.sqlite else "PostgreSQL"
            if args.save:
                _results.save("ward_page", figures, load_at_start=load_at_start)
        finally:
            if admin is not None:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()


if __name__ == "__main__":
    main()
