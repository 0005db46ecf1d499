"""Benchmark: bulk ingest of PhysioNet 2012 sets A+B into a fresh PostgreSQL database.

Usage:
    .venv/bin/python bench/ingest_physionet.py \\
        --admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        --data /work/shared/data/physionet2012 [--sets a b] [--keep]

Creates a throwaway database, migrates it, ingests each set with its Outcomes file in
one transaction per set (as `vitalcast ingest physionet2012` does), and prints rows per
second. "Rows" are the measurement rows of the record files including the six
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

from vitalcast.clinical.tables import Observation
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.ingest.files import ingest_physionet2012
from vitalcast.security.crypto import FieldCipher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/physionet2012"))
    parser.add_argument("--sets", nargs="+", default=["a", "b"])
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    name = f"vc_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.admin_url).set(database=name).render_as_string(hide_password=False)
    engine = create_db_engine(url)
    cipher = FieldCipher.from_strings(
        "bench:" + base64.b64encode(os.urandom(32)).decode(),
        base64.b64encode(os.urandom(32)).decode(),
    )
    try:
        upgrade_database(engine)
        rows = 0
        started = time.perf_counter()
        for set_name in args.sets:
            t0 = time.perf_counter()
            with Session(engine) as session:
                report = ingest_physionet2012(
                    session,
                    args.data / f"set-{set_name}.tar.gz",
                    outcomes=args.data / f"Outcomes-{set_name}.txt",
                    cipher=cipher,
                )
                session.commit()
            set_rows = _manifest_rows(args.data / "MANIFEST.tsv", f"set-{set_name}")
            rows += set_rows
            elapsed = time.perf_counter() - t0
            obs = report.kinds["observation"]
            print(
                f"set-{set_name}: {set_rows} rows in {elapsed:.1f} s"
                f" ({set_rows / elapsed:,.0f} rows/s); observations stored {obs.stored},"
                f" duplicates {obs.duplicates}, quarantined {obs.quarantined};"
                f" balanced={report.balanced()}"
            )
        total = time.perf_counter() - started
        with Session(engine) as session:
            stored = session.scalar(select(func.count()).select_from(Observation))
        print(
            f"total: {rows} rows in {total:.1f} s = {rows / total:,.0f} rows/s"
            f" ({stored} observations in the store)"
        )
    finally:
        engine.dispose()
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
