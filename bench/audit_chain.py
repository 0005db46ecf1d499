"""What verifying and anchoring the audit chain costs as the trail grows.

Anchors are made every 15 minutes (the Kubernetes CronJob, `monitor run`), so their
cost must not grow with the whole trail. This builds a keyed chain of N events in a
scratch PostgreSQL database (rows made as ``audit.record`` makes them, inserted in bulk:
appending them one by one through ``record`` would take most of the run), then times:

- a full walk (``verify_chain``): every row's link and HMAC;
- an incremental anchoring after 1000 more events (``anchor_now``: check the newest
  anchor's signature, head and count, walk only the events after it);
- checking K anchors against the chain in one pass, and, for comparison, the count
  query per anchor that anchoring used before.

    .venv/bin/python bench/audit_chain.py                    # 200,000 events
    .venv/bin/python bench/audit_chain.py --events 1000000 --anchors 1000 --save
"""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

import _results
from _scratch import scratch_database
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.security import audit, audit_keys
from vitalcast.security.audit_anchor import Anchor, anchor_now, check_anchors
from vitalcast.security.tables import AuditEvent

KEYRING = audit_keys.AuditKeyring.from_string("bench:" + base64.b64encode(b"b" * 32).decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events in the chain")
    parser.add_argument("--anchors", type=int, default=1000, help="anchors to check at once")
    parser.add_argument("--save", action="store_true", help="write bench/results/*.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    audit_keys.install(KEYRING)
    with scratch_database("vc_bench_audit") as url:
        figures = _run(url, args.events, args.anchors)
    print(
        f"{figures['events']:,} events (load average {load_at_start:.1f} at start):\n"
        f"  full walk: {figures['full_walk_s']:.1f} s ({figures['full_walk_us_per_event']:.0f}"
        f" µs an event)\n"
        f"  incremental anchoring after {figures['new_events']} more events:"
        f" {figures['incremental_anchor_s']:.2f} s\n"
        f"  {figures['anchors']} anchors checked in one pass: {figures['check_anchors_s']:.2f} s;"
        f" one count per anchor (before): {figures['count_per_anchor_s']:.1f} s"
    )
    if args.save:
        _results.save("audit_chain", figures, load_at_start=load_at_start)


def _run(url: str, events: int, n_anchors: int) -> dict[str, Any]:
    engine = create_db_engine(url)
    upgrade_database(engine)
    with Session(engine) as session:
        heads = _build_chain(session, events, every=max(1, events // n_anchors))
        started = time.perf_counter()
        full = audit.verify_chain(session, keyring=KEYRING)
        full_s = time.perf_counter() - started
        if not (full.ok and full.checked == events):
            raise SystemExit(f"the built chain did not verify: {full}")
        anchors = [_signed(*head) for head in heads]
        started = time.perf_counter()
        honoured = check_anchors(session, anchors, KEYRING)
        check_s = time.perf_counter() - started
        if not honoured.ok:
            raise SystemExit(f"anchors not honoured: {honoured.reason}")
        started = time.perf_counter()
        for head_id, *_ in heads:
            session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.id <= head_id)
            )
        count_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "anchors.jsonl"
            first = anchor_now(session, KEYRING, path)  # a full walk: no anchor yet
            if first.anchor is None:
                raise SystemExit(f"no first anchor: {first.failure}")
            session.commit()
            new = 1000
            for _ in range(new):
                audit.record(session, audit.Event("bench.read", "R", actor="user:bench"))
            session.commit()
            started = time.perf_counter()
            outcome = anchor_now(session, KEYRING, path)
            incremental_s = time.perf_counter() - started
            if outcome.check is None or outcome.check.walked != new + 1:
                raise SystemExit(f"anchoring did not resume at the first anchor: {outcome}")
            session.commit()
    engine.dispose()
    return {
        "events": events,
        "full_walk_s": round(full_s, 2),
        "full_walk_us_per_event": round(1e6 * full_s / events, 1),
        "new_events": new,
        "incremental_anchor_s": round(incremental_s, 3),
        "anchors": len(anchors),
        "check_anchors_s": round(check_s, 3),
        "count_per_anchor_s": round(count_s, 2),
    }


def _build_chain(
    session: Session, events: int, *, every: int, batch: int = 5000
) -> list[tuple[int, str, int]]:
    """``events`` keyed rows as ``audit.record`` writes them; returns (id, hash, rows)
    every ``every`` rows, the heads to anchor."""
    prev, at = audit.GENESIS, datetime.now(UTC) - timedelta(days=365)
    heads: list[tuple[int, str, int]] = []
    rows: list[dict[str, Any]] = []
    for n in range(1, events + 1):
        ev = audit.Event(
            "patient.viewed", "R", actor=f"user:u{n % 40}", patient_id=f"p{n % 3000:05d}"
        )
        at += timedelta(seconds=1)
        digest = KEYRING.mac("bench", audit._keyed_message(prev, at, ev, "bench"))
        rows.append(
            {
                "id": n,
                "occurred_at": at,
                "event": ev.event,
                "action": ev.action,
                "outcome": ev.outcome,
                "actor": ev.actor,
                "patient_id": ev.patient_id,
                "details": None,
                "prev_hash": prev,
                "chain_version": audit.FORMAT_KEYED,
                "key_id": "bench",
                "hash": digest,
            }
        )
        prev = digest
        if n % every == 0:
            heads.append((n, digest, n))
        if len(rows) == batch:
            session.execute(insert(AuditEvent), rows)
            rows = []
    if rows:
        session.execute(insert(AuditEvent), rows)
    session.execute(text("SELECT setval('audit_events_id_seq', :n)"), {"n": events})
    session.commit()
    return heads


def _signed(head_id: int, head_hash: str, rows: int) -> Anchor:
    unsigned = Anchor(head_id, head_hash, rows, 0, "2026-01-01T00:00:00+00:00", "bench")
    return Anchor(**{**unsigned.__dict__, "mac": KEYRING.mac("bench", unsigned._message())})


if __name__ == "__main__":
    main()
