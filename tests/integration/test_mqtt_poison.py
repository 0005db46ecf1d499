"""A poison message through a real MQTT broker into real PostgreSQL.

Before, one message the database refused (a NUL in a code: ``DataError``) was retried for
about 18 s, the consumer exited, and at every restart the broker redelivered it and the
consumer died again: no later reading of any device was stored. Now the item holding
what cannot be stored is quarantined, the other readings are stored, and the messages
are acknowledged; a database that cannot be reached is still retried and nothing is
acknowledged.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import OperationalError

from tests.integration.test_mqtt_stream import T0, _bound_consumer, _count, _hr
from tests.mqtt_helpers import SESSION_EXPIRY_S, Publisher, consuming
from vitalcast.clinical.tables import Observation
from vitalcast.db import create_db_engine
from vitalcast.db.session import make_session_factory
from vitalcast.ingest import mqtt as mqtt_module
from vitalcast.ingest.mqtt import DeviceStreamConsumer, MqttConfig, parse_mqtt_url
from vitalcast.ingest.quarantine import decrypt_raw
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.security.crypto import FieldCipher


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumer's retry schedule, shortened (0.5 s to 10 s in production)."""
    monkeypatch.setattr(mqtt_module, "_RETRY_S", (0.05, 0.05, 0.05))


def _publish(url: str, topic: str, payloads: list[object]) -> None:
    pub = Publisher(url, f"pub-{uuid.uuid4().hex[:8]}")
    for p in payloads:
        pub.publish(topic, p)
    pub.close()


def _wait_for(consumer: DeviceStreamConsumer, messages: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while consumer.stats.messages < messages and time.monotonic() < deadline:
        time.sleep(0.05)


def _redelivered(consumer: DeviceStreamConsumer, engine: Engine, cipher: FieldCipher) -> int:
    """Messages the broker still holds for the consumer's session: a new consumer under
    the same client id resumes the session and counts what it receives."""
    again = DeviceStreamConsumer(make_session_factory(engine), cipher, consumer.config)
    return again.run(threading.Event(), idle_exit_s=2).messages


def _reasons(engine: Engine) -> list[str]:
    with make_session_factory(engine)() as s:
        return sorted(s.scalars(select(QuarantineItem.reason_code)))


def test_a_reading_with_a_nul_is_quarantined_and_the_stream_goes_on(
    mqtt_url: str, pg_engine: Engine, cipher: FieldCipher
) -> None:
    consumer, prefix = _bound_consumer(mqtt_url, pg_engine, cipher, "probe-dev-1")
    poison = {**_hr(T0 + timedelta(minutes=1), 79), "code": "88\u00007-4"}
    with consuming(consumer):
        _publish(
            mqtt_url,
            f"{prefix}/probe-dev-1/observations",
            [poison, _hr(T0 + timedelta(minutes=2), 80)],
        )
        _wait_for(consumer, 2)
    assert consumer.stats.messages == 2
    assert _count(pg_engine, Observation) == 1
    assert _reasons(pg_engine) == ["invalid_text"]
    with make_session_factory(pg_engine)() as s:
        item = s.scalars(select(QuarantineItem)).one()
    assert item.reason == "observation code contains a NUL character; it cannot be stored"
    assert item.code == "88\\u00007-4"
    assert _redelivered(consumer, pg_engine, cipher) == 0  # both were acknowledged


@pytest.fixture
def refuses_value(pg_engine: Engine) -> Iterator[float]:
    """A value the database itself refuses (a trigger raising a data exception): a
    message that fails for what it holds, past every check of the store."""
    with pg_engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_value() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN IF NEW.value = 66.6 THEN"
                " RAISE EXCEPTION 'refused' USING ERRCODE = 'data_exception';"
                " END IF; RETURN NEW; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER refuse_value BEFORE INSERT ON observations"
                " FOR EACH ROW EXECUTE FUNCTION refuse_value()"
            )
        )
    yield 66.6
    with pg_engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse_value ON observations"))
        conn.execute(text("DROP FUNCTION refuse_value()"))


def test_a_message_the_database_refuses_is_quarantined_alone_without_waiting(
    mqtt_url: str,
    pg_engine: Engine,
    cipher: FieldCipher,
    refuses_value: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A data error is not retried: the same rows would fail the same way, and every
    device's later readings waited behind the retries (18 s in production; a minute
    here, longer than the test waits, so a retry fails it)."""
    monkeypatch.setattr(mqtt_module, "_RETRY_S", (60.0,))
    consumer, prefix = _bound_consumer(mqtt_url, pg_engine, cipher, "mon-9")
    at = T0 + timedelta(minutes=1)
    payloads: list[object] = [
        _hr(at, 70),
        _hr(at + timedelta(minutes=1), refuses_value),
        _hr(at + timedelta(minutes=2), 71),
    ]
    with consuming(consumer):
        _publish(mqtt_url, f"{prefix}/mon-9/observations", payloads)
        _wait_for(consumer, 3)
    assert consumer.stats.messages == 3
    report = consumer.stats.report
    assert report.balanced()
    assert (report.stored, report.quarantined) == (2, 1)
    with make_session_factory(pg_engine)() as s:
        values = sorted(s.scalars(select(Observation.value)))
        item = s.scalars(select(QuarantineItem)).one()
    assert values == [70.0, 71.0]
    assert item.reason_code == "store_failed"
    assert "(DataException)" in item.reason  # the class only, never its text
    assert item.location.startswith(f"{prefix}/mon-9/observations#")
    assert '"value": 66.6' in (decrypt_raw(cipher, item) or "")
    assert _redelivered(consumer, pg_engine, cipher) == 0


def test_an_unreachable_database_is_retried_and_nothing_is_acknowledged(
    mqtt_url: str, pg_engine: Engine, cipher: FieldCipher
) -> None:
    _, prefix = _bound_consumer(mqtt_url, pg_engine, cipher, "mon-8")
    down = create_db_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", check=False)
    config = MqttConfig(
        **parse_mqtt_url(mqtt_url),
        client_id=f"vc-{uuid.uuid4().hex[:8]}",
        topic_prefix=prefix,
        batch_wait_s=0.05,
        session_expiry_s=SESSION_EXPIRY_S,
    )
    offline = DeviceStreamConsumer(make_session_factory(down), cipher, config)
    offline.connect_check()
    _publish(mqtt_url, f"{prefix}/mon-8/observations", [_hr(T0 + timedelta(minutes=1), 70)])
    with pytest.raises(OperationalError):
        offline.run(threading.Event(), idle_exit_s=10)
    down.dispose()
    assert offline.stats.messages == 0
    assert _count(pg_engine, QuarantineItem) == 0
    # The broker still holds the reading for the session: the next start stores it.
    assert _redelivered(offline, pg_engine, cipher) == 1
    assert _count(pg_engine, Observation) == 1
