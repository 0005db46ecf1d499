"""Benchmark: MQTT device messages through `vitalcast stream mqtt` into PostgreSQL.

Publishes N compact heart-rate messages (QoS 1) for D bound devices from a separate
publisher process while the real consumer command runs; SIGKILLs the consumer once
about half are committed and starts it again; then checks that exactly N observations
are stored (zero lost, zero doubled) and prints throughput figures.

    VITALCAST_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/ingest_mqtt.py --messages 50000

Without --mqtt-url a throwaway mosquitto is started (unlimited offline queue). A real
database is created for the run and dropped afterwards. Bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import create_engine, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.services import mqtt_broker

import _results
from vitalcast.clinical.records import PatientRecord, RecordBatch
from vitalcast.clinical.tables import Observation, Patient
from vitalcast.config import load_settings
from vitalcast.db.session import (
    create_db_engine,
    make_session_factory,
    session_scope,
    upgrade_database,
)
from vitalcast.ingest.devices import bind_device
from vitalcast.ingest.service import store_batch
from vitalcast.security import audit_keys
from vitalcast.security.crypto import cipher_from_settings

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def publish(url: str, prefix: str, devices: int, messages: int) -> None:
    """Publisher process: QoS 1, waits for every PUBACK from the broker."""
    from tests.mqtt_helpers import Publisher

    pub = Publisher(url, f"bench-pub-{uuid.uuid4().hex[:6]}")
    for i in range(messages):
        device = i % devices
        payload = {
            "code": "8867-4",
            "value": 60 + i % 90,
            "unit": "/min",
            "time": (T0 + timedelta(seconds=i // devices)).isoformat(),
        }
        pub.publish(f"{prefix}/dev-{device}/observations", json.dumps(payload).encode())
        if i % 5000 == 4999:
            pub.flush()
    pub.close()


def _with_protocol(url: str) -> str:
    """``url`` with ``protocol=3.1.1`` (replacing any protocol it names)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "protocol"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("protocol", "3.1.1")])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50000)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--mqtt-url", default=None)
    ap.add_argument(
        "--protocol",
        choices=["5", "3.1.1"],
        default="5",
        help="MQTT version the consumer speaks (3.1.1 needs the broker's"
        " max_inflight_messages raised, as the private broker and deploy/mosquitto do)",
    )
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--save", action="store_true", help="write bench/results/ingest_mqtt.json")
    args = ap.parse_args()
    args.load_at_start = os.getloadavg()[0]
    admin_url = os.environ.get(
        "VITALCAST_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    name = f"vc_bench_mqtt_{uuid.uuid4().hex[:6]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = admin.url.set(database=name).render_as_string(hide_password=False)
    data_dir = Path(f"/tmp/{name}")
    try:
        run(args, db_url, data_dir)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(args: argparse.Namespace, db_url: str, data_dir: Path) -> None:
    engine = create_db_engine(db_url)
    upgrade_database(engine)
    settings = load_settings(env="test", data_dir=data_dir, database_url=db_url)
    audit_keys.install_from_settings(settings)  # what it stores is audited
    cipher = cipher_from_settings(settings)
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        patients = [PatientRecord(ref=f"bench-{d}") for d in range(args.devices)]
        store_batch(s, RecordBatch(patients=patients), source="bench", location="b", cipher=cipher)
    with session_scope(factory) as s:
        for d in range(args.devices):
            pid = s.scalars(
                select(Patient.public_id).where(Patient.source_ref == f"bench-{d}")
            ).one()
            bind_device(s, device_id=f"dev-{d}", patient_public_id=pid, now=T0 - timedelta(days=1))

    def count() -> int:
        with factory() as s:
            return int(s.scalar(select(func.count()).select_from(Observation)) or 0)

    with mqtt_broker() if args.mqtt_url is None else nullcontext(args.mqtt_url) as url:
        prefix = f"bench-{uuid.uuid4().hex[:6]}/devices"
        env = {
            **os.environ,
            "VITALCAST_ENV": "test",
            "VITALCAST_DATA_DIR": str(data_dir),
            "VITALCAST_DATABASE_URL": db_url,
            "VITALCAST_MQTT_URL": url if args.protocol == "5" else _with_protocol(url),
            "VITALCAST_MQTT_CLIENT_ID": f"bench-{uuid.uuid4().hex[:6]}",
            "VITALCAST_LOG_LEVEL": "WARNING",
        }
        exe = str(Path(sys.executable).with_name("vitalcast"))
        cmd = [exe, "stream", "mqtt", "--topic-prefix", prefix]

        def start() -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert proc.stderr is not None
            line = proc.stderr.readline().decode()
            if not line.startswith("consuming"):
                raise SystemExit(f"consumer did not start: {line}")
            return proc

        # 1. Create the persistent session (subscribe once), then stop the consumer.
        first_run = start()
        first_run.send_signal(signal.SIGTERM)
        first_run.communicate(timeout=30)
        # 2. Publish everything while the consumer is offline: the broker queues it for
        #    the persistent session. This isolates the consumer's rate from the
        #    publisher's (one Python publisher is the slower side on this machine).
        t_pub = time.monotonic()
        publisher = multiprocessing.Process(
            target=publish, args=(url, prefix, args.devices, args.messages)
        )
        publisher.start()
        publisher.join(args.timeout)
        pub_s = time.monotonic() - t_pub
        # 3. Drain through the consumer, SIGKILL it half-way, start it again.
        consumer = start()
        t_start = time.monotonic()
        samples: list[tuple[float, int]] = []
        killed_at: tuple[float, int] | None = None
        gap = 0.0
        deadline = t_start + args.timeout
        while time.monotonic() < deadline:
            n = count()
            now = time.monotonic()
            samples.append((now, n))
            if killed_at is None and n >= args.messages // 2:
                consumer.send_signal(signal.SIGKILL)
                consumer.communicate(timeout=10)
                killed_at = (now, n)
                consumer = start()
                gap = time.monotonic() - now
            if n >= args.messages:
                break
            time.sleep(0.05)
        t_end = time.monotonic()
        consumer.send_signal(signal.SIGTERM)
        consumer.communicate(timeout=30)
        final = count()
        assert killed_at is not None
        first = next(t for t, c in samples if c > 0)
        print(
            f"messages published:   {args.messages} ({args.devices} devices, QoS 1)"
            f" in {pub_s:.1f} s ({args.messages / pub_s:,.0f} msg/s, one publisher)"
        )
        print(f"consumer protocol:    MQTT {args.protocol}")
        print(f"observations stored:  {final} (lost {args.messages - final})")
        print(f"consumer killed at:   {killed_at[1]} stored (SIGKILL), restart gap {gap:.2f} s")
        busy = t_end - first - gap
        print(
            f"consumer rate:        {final / busy:,.0f} msg/s (first to last commit,"
            " restart gap excluded)"
        )
        print(f"consumer rate:        {final / (t_end - first):,.0f} msg/s (restart gap included)")
        if args.save:
            figures = {
                "messages": args.messages,
                "protocol": args.protocol,
                "devices": args.devices,
                "published_per_s": round(args.messages / pub_s),
                "stored": final,
                "lost": args.messages - final,
                "killed_at": killed_at[1],
                "restart_gap_s": round(gap, 2),
                "consumer_msg_per_s": round(final / busy),
                "consumer_msg_per_s_with_gap": round(final / (t_end - first)),
            }
            _results.save("ingest_mqtt", figures, load_at_start=args.load_at_start)
        if final != args.messages:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
