"""Benchmark: generate the demo cohort and store it into a throwaway SQLite database.

Prints generation time, store time (wall and CPU of this process) and observations per
second; ``--profile`` adds the top of a cProfile of the store. Not a test: it asserts
nothing, it measures. Usage:

    .venv/bin/python bench/synth_store.py [--current 600] [--historic 1500] [--profile]
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import os
import pstats
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session

from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.security import audit_keys
from vitalcast.security.audit_keys import AuditKeyring
from vitalcast.security.crypto import FieldCipher
from vitalcast.synth import generate_cohort, store_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--current", type=int, default=600)
    parser.add_argument("--historic", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=2012)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    now = datetime.now(UTC).replace(second=0, microsecond=0)

    wall, cpu = time.perf_counter(), time.process_time()
    batch = generate_cohort(
        n_current=args.current, n_historic=args.historic, seed=args.seed, now=now
    )
    gen_wall, gen_cpu = time.perf_counter() - wall, time.process_time() - cpu
    n_obs = len(batch.observations)
    print(
        f"generate: {args.current} current + {args.historic} historic stays,"
        f" {n_obs} observations: wall {gen_wall:.1f} s, cpu {gen_cpu:.1f} s"
    )

    key = base64.b64encode(os.urandom(32)).decode()
    # A throwaway audit key: what the benchmark stores is audited, and audit rows are keyed.
    audit_keys.install(AuditKeyring.from_string(base64.b64encode(os.urandom(32)).decode()))
    cipher = FieldCipher.from_strings(f"bench:{key}", key)
    with tempfile.TemporaryDirectory(prefix="vitalcast-bench-") as tmp:
        engine = create_db_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        upgrade_database(engine)
        profiler = cProfile.Profile() if args.profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        with Session(engine, expire_on_commit=False) as session:
            report = store_cohort(session=session, batch=batch, cipher=cipher, now=now)
        if profiler:
            profiler.disable()
        store_wall, store_cpu = time.perf_counter() - wall, time.process_time() - cpu
        size_mb = (Path(tmp) / "bench.db").stat().st_size / 1e6
        engine.dispose()
    print(
        f"store (SQLite): stored {report.stored}, quarantined {report.quarantined}:"
        f" wall {store_wall:.1f} s, cpu {store_cpu:.1f} s,"
        f" {n_obs / store_wall:.0f} observations/s wall, database {size_mb:.0f} MB"
    )
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)


if __name__ == "__main__":
    main()
