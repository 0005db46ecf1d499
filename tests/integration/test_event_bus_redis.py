"""The Redis event bus (a database without LISTEN/NOTIFY, with ``VITALCAST_REDIS_URL``):
events reach subscribers through a real Redis, and a Redis outage never fails a request
whose data has already been committed."""

from __future__ import annotations

import logging
import queue
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.services import redis_test_url
from vitalcast.db import create_db_engine
from vitalcast.serving.realtime import EventBus


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
