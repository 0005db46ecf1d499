"""Device streams over MQTT: QoS 1, persistent session, commit before acknowledging.

The consumer subscribes to ``vitalcast/devices/+/observations`` with QoS 1 under a fixed
client id and a persistent session (MQTT 3.1.1 ``clean_session=0``; MQTT 5
``clean_start=0``), and acknowledges manually: a message's PUBACK is sent only after the
database transaction holding it has committed. If the consumer or the broker dies in
between, the broker redelivers, and the dedup keys make the redelivery a no-op. So nothing
is lost and nothing is stored twice.

The session outlives a disconnection for ``session_expiry_s``
(``VITALCAST_MQTT_SESSION_EXPIRY_S``, a day by default), sent as MQTT 5's Session Expiry
Interval: the broker queues readings for a consumer that is restarting, and forgets a
session nobody resumes (before, it asked for a session that never expires, and every
retired client id kept collecting readings on the broker). MQTT 3.1.1 has no such
property: the broker keeps a ``clean_session=0`` session until its own policy drops it
(Mosquitto: ``persistent_client_expiration``, never by default; deploy/mosquitto sets a
day).

A batch the database cannot take because it cannot be reached (a connection error) is
retried after 0.5, 1, 2, 5 and 10 s, unacknowledged; the consumer then stops with the
error, and the broker redelivers the batch to the next start. When the batch fails for
what it holds (the database refuses a value), retrying or redelivering it would fail the
same way for ever, and every later reading would wait behind it: at once, with no
retry, its messages are stored one per transaction, each one the database refuses alone
is quarantined (``store_failed``, naming the error's class only) and the whole batch is
acknowledged. Text the database
cannot hold (NUL, unpaired surrogates) never gets that far: the store quarantines its
item as ``invalid_text`` (:func:`~vitalcast.ingest.service.store_batch`).

Each committed batch is counted in the ingest metrics (``vitalcast_ingest_records``,
``vitalcast_ingest_quarantined``, source ``mqtt``), as HTTP ingestion counts its requests.

Messages are committed in batches (``mqtt_batch_size`` or ``mqtt_batch_wait_ms``) for
throughput; the commit-before-ack rule holds per batch. MQTT 5 is used by default because
its Receive Maximum (65,535 unless the client lowers it) lets the broker keep a whole
batch in flight; MQTT 3.1.1 brokers cap in-flight messages (Mosquitto: 20 by default).
Where the broker's cap can be raised (``max_inflight_messages``, as ``deploy/mosquitto``
does), MQTT 3.1.1 (``?protocol=3.1.1``) is about twice as fast: paho builds and parses an
MQTT 5 property set for every message, most of the consumer's network-thread time
(docs/benchmarks.md).

With a :class:`~vitalcast.serving.stream_scoring.StreamScorer` (``vitalcast stream mqtt``
always passes one), the stays a batch touched are rescored after its commit and PUBACKs,
in a transaction of their own, at most once per ``VITALCAST_STREAM_RESCORE_INTERVAL_S``
each; the loop flushes stays that became due even when no message arrives. A scoring
failure is retried and never costs a stored or acknowledged reading.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.clinical.records import RecordBatch, Rejected
from vitalcast.config import MQTT_SESSION_EXPIRY_S
from vitalcast.db.session import session_scope
from vitalcast.errors import ConfigError, error_kind
from vitalcast.ingest.report import IngestReport
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.sources.device_payload import (
    CompactObservation,
    attach_devices,
    compact_record,
    fhir_observation_batch,
)
from vitalcast.json_input import JsonInputError, parse_json
from vitalcast.monitoring.metrics import observe_ingest
from vitalcast.security import audit
from vitalcast.security.crypto import FieldCipher
from vitalcast.text_input import unstorable

if TYPE_CHECKING:
    from vitalcast.serving.stream_scoring import StreamScorer

logger = logging.getLogger(__name__)

SOURCE = "mqtt"
DEFAULT_PREFIX = "vitalcast/devices"
_RETRY_S = (0.5, 1, 2, 5, 10)
# How long ``connect_check`` waits for the broker's SUBACK (a CONNACK and a SUBACK: a
# round trip or two, unless the broker refuses the connection or is overloaded).
SUBSCRIBE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class MqttConfig:
    """Where and how to consume."""

    host: str
    port: int
    client_id: str
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5
    username: str | None = None
    password: str | None = None
    topic_prefix: str = DEFAULT_PREFIX
    batch_size: int = 500
    batch_wait_s: float = 0.2
    tls: bool = False
    cafile: str | None = None  # PEM CA bundle to verify the broker (default: the system's)
    session_expiry_s: int = MQTT_SESSION_EXPIRY_S  # MQTT 5 only; see the module docstring

    @property
    def topic(self) -> str:
        return f"{self.topic_prefix}/+/observations"


def parse_mqtt_url(url: str) -> dict[str, Any]:
    """``mqtt[s]://user:pass@host:port?protocol=3.1.1&cafile=/path/ca.pem`` -> connection
    keywords.

    ``mqtts://`` is MQTT over TLS (port 8883 by default): the broker's certificate is
    verified against the system's CAs, or ``cafile`` (a hospital's private CA), and its
    host name is checked. Readings carry patient data, so a broker reached over a network
    should be ``mqtts://``; ``mqtt://`` is for a broker on the same host or pod.

    Raises:
        ConfigError: not an ``mqtt://`` or ``mqtts://`` URL, or an unknown option.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(
            f"VITALCAST_MQTT_URL: expected mqtt://host:port or mqtts://host:port,"
            f" got {parts.scheme!r}"
        )
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"protocol", "cafile"})
    if unknown:
        raise ConfigError(f"VITALCAST_MQTT_URL: unknown option(s) {', '.join(unknown)}")
    proto = query.get("protocol", ["5"])[0]
    if proto not in ("5", "3.1.1"):
        raise ConfigError("VITALCAST_MQTT_URL: protocol must be 5 or 3.1.1")
    tls = parts.scheme == "mqtts"
    cafile = query.get("cafile", [None])[0]
    if cafile is not None and not tls:
        raise ConfigError("VITALCAST_MQTT_URL: cafile applies to mqtts:// only")
    return {
        "host": parts.hostname,
        "port": parts.port or (8883 if tls else 1883),
        "username": parts.username,
        "password": parts.password,
        "protocol": MQTTProtocolVersion.MQTTv5 if proto == "5" else MQTTProtocolVersion.MQTTv311,
        "tls": tls,
        "cafile": cafile,
    }


