"""The Redis event bus (a database without LISTEN/NOTIFY, with ``VITALCAST_REDIS_URL``):
events reach subscribers through a real Redis, and a Redis outage never fails a request
whose data has already been committed."""

from __future__ import annotations

import logging
import queue
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.services import redis_test_url
from vitalcast.db import create_db_engine
from vitalcast.serving.realtime import EventBus, reconnect_delay


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """SQLite, the deployment database without LISTEN/NOTIFY (the bus then uses Redis)."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'bus.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE stored (n INTEGER)"))
    return engine


def _commit_with_event(engine: Engine, bus: EventBus, n: int) -> None:
    with Session(engine) as session, session.begin():
        session.execute(text("INSERT INTO stored (n) VALUES (:n)"), {"n": n})
        bus.publish(session, {"n": n})


def test_events_reach_subscribers_through_redis(engine: Engine) -> None:
    bus = EventBus(engine, redis_test_url())
    assert bus.kind == "redis"
    received = bus.subscribe()
    try:
        # The listener subscribes in its own thread: publish until it has (at most 5 s).
        for n in range(50):
            _commit_with_event(engine, bus, n)
            try:
                first = received.get(timeout=0.1)
                break
            except queue.Empty:
                continue
        else:
            pytest.fail("no event arrived through Redis")
        assert first["n"] == n
        _commit_with_event(engine, bus, 1000)
        assert received.get(timeout=5) == {"n": 1000}
    finally:
        bus.unsubscribe(received)
        bus.close()


def test_an_unreachable_redis_does_not_fail_a_committed_request(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The publish runs after the commit; its error used to propagate (a 500 for data
    that was stored, which a sender would then send again)."""
    bus = EventBus(engine, "redis://127.0.0.1:1/0")
    with caplog.at_level(logging.WARNING, logger="vitalcast.serving.realtime"):
        _commit_with_event(engine, bus, 7)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM stored")).scalars().all() == [7]
    assert "Redis unreachable: 1 live update(s) not published" in caplog.text
    assert "127.0.0.1" not in caplog.text


def test_a_listener_outage_logs_one_traceback_then_backs_off(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The listener used to log a traceback every second, in every worker, for as long
    as its server was down."""
    bus = EventBus(engine, "redis://127.0.0.1:1/0")
    with caplog.at_level(logging.WARNING, logger="vitalcast.serving.realtime"):
        subscriber = bus.subscribe()
        try:
            deadline = time.monotonic() + 15
            while len(caplog.records) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            bus.unsubscribe(subscriber)
            bus.close()
    first, second, third = caplog.records[:3]
    assert [r.exc_info is not None for r in (first, second, third)] == [True, False, False]
    assert "attempt 2" in second.getMessage()
    assert "attempt 3" in third.getMessage()
    # Waits of 1 s then 2 s between attempts (scheduling can only lengthen them).
    assert second.created - first.created >= 0.95
    assert third.created - second.created >= 1.95


def test_reconnect_delays_double_up_to_half_a_minute() -> None:
    assert [reconnect_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert reconnect_delay(10_000) == 30
