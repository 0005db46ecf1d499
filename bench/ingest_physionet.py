"""Benchmark: bulk ingest of PhysioNet 2012 sets A+B into a fresh PostgreSQL database.

Usage:
    .venv/bin/python bench/ingest_physionet.py \\
        --admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        --data /work/shared/data/physionet2012 [--sets a b] [--keep]

Creates a throwaway database, migrates it, ingests each set with its Outcomes file in
one transaction per set (as `vitalcast ingest physionet2012` does), and prints rows per
second, with the CPU seconds spent by this process and by its PostgreSQL backend
(read from /proc when the server is local), so that a run on a busy machine can still
be judged by its CPU cost. "Rows" are the measurement rows of the record files including the six
descriptor rows per stay (what MANIFEST.tsv counts), i.e. every input item read.
"""

from __future__ import annotations

import argparse
import base64
import os
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import _results
from vitalcast.clinical.tables import Observation
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.ingest.files import ingest_physionet2012
from vitalcast.security import audit_keys
from vitalcast.security.audit_keys import AuditKeyring
from vitalcast.security.crypto import FieldCipher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/physionet2012"))
    parser.add_argument("--sets", nargs="+", default=["a", "b"])
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--save", action="store_true", help="write bench/results/ingest_physionet.json"
    )
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    per_set: dict[str, dict[str, float]] = {}

    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    name = f"vc_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.admin_url).set(database=name).render_as_string(hide_password=False)
    engine = create_db_engine(url)
    # A throwaway audit key: what the benchmark stores is audited, and audit rows are keyed.
    audit_keys.install(AuditKeyring.from_string(base64.b64encode(os.urandom(32)).decode()))
    cipher = FieldCipher.from_strings(
        "bench:" + base64.b64encode(os.urandom(32)).decode(),
        base64.b64encode(os.urandom(32)).decode(),
    )
    try:
        upgrade_database(engine)
        rows = 0
        cpu = {"python": 0.0, "postgres": 0.0}
        started = time.perf_counter()
        for set_name in args.sets:
            t0 = time.perf_counter()
            py0 = time.process_time()
            with Session(engine) as session:
                backend = session.scalar(text("SELECT pg_backend_pid()"))
                pg0 = _cpu_seconds(backend)
                report = ingest_physionet2012(
                    session,
                    args.data / f"set-{set_name}.tar.gz",
                    outcomes=args.data / f"Outcomes-{set_name}.txt",
                    cipher=cipher,
                )
                session.commit()
                pg_cpu = _cpu_seconds(backend) - pg0
            py_cpu = time.process_time() - py0
            cpu["python"] += py_cpu
            cpu["postgres"] += pg_cpu
            set_rows = _manifest_rows(args.data / "MANIFEST.tsv", f"set-{set_name}")
            rows += set_rows
            elapsed = time.perf_counter() - t0
            obs = report.kinds["observation"]
            per_set[set_name] = {
                "rows": set_rows,
                "seconds": round(elapsed, 1),
                "rows_per_s": round(set_rows / elapsed),
                "cpu_python_s": round(py_cpu, 1),
                "cpu_postgres_s": round(pg_cpu, 1),
                "stored": obs.stored,
                "quarantined": obs.quarantined,
            }
            print(
                f"set-{set_name}: {set_rows} rows in {elapsed:.1f} s"
                f" ({set_rows / elapsed:,.0f} rows/s); observations stored {obs.stored},"
                f" duplicates {obs.duplicates}, quarantined {obs.quarantined};"
                f" balanced={report.balanced()}; CPU s: python {py_cpu:.1f},"
                f" postgres backend {pg_cpu:.1f}"
            )
        total = time.perf_counter() - started
        with Session(engine) as session:
            stored = session.scalar(select(func.count()).select_from(Observation))
        print(
            f"total: {rows} rows in {total:.1f} s = {rows / total:,.0f} rows/s"
            f" ({stored} observations in the store)"
        )
        busy = cpu["python"] + cpu["postgres"]
        print(
            f"CPU: python {cpu['python']:.1f} s + postgres backend {cpu['postgres']:.1f} s"
            f" = {busy:.1f} s -> {rows / busy:,.0f} rows per CPU-second (load average"
            f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores during the run)"
        )
        if args.save:
            figures = {
                "rows": rows,
                "seconds": round(total, 1),
                "rows_per_s": round(rows / total),
                "rows_per_cpu_s": round(rows / busy),
                "observations_stored": stored,
                "sets": per_set,
            }
            _results.save("ingest_physionet", figures, load_at_start=load_at_start)
    finally:
        engine.dispose()
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _cpu_seconds(pid: int | None) -> float:
    """user+system CPU seconds of a local process (the PostgreSQL backend), else 0."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _manifest_rows(manifest: Path, set_name: str) -> int:
    """Measurement rows (incl. descriptors) of one set, from MANIFEST.tsv."""
    total = 0
    with manifest.open() as fh:
        header = fh.readline().rstrip("\n").split("\t")
        col = header.index("observation_rows")
        for line in fh:
            cells = line.rstrip("\n").split("\t")
            if cells[0] == set_name:
                total += int(cells[col])
    return total


if __name__ == "__main__":
    main()