def use_tls(client: mqtt.Client, cafile: str | None) -> None:
    """Speak TLS to the broker, verifying its certificate chain and host name (the
    default context: TLS 1.2 or later, system CAs unless ``cafile`` names others)."""
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"VITALCAST_MQTT_URL: cannot read cafile {cafile} ({exc})") from None
    client.tls_set_context(context)


def connect_properties(session_expiry_s: int) -> Properties:
    """MQTT 5 CONNECT properties: the session outlives a disconnection by
    ``session_expiry_s`` (a restart resumes it), then the broker drops it and its queue."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_s
    return props


@dataclass
class StreamStats:
    """Running totals of one consumer process."""

    messages: int = 0
    batches: int = 0
    report: IngestReport = field(default_factory=lambda: IngestReport(SOURCE, "stream"))


def parse_message(topic: str, payload: bytes, prefix: str, seq: int) -> RecordBatch:
    """Readings of one MQTT message (device readings not yet attached to a patient)."""
    batch = RecordBatch()
    parts = topic.split("/")
    head = prefix.split("/")
    where = f"{topic}#{seq}"
    if len(parts) != len(head) + 2 or parts[: len(head)] != head or parts[-1] != "observations":
        batch.received += 1
        batch.rejected.append(Rejected(where, "bad_topic", "unexpected topic", None))
        return batch
    why = unstorable(topic)  # MQTT forbids NUL in topics; a broker may not check
    if why:
        batch.received += 1
        batch.rejected.append(Rejected(where, "bad_topic", f"topic {why}", None))
        return batch
    device_id = parts[-2]
    try:
        doc = parse_json(payload.decode("utf-8"))
    except (UnicodeDecodeError, JsonInputError) as exc:
        batch.received += 1
        reason = (
            "not UTF-8" if isinstance(exc, UnicodeDecodeError) else f"malformed JSON ({exc.msg})"
        )
        batch.rejected.append(
            Rejected(where, "malformed_payload", reason, payload[:2000].decode("utf-8", "replace"))
        )
        return batch
    items = doc if isinstance(doc, list) else [doc]
    for i, item in enumerate(items):
        at = f"{where}[{i}]" if isinstance(doc, list) else where
        try:
            if isinstance(item, dict) and item.get("resourceType") == "Observation":
                batch.extend(fhir_observation_batch(item, at, device_id))
                continue
            if isinstance(item, dict) and "resourceType" in item:
                raise ValueError(f"resourceType {item['resourceType']!r}: send an Observation")
            reading = CompactObservation.model_validate(item)
            if reading.patient is not None:
                # The topic names the device, and its binding the patient (a FHIR
                # Observation's subject is not taken here either): a reading naming a
                # patient went to that patient, bound or not, whoever the device was on.
                raise ValueError(
                    "patient: not taken on a device topic; the reading is the patient's"
                    f" that device {device_id!r} is bound to at its time"
                )
            rec = compact_record(reading, at, device_id)
        except (ValidationError, ValueError) as exc:
            batch.received += 1
            msg = (
                "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
                if isinstance(exc, ValidationError)
                else str(exc)
            )
            batch.rejected.append(
                Rejected(at, "invalid_payload", msg[:500], json.dumps(item, default=str)[:2000])
            )
            continue
        batch.received += 1
        batch.observations.append(rec)
    return batch


class SubscriptionRefused(OSError):
    """The broker answered the SUBSCRIBE with a failure (typically its ACL denies this
    client's user the topic): the consumer would receive nothing, so it does not start."""


class DeviceStreamConsumer:
    """Consumes device messages until ``stop`` is set."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        cipher: FieldCipher,
        config: MqttConfig,
        *,
        scorer: StreamScorer | None = None,
    ) -> None:
        self.factory = factory
        self.cipher = cipher
        self.config = config
        self.scorer = scorer  # rescores touched stays after each commit; None: store only
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.stats = StreamStats()
        self.subscribed = threading.Event()  # the broker granted the subscription
        self._suback = threading.Event()  # the broker answered it, granted or not
        self.refusal: str | None = None  # the reason the broker gave for refusing it
        self._seq = 0
        self._started = False
        self.client = self._client()

    def _client(self) -> mqtt.Client:
        cfg = self.config
        v5 = cfg.protocol == MQTTProtocolVersion.MQTTv5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=cfg.protocol,
            manual_ack=True,
            clean_session=None if v5 else False,
        )
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            use_tls(client, cfg.cafile)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = lambda _c, _u, msg: self.inbox.put(msg)
        client.reconnect_delay_set(1, 10)
        return client

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            logger.error("mqtt connect refused", extra={"reason": str(rc)})
            return
        client.subscribe(self.config.topic, qos=1)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        """A SUBACK's reason codes are per topic filter; MQTT 3.1.1's failure (0x80) and
        MQTT 5's refusals (0x80 and up, e.g. 0x87 Not authorized) both read as failures.
        Before, any SUBACK counted as subscribed, so a consumer whose ACL denied the topic
        ran, said "consuming" and received nothing."""
        refused = [str(code) for code in codes if code.is_failure]
        if refused:
            # Also on a resubscription after a reconnect (an ACL changed under a running
            # worker): the worker's /healthz then fails, and its restart stops with the
            # reason instead of running on, receiving nothing.
            self.refusal = ", ".join(refused)
            self.subscribed.clear()
            logger.error("mqtt subscription refused", extra={"reason": self.refusal})
        else:
            self.refusal = None
            self.subscribed.set()
        self._suback.set()

    def connect(self) -> None:
        """Connect with a persistent session and start the network thread."""
        cfg = self.config
        if cfg.protocol == MQTTProtocolVersion.MQTTv5:
            self.client.connect(
                cfg.host,
                cfg.port,
                keepalive=30,
                clean_start=False,
                properties=connect_properties(cfg.session_expiry_s),
            )
        else:
            self.client.connect(cfg.host, cfg.port, keepalive=30)
        self.client.loop_start()
        self._started = True

    def connect_check(self, timeout_s: float = SUBSCRIBE_TIMEOUT_S) -> None:
        """Connect and subscribe now: an unreachable broker fails before ``run``, and once
        this returns the broker routes readings to this session.

        A new session has no subscription until the broker has processed the SUBSCRIBE
        (sent from the network thread once CONNACK arrives), and MQTT keeps nothing for a
        session that is not subscribed. Returning at the connection, as this did, let a
        caller that starts publishing when ``vitalcast stream mqtt`` says "consuming" (the
        tests, the benchmark, a gateway brought up with it) lose its first readings when
        the network thread ran a few milliseconds late, as on a busy machine.

        Raises:
            SubscriptionRefused: the broker refused the subscription.
            OSError: the broker cannot be reached, or did not answer the subscription
                within ``timeout_s`` (a refused connection is logged).
        """
        self.connect()
        if not self._suback.wait(timeout_s):
            self.client.loop_stop()
            raise OSError(f"no subscription confirmed within {timeout_s:g} s")
        if not self.subscribed.is_set():
            self.client.loop_stop()
            self.client.disconnect()
            raise SubscriptionRefused(
                f"the broker refused the subscription to {self.config.topic}"
                f" ({self.refusal}); check its ACL for this client's user"
            )

    def run(self, stop: threading.Event, *, idle_exit_s: float | None = None) -> StreamStats:
        """Consume until ``stop`` is set (or nothing arrived for ``idle_exit_s``).

        Stays due for rescoring are scored between batches (``_collect`` returns at least
        every 0.2 s); the scorer's ``close`` scores those still waiting at a clean stop.
        """
        if not self._started:
            self.connect()
        last = time.monotonic()
        try:
            while not stop.is_set():
                msgs = self._collect()
                if msgs:
                    self._store_and_ack(msgs, stop)
                    last = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                    break
                if self.scorer is not None:
                    self.scorer.flush()
        finally:
            self.client.loop_stop()
            self.client.disconnect()
        return self.stats

    def _collect(self) -> list[mqtt.MQTTMessage]:
        try:
            msgs = [self.inbox.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.config.batch_wait_s
        while len(msgs) < self.config.batch_size:
            try:
                msgs.append(self.inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return msgs

    def process(self, msgs: list[mqtt.MQTTMessage]) -> IngestReport:
        """Store one batch in one transaction (committed when this returns)."""
        batch = RecordBatch()
        for msg in msgs:
            self._seq += 1
            batch.extend(
                parse_message(msg.topic, bytes(msg.payload), self.config.topic_prefix, self._seq)
            )
        with session_scope(self.factory) as session:
            attached = attach_devices(session, batch)
            where = f"mqtt {self.config.client_id} batch of {len(msgs)}"
            return store_batch(
                session,
                attached,
                source=SOURCE,
                location=where,
                cipher=self.cipher,
                agent=audit.Agent(f"mqtt:{self.config.client_id}"),
            )

    def _store_and_ack(self, msgs: list[mqtt.MQTTMessage], stop: threading.Event) -> None:
        try:
            # One attempt for a data error: the same rows fail the same way every time,
            # and the retries (18 s in all) held back every device's later readings.
            report = _retrying(lambda: self.process(msgs), stop, data_attempts=1)
        except Exception as exc:
            if _unavailable(exc) or stop.is_set():
                raise  # not acknowledged: the broker redelivers to the next start
            # The batch fails for what it holds, and would fail the same way at every
            # redelivery: before, the consumer exited, and at each restart the broker
            # redelivered the same batch, so no later reading was ever stored.
            report = self._one_by_one(msgs, stop, exc)
        for msg in msgs:  # PUBACK only after the commit above
            self.client.ack(msg.mid, msg.qos)
        self.stats.messages += len(msgs)
        self.stats.batches += 1
        self.stats.report.merge(report)
        observe_ingest(report)  # a few counter increments per batch, not per message
        if self.scorer is not None:  # scored by the loop, after the commit and the PUBACKs
            self.scorer.touched(report.touched_encounters)

    def _one_by_one(
        self, msgs: list[mqtt.MQTTMessage], stop: threading.Event, cause: Exception
    ) -> IngestReport:
        """Store a batch the database refused as a whole one message per transaction,
        quarantining (``store_failed``) each message it refuses alone, so that the others
        are stored and the whole batch can be acknowledged.

        A database that becomes unreachable meanwhile stops this as it stops a batch (the
        retries, then the error): nothing is acknowledged, the broker redelivers, and the
        messages already committed are duplicates then (their dedup keys).
        """
        logger.error(
            "device batch refused; storing its messages one by one",
            extra={"messages": len(msgs), "error": error_kind(cause)},
        )
        report = IngestReport(SOURCE, f"mqtt {self.config.client_id} batch of {len(msgs)}")
        for msg in msgs:
            try:
                part = _retrying(partial(self.process, [msg]), stop, data_attempts=1)
            except Exception as exc:
                if _unavailable(exc) or stop.is_set():
                    raise
                logger.error("device message quarantined", extra={"error": error_kind(exc)})
                part = _retrying(partial(self._quarantine, msg, exc), stop)
            report.merge(part)
        return report

    def _quarantine(self, msg: mqtt.MQTTMessage, exc: Exception) -> IngestReport:
        """Quarantine one message the database refused, with its payload (escaped by the
        store where it must be) and the error's class only (its text may quote data)."""
        self._seq += 1
        where = f"{msg.topic}#{self._seq}"
        reason = (
            f"the database refused this message ({error_kind(exc)});"
            " none of its readings was stored"
        )
        raw = bytes(msg.payload)[:2000].decode("utf-8", "replace")
        batch = RecordBatch(received=1, rejected=[Rejected(where, "store_failed", reason, raw)])
        with session_scope(self.factory) as session:
            return store_batch(
                session,
                batch,
                source=SOURCE,
                location=f"mqtt {self.config.client_id} message",
                cipher=self.cipher,
                agent=audit.Agent(f"mqtt:{self.config.client_id}"),
            )


def _unavailable(exc: BaseException) -> bool:
    """The database cannot be reached (down, restarting, a lost connection): a transient
    failure, retried and never acknowledged, unlike one caused by what a batch holds."""
    return isinstance(exc, OperationalError | InterfaceError)


def _retrying(
    store: Callable[[], IngestReport], stop: threading.Event, *, data_attempts: int | None = None
) -> IngestReport:
    """``store()``, retried after each of ``_RETRY_S``; a failure that is not transient
    is retried only until ``data_attempts`` attempts were made (all of them by default).

    Not committed, not acknowledged: if the process dies meanwhile, the broker redelivers.
    Only the error's class is logged (its text may quote patient data).
    """
    attempt = 0
    while True:
        try:
            return store()
        except Exception as exc:
            logger.error(
                "device batch not stored",
                extra={"attempt": attempt + 1, "error": error_kind(exc)},
            )
            last = attempt == len(_RETRY_S) or (
                data_attempts is not None and not _unavailable(exc) and attempt + 1 >= data_attempts
            )
            if last or stop.wait(_RETRY_S[attempt]):
                raise
            attempt += 1
