"""Risk-update events across processes: PostgreSQL LISTEN/NOTIFY, Redis, or polling.

A rescored prediction is published as a small JSON event. Subscribers (SSE connections
of any gunicorn worker on any replica) receive it through one listener thread per
process, which fans events out to per-connection queues. Process memory alone is never
the channel, because the request that rescored and the browser that waits are usually
served by different processes:

- PostgreSQL: ``pg_notify`` inside the transaction that stores the prediction, so the
  event is delivered exactly when the prediction is committed (and never if it rolls back).
- Redis (when ``VITALCAST_REDIS_URL`` is set and the database is not PostgreSQL):
  published after commit.
- SQLite (the embedded demo): the listener polls the predictions table once a second.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

from sqlalchemy import Engine, event, select, text
from sqlalchemy.orm import Session

from vitalcast.modeling.tables import Prediction, public_probability
from vitalcast.modeling.tasks import STAY_TASK
from vitalcast.serving.threads import REQUEST_THREADS_PER_WORKER

logger = logging.getLogger(__name__)

CHANNEL = "vitalcast_risk"
# Retry-After of a refused stream: the longest a page waits before asking again
# (web/static/js/vitalcast.js backs off 1, 2, 4, then 5 seconds).
STREAM_RETRY_AFTER_S = 5
_QUEUE_SIZE = 1000
# Longest wait between the event listener's reconnection attempts.
_RECONNECT_MAX_S = 30
# Seconds a publish may wait for Redis: it runs after the commit, inside the request.
_REDIS_TIMEOUT = 1.0


def reconnect_delay(failures: int) -> float:
    """Seconds before the listener's next attempt after ``failures`` in a row: 1, 2, 4, …
    up to :data:`_RECONNECT_MAX_S`, so an outage costs a few log lines a minute."""
    return float(min(_RECONNECT_MAX_S, 2 ** min(failures - 1, 16)))


class EventBus:
    """Publishes events and fans received events out to local subscribers.

    It also counts this process's open streams: each holds a request thread for as long
    as its browser listens (and a closed browser is noticed only at the next heartbeat),
    so without a bound a few wards' screens would take every thread and ordinary requests
    (a posted observation, a page) would wait for a stream to end. ``max_streams``
    defaults to one less than a worker's request threads.
    """

    def __init__(
        self,
        engine: Engine,
        redis_url: str | None = None,
        *,
        max_streams: int = REQUEST_THREADS_PER_WORKER - 1,
    ) -> None:
        self.engine = engine
        self.kind = (
            "postgresql"
            if engine.dialect.name == "postgresql"
            else ("redis" if redis_url else "polling")
        )
        self.redis_url = redis_url
        self._subscribers: set[queue.Queue[dict[str, Any]]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._streams = threading.BoundedSemaphore(max_streams)
        self._failures = 0  # the listener's consecutive failed attempts

    # -- stream slots -------------------------------------------------------------------
    def open_stream(self) -> bool:
        """Take a stream slot; False when this process already serves ``max_streams``."""
        return self._streams.acquire(blocking=False)

    def close_stream(self) -> None:
        """Give back a slot taken by :meth:`open_stream` (once per slot)."""
        self._streams.release()

    # -- publishing -------------------------------------------------------------------
    def publish(self, session: Session, payload: dict[str, Any]) -> None:
        """Publish ``payload`` when ``session``'s transaction commits."""
        body = json.dumps(payload, separators=(",", ":"), default=str)
        if self.kind == "postgresql":
            session.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": body})
        elif self.kind == "redis":
            pending: list[str] = session.info.setdefault("vitalcast_events", [])
            if not pending:
                event.listen(session, "after_commit", self._flush_redis, once=True)
            pending.append(body)
        # polling: the listener reads committed predictions itself

    def _flush_redis(self, session: Session) -> None:
        import redis

        bodies = session.info.pop("vitalcast_events", [])
        timeout = _REDIS_TIMEOUT
        client = redis.Redis.from_url(
            str(self.redis_url), socket_connect_timeout=timeout, socket_timeout=timeout
        )
        try:
            for body in bodies:
                client.publish(CHANNEL, body)
        except redis.RedisError:
            # The transaction has committed. Raising here answered 500 for data that was
            # stored, and a sender retrying sent it twice. Open live views miss these
            # updates until their next reload; the stored risks are unaffected.
            logger.warning("Redis unreachable: %d live update(s) not published", len(bodies))
        finally:
            client.close()

    # -- subscribing ------------------------------------------------------------------
    def subscribe(self) -> queue.Queue[dict[str, Any]]:
        """A queue receiving every event from now on (call :meth:`unsubscribe` after)."""
        q: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=_QUEUE_SIZE)
        with self._lock:
            self._subscribers.add(q)
            self._ensure_listener()
        return q

    def unsubscribe(self, q: queue.Queue[dict[str, Any]]) -> None:
        with self._lock:
            self._subscribers.discard(q)

    def _fan_out(self, payload: dict[str, Any]) -> None:
        with self._lock:
            targets = list(self._subscribers)
        for q in targets:
            with suppress(queue.Full):  # a stalled client loses events, never blocks others
                q.put_nowait(payload)

    def _ensure_listener(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        target: Callable[[], None] = {
            "postgresql": self._listen_postgres,
            "redis": self._listen_redis,
            "polling": self._poll_predictions,
        }[self.kind]
        self._thread = threading.Thread(
            target=self._run, args=(target,), daemon=True, name="vitalcast-events"
        )
        self._thread.start()

    def _run(self, target: Callable[[], None]) -> None:
        """Run the listener, reconnecting after any failure, never dying silently.

        An outage of its server (PostgreSQL, Redis) used to log a traceback every second
        in every worker until it ended. The first failure is logged with its traceback;
        later attempts wait longer each time (:func:`reconnect_delay`) and log one line,
        and the listener says when it is connected again.
        """
        while not self._stop.is_set():
            try:
                target()
            except Exception:
                self._failures += 1
                delay = reconnect_delay(self._failures)
                if self._failures == 1:
                    logger.exception("event listener failed; live updates paused, retrying")
                else:
                    logger.warning(
                        "event listener still failing (attempt %d); next attempt in %.0f s",
                        self._failures,
                        delay,
                    )
                self._stop.wait(delay)

    def _connected(self) -> None:
        """Called by a listener once subscribed: the outage, if any, is over."""
        if self._failures:
            logger.warning("event listener connected again after %d attempt(s)", self._failures)
        self._failures = 0

    def close(self) -> None:
        self._stop.set()

    def _listen_postgres(self) -> None:
        import psycopg

        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._connected()
            while not self._stop.is_set():
                for note in conn.notifies(timeout=1.0):
                    self._fan_out(json.loads(note.payload))

    def _listen_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(str(self.redis_url), socket_connect_timeout=5.0)
        pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(CHANNEL)
        self._connected()
        try:
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message and message.get("type") == "message":
                    self._fan_out(json.loads(message["data"]))
        finally:
            pubsub.close()
            client.close()

    def _poll_predictions(self) -> None:
        with Session(self.engine) as session:
            last = session.scalar(select(Prediction.id).order_by(Prediction.id.desc()).limit(1))
        last = last or 0
        while not self._stop.is_set():
            time.sleep(1.0)
            with Session(self.engine) as session:
                rows = session.scalars(
                    select(Prediction)
                    .where(
                        Prediction.id > last,
                        Prediction.role == "champion",
                        Prediction.task == STAY_TASK,
                    )
                    .order_by(Prediction.id)
                ).all()
                for row in rows:
                    last = row.id
                    self._fan_out(prediction_event_from_row(session, row))


def prediction_event_from_row(session: Session, row: Prediction) -> dict[str, Any]:
    """The event for a stored prediction (used by the polling listener)."""
    from vitalcast.clinical.tables import Encounter, Patient

    enc = session.get(Encounter, row.encounter_id) if row.encounter_id else None
    patient = session.get(Patient, row.patient_id) if row.patient_id else None
    return risk_event(row, patient_public_id=patient.public_id if patient else None, encounter=enc)


def risk_event(row: Prediction, *, patient_public_id: str | None, encounter: Any) -> dict[str, Any]:
    """The small JSON event announcing a new risk (no identifiers: ids and numbers only)."""
    return {
        "type": "risk",
        "prediction_id": row.public_id,
        "patient_id": patient_public_id,
        "encounter_id": encounter.public_id if encounter is not None else None,
        "unit": encounter.unit if encounter is not None else None,
        "probability": public_probability(row.score),
        "band": row.band,
        "as_of": row.as_of.isoformat(),
        "data_freshness_at": row.data_freshness_at.isoformat() if row.data_freshness_at else None,
    }


def sse_stream(
    bus: EventBus,
    *,
    allow: Callable[[dict[str, Any]], bool],
    still_valid: Callable[[], bool] = lambda: True,
    heartbeat_s: float = 2.0,
    recheck_s: float = 1.0,
) -> Iterator[str]:
    """Server-Sent Events text for the events ``allow`` admits, with heartbeats.

    The heartbeat is also how a closed browser is noticed (writing to its socket fails),
    so it is short: the stream's request thread and slot come back within seconds. It is
    written whenever nothing was for ``heartbeat_s``, even while events the caller may
    not see keep arriving.

    The caller's credentials were checked when the stream opened, but a stream lives as
    long as the page: ``still_valid`` re-checks them (session signed out, revoked, idle
    or expired, user disabled, API key revoked) at every heartbeat, and before an event
    is sent unless it was checked less than ``recheck_s`` ago, which bounds the checks to
    one a second per stream however busy the ward. When the answer is no, the stream
    says ``event: signed-out`` (the page goes to the sign-in page instead of reconnecting)
    and ends.
    """
    q = bus.subscribe()
    try:
        yield "retry: 3000\n\n"
        checked = written = time.monotonic()
        while True:
            try:
                payload: dict[str, Any] | None = q.get(timeout=heartbeat_s)
            except queue.Empty:
                payload = None
            now = time.monotonic()
            if payload is not None and allow(payload):
                if now - checked >= recheck_s:
                    if not still_valid():
                        break
                    checked = now
                yield f"event: {payload.get('type', 'message')}\ndata: {json.dumps(payload)}\n\n"
                written = now
            elif now - written >= heartbeat_s:
                if not still_valid():
                    break
                checked = written = now
                yield ": keep-alive\n\n"
        yield "event: signed-out\ndata: {}\n\n"
    finally:
        bus.unsubscribe(q)
