"""Benchmark: MQTT device messages through `vitalcast stream mqtt` into PostgreSQL.

Publishes N compact heart-rate messages (QoS 1) for D bound devices from a separate
publisher process while the real consumer command runs; SIGKILLs the consumer once
about half are committed and starts it again; then checks that exactly N observations
are stored (zero lost, zero doubled) and prints throughput figures.

With ``--champion`` the devices are bound to stays in progress and a small model
(trained on synthetic history, not timed) is the champion, so the consumer also rescores
the stays it stores readings for (each at most once per ``--rescore-interval`` seconds,
VITALCAST_STREAM_RESCORE_INTERVAL_S). A last phase then starts a fresh consumer, publishes
one live reading per device and reports how long after its publication each stay's
prediction was stored.

    VITALCAST_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/ingest_mqtt.py --messages 50000
    .venv/bin/python bench/ingest_mqtt.py --messages 50000 --protocol 3.1.1 --champion

Without --mqtt-url a throwaway mosquitto is started (unlimited offline queue). A real
database is created for the run and dropped afterwards. Bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.services import mqtt_broker

import _results
from _champion import train_small_champion
from vitalcast.clinical.records import PatientRecord, RecordBatch
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.config import load_settings
from vitalcast.db.session import (
    create_db_engine,
    make_session_factory,
    session_scope,
    upgrade_database,
)
from vitalcast.ingest.devices import bind_device
from vitalcast.ingest.service import store_batch
from vitalcast.modeling.tables import Prediction
from vitalcast.security import audit_keys
from vitalcast.security.crypto import FieldCipher, cipher_from_settings

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def publish(url: str, prefix: str, devices: int, messages: int, t0: datetime = T0) -> None:
    """Publisher process: QoS 1, waits for every PUBACK from the broker."""
    from tests.mqtt_helpers import Publisher

    pub = Publisher(url, f"bench-pub-{uuid.uuid4().hex[:6]}")
    for i in range(messages):
        device = i % devices
        payload = {
            "code": "8867-4",
            "value": 60 + i % 90,
            "unit": "/min",
            "time": (t0 + timedelta(seconds=i // devices)).isoformat(),
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
    ap.add_argument(
        "--champion",
        action="store_true",
        help="bind the devices to stays in progress and register a small champion, so that"
        " the consumer rescores them; then time publication to stored prediction",
    )
    ap.add_argument(
        "--rescore-interval",
        type=float,
        default=60,
        help="VITALCAST_STREAM_RESCORE_INTERVAL_S of the consumer (with --champion)",
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
    if args.champion:
        stays = _ward_with_champion(factory, cipher, args.devices, data_dir)
        # Readings of the last half hour or so: within the stays, none in the future.
        t0 = datetime.now(UTC) - timedelta(seconds=args.messages // args.devices + 600)
    else:
        stays = _bare_patients(factory, cipher, args.devices)
        t0 = T0
    with session_scope(factory) as s:
        for d, (pid, eid, since) in enumerate(stays):
            bind_device(
                s, device_id=f"dev-{d}", patient_public_id=pid, encounter_public_id=eid, now=since
            )

    def count() -> int:
        """Observations stored by the consumer (the ward's own are not counted)."""
        with factory() as s:
            return int(s.scalar(select(func.count()).select_from(Observation)) or 0) - before

    before = 0
    before = count()

    with mqtt_broker() if args.mqtt_url is None else nullcontext(args.mqtt_url) as url:
        prefix = f"bench-{uuid.uuid4().hex[:6]}/devices"
        env = {
            **os.environ,
            "VITALCAST_ENV": "test",
            "VITALCAST_DATA_DIR": str(data_dir),
            "VITALCAST_DATABASE_URL": db_url,
            "VITALCAST_MQTT_URL": url if args.protocol == "5" else _with_protocol(url),
            "VITALCAST_MQTT_CLIENT_ID": f"bench-{uuid.uuid4().hex[:6]}",
            # The session outlives the offline publishing (bounded by --timeout) and the
            # restarts, then leaves a shared broker instead of staying a day.
            "VITALCAST_MQTT_SESSION_EXPIRY_S": str(int(args.timeout) + 600),
            "VITALCAST_LOG_LEVEL": "WARNING",
            "VITALCAST_STREAM_RESCORE_INTERVAL_S": str(args.rescore_interval),
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
            target=publish, args=(url, prefix, args.devices, args.messages, t0)
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
                # Ends at "consuming", which follows the SUBACK: resuming the session, the
                # broker first resends what was in flight, so some drain is inside the gap.
                gap = time.monotonic() - now
            if n >= args.messages:
                break
            time.sleep(0.05)
        t_end = time.monotonic()
        consumer.send_signal(signal.SIGTERM)
        consumer.communicate(timeout=30)
        final = count()
        scored = _champion_predictions(factory)
        latencies = (
            _publish_to_prediction(factory, url, prefix, args.devices, start)
            if args.champion
            else []
        )
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
        if args.champion:
            print(
                f"stays rescored:       {scored} predictions stored while draining"
                f" (interval {args.rescore_interval:g} s)"
            )
            print(
                f"publish to stored prediction, one live reading per stay ({len(latencies)}):"
                f" median {statistics.median(latencies):.0f} ms,"
                f" p95 {_quantile(latencies, 0.95):.0f} ms, max {max(latencies):.0f} ms"
            )
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
            if args.champion:
                figures |= {
                    "rescore_interval_s": args.rescore_interval,
                    "predictions_while_draining": scored,
                    "publish_to_prediction_ms_median": round(statistics.median(latencies)),
                    "publish_to_prediction_ms_p95": round(_quantile(latencies, 0.95)),
                    "publish_to_prediction_ms_max": round(max(latencies)),
                }
            _results.save("ingest_mqtt", figures, load_at_start=args.load_at_start)
        if final != args.messages:
            raise SystemExit(1)


def _bare_patients(
    factory: sessionmaker[Session], cipher: FieldCipher, devices: int
) -> list[tuple[str, str | None, datetime]]:
    """One patient without a stay per device: readings are stored, nothing is scored."""
    with session_scope(factory) as s:
        patients = [PatientRecord(ref=f"bench-{d}") for d in range(devices)]
        store_batch(s, RecordBatch(patients=patients), source="bench", location="b", cipher=cipher)
    with factory() as s:
        return [
            (
                s.scalars(
                    select(Patient.public_id).where(Patient.source_ref == f"bench-{d}")
                ).one(),
                None,
                T0 - timedelta(days=1),
            )
            for d in range(devices)
        ]


def _ward_with_champion(
    factory: sessionmaker[Session], cipher: FieldCipher, devices: int, data_dir: Path
) -> list[tuple[str, str | None, datetime]]:
    """A stay in progress per device and a small champion trained on synthetic history."""
    from vitalcast.synth import generate_cohort, store_cohort

    now = datetime.now(UTC)
    with factory() as s:
        batch = generate_cohort(n_current=devices, n_historic=400, seed=11, now=now)
        store_cohort(session=s, batch=batch, cipher=cipher, now=now)
    train_small_champion(factory, data_dir / "registry")
    with factory() as s:
        rows = s.execute(
            select(Patient.public_id, Encounter.public_id, Encounter.admitted_at)
            .join(Encounter, Encounter.patient_id == Patient.id)
            .where(Encounter.discharged_at.is_(None))
            .order_by(Encounter.id)
        ).all()
    assert len(rows) == devices
    return [(pid, eid, admitted) for pid, eid, admitted in rows]


def _champion_predictions(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return int(s.scalar(select(func.count()).select_from(Prediction)) or 0)


def _publish_to_prediction(
    factory: sessionmaker[Session],
    url: str,
    prefix: str,
    devices: int,
    start: Callable[[], subprocess.Popen[bytes]],
) -> list[float]:
    """Milliseconds from publishing one live reading per device (100 ms apart, to a fresh
    consumer: no stay scored within its interval) to its stay's prediction being stored."""
    from tests.mqtt_helpers import Publisher

    consumer = start()
    time.sleep(5)  # the consumer's champion loads after its "consuming" line
    pub = Publisher(url, f"bench-live-{uuid.uuid4().hex[:6]}")
    sent: dict[str, datetime] = {}
    with factory() as s:
        bound = dict(
            s.execute(
                select(Encounter.public_id, Encounter.id).where(Encounter.discharged_at.is_(None))
            ).all()
        )
    encounters = list(bound.values())
    for d in range(devices):
        sent_at = datetime.now(UTC)
        reading = {"code": "8867-4", "value": 70, "unit": "/min", "time": sent_at.isoformat()}
        pub.publish(f"{prefix}/dev-{d}/observations", json.dumps(reading).encode())
        sent[f"dev-{d}"] = sent_at
        time.sleep(0.1)
    pub.close()
    deadline = time.monotonic() + 60
    latencies: list[float] = []
    while time.monotonic() < deadline:
        with factory() as s:
            rows = s.execute(
                select(Observation.device_id, func.min(Prediction.created_at))
                .join(Prediction, Prediction.encounter_id == Observation.encounter_id)
                .where(
                    Observation.encounter_id.in_(encounters),
                    Observation.received_at >= min(sent.values()),
                    Prediction.created_at >= Observation.received_at,
                )
                .group_by(Observation.device_id)
            ).all()
        if len(rows) == devices:
            latencies = [(at - sent[dev]).total_seconds() * 1000 for dev, at in rows]
            break
        time.sleep(0.2)
    consumer.send_signal(signal.SIGTERM)
    consumer.communicate(timeout=30)
    if not latencies:
        raise SystemExit("not every live reading's stay was rescored within 60 s")
    return latencies


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


if __name__ == "__main__":
    main()
