"""Benchmark: vitalcast's real ``POST /api/v1/predict`` over HTTP under ``vitalcast serve``.

serving_hotpath.py measures the compiled scorer behind a bare endpoint. This measures what
a hospital integration actually calls: the production app under ``vitalcast serve``
(gunicorn, gthread workers) with API-key authentication, request validation against the
champion's features, the prediction stored in PostgreSQL and an audit event written per
request. Two variants: with the top contributing factors (``explain``, the default) and
without them (``?explain=false``, what a high-rate integration would ask for).

The champion is an ``icu-mortality`` model trained here with the fast budget on a
synthetic cohort (the scoring path is the same for any model of the same kind); the
bodies are feature vectors of synthetic stays with their real missing values. The
per-key rate limit is raised for the run, because the default (3,000 per minute) is
meant to stop a runaway client, not to cap a benchmark. Needs Debian's ``wrk``.

    .venv/bin/python bench/serving_api.py [--duration-s 10] [--workers 2] [--save]
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import orjson
from sqlalchemy import create_engine, text

import _results
from serving_hotpath import _free_port, run_wrk, wait_ready
from vitalcast.config import load_settings
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.db.session import make_session_factory, session_scope
from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.registry import load_model
from vitalcast.modeling.service import train_and_register
from vitalcast.modeling.tasks import get_task
from vitalcast.modeling.train import FAST_BUDGET
from vitalcast.security import audit_keys
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.security.service import create_api_key
from vitalcast.synth import generate_cohort, store_cohort

BENCH = Path(__file__).resolve().parent
PG_ADMIN = os.environ.get(
    "VITALCAST_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
DB_NAME = "vitalcast_bench_api"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _fresh_database() -> str:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {DB_NAME}"))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{DB_NAME}"


def _production_env(url: str, data_dir: Path) -> dict[str, str]:
    """A production configuration: every secret from the environment, debug off."""

    def key() -> str:
        return base64.b64encode(secrets.token_bytes(32)).decode()

    return {
        "VITALCAST_ENV": "production",
        "VITALCAST_DATA_DIR": str(data_dir),
        "VITALCAST_DATABASE_URL": url,
        "VITALCAST_SECRET_KEY": secrets.token_urlsafe(32),
        "VITALCAST_FIELD_KEY": key(),
        "VITALCAST_HMAC_KEY": key(),
        "VITALCAST_RATE_LIMIT_PER_CALLER": "1000000/minute",
        "VITALCAST_RATE_LIMIT_PER_ADDRESS": "1000000/minute",
        "VITALCAST_LOG_LEVEL": "WARNING",
    }


def prepare(env: dict[str, str], data_dir: Path) -> tuple[str, list[bytes], str]:
    """Store a cohort, train and register a champion, create a key; returns bodies too."""
    settings = load_settings(
        env="production",
        data_dir=data_dir,
        database_url=env["VITALCAST_DATABASE_URL"],
        secret_key=env["VITALCAST_SECRET_KEY"],
        field_key=env["VITALCAST_FIELD_KEY"],
        hmac_key=env["VITALCAST_HMAC_KEY"],
    )
    audit_keys.install_from_settings(settings)  # what it stores is audited
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)
    sessions = make_session_factory(engine)
    batch = generate_cohort(n_current=0, n_historic=400, seed=11, now=NOW)
    with sessions() as session:
        store_cohort(session=session, batch=batch, cipher=cipher_from_settings(settings), now=NOW)
    with session_scope(sessions) as session:
        out = train_and_register(
            "icu-mortality",
            session=session,
            registry_dir=settings.resolved_registry_dir,
            budget=FAST_BUDGET,
            n_splits=3,
            n_boot=20,
        )
        _, api_key = create_api_key(session, name="bench-integration", role="integration")
    model = load_model(out.artifact_path, out.sha256)
    with sessions() as session:
        frame = load_dataset(get_task("icu-mortality"), session=session).X
    engine.dispose()
    # Feature vectors of the stored stays, missing values as JSON null, as posted by an
    # integration; the server sees 200 different rows in turn.
    rows = frame[model.feature_names].head(200).astype(object)
    bodies = [
        orjson.dumps({k: (None if v != v else v) for k, v in rec.items()})
        for rec in rows.to_dict("records")
    ]
    print(f"champion {out.version}, {len(model.feature_names)} features, {len(bodies)} bodies")
    return api_key, bodies, out.version


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--save", action="store_true", help="write bench/results/serving_api.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    load_at_start = os.getloadavg()[0]
    print(f"load average at start: {os.getloadavg()}, cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="vitalcast-bench-api-") as tmp:
        data_dir = Path(tmp)
        env = _production_env(_fresh_database(), data_dir)
        api_key, bodies, version = prepare(env, data_dir)
        body_file = data_dir / "bodies.jsonl"
        body_file.write_bytes(b"\n".join(bodies) + b"\n")
        port = _free_port()
        cmd = [
            str(Path(sys.executable).parent / "vitalcast"),
            "serve",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ]
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        results: dict[str, dict[str, float]] = {}
        try:
            wait_ready(port, proc, path="/readyz", timeout_s=90)
            for label, path in (
                ("explain=false", "/api/v1/predict?explain=false"),
                ("with factors (default)", "/api/v1/predict"),
            ):
                print(f"  measuring {label} ...", flush=True)
                results[label] = run_wrk(
                    f"http://127.0.0.1:{port}{path}",
                    body_file,
                    args.duration_s,
                    headers=(f"Authorization: Bearer {api_key}",),
                )
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            err = proc.stderr.read().decode() if proc.stderr else ""
            if proc.returncode not in (0, -signal.SIGTERM) and err:
                print(err[-2000:], file=sys.stderr)
        stored = _count_rows(env["VITALCAST_DATABASE_URL"])
    print(
        f"\nPOST /api/v1/predict, wrk 2 threads x 8 connections, {args.duration_s} s, "
        f"vitalcast serve --workers {args.workers} (gthread x4), model {version}"
    )
    print("| variant | requests/s | p50 ms | p99 ms | non-2xx |")
    print("| --- | --- | --- | --- | --- |")
    for label, r in results.items():
        print(
            f"| {label} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f}"
            f" | {r['non2xx']:.0f} |"
        )
    print(f"predictions stored: {stored['predictions']:,}; audit events: {stored['audit']:,}")
    if any(r["non2xx"] for r in results.values()):
        print("non-2xx responses: the figures are not valid", file=sys.stderr)
        return 1
    if args.save:
        fast = results["explain=false"]
        full = results["with factors (default)"]
        _results.save(
            "serving_api",
            {
                "rps": round(fast["rps"], 1),
                "p50_ms": round(fast["p50_ms"], 2),
                "p99_ms": round(fast["p99_ms"], 2),
                "explain": {k: round(full[k], 2) for k in ("rps", "p50_ms", "p99_ms")},
                "workers": args.workers,
                "duration_s": args.duration_s,
                "predictions_stored": stored["predictions"],
                "audit_events": stored["audit"],
            },
            load_at_start=load_at_start,
        )
    return 0


def _count_rows(url: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        out = {
            "predictions": int(conn.scalar(text("SELECT count(*) FROM predictions")) or 0),
            "audit": int(conn.scalar(text("SELECT count(*) FROM audit_events")) or 0),
        }
    engine.dispose()
    return out


if __name__ == "__main__":
    raise SystemExit(main())
