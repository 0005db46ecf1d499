"""An open live-update stream ends when its credentials do.

``GET /api/v1/events`` checks the caller when it opens and then stays open for as long
as the page; these tests open a real stream (the app, PostgreSQL LISTEN/NOTIFY), deliver
a real event through it, end the credentials the way an operator or the clock would,
and require the stream to stop delivering and to end within a couple of heartbeats.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import Credentials, set_web_session
from vitalcast.cli import main
from vitalcast.config import Settings
from vitalcast.serving.state import get_state

COOKIE = "vitalcast_session"
WAIT_S = 10.0  # generous: the heartbeat is 2 s


@dataclass
class Stream:
    """A stream read on its own thread (where the request ran, as a server would)."""

    chunks: queue.Queue[str] = field(default_factory=queue.Queue)
    opened: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    status: int = 0
    text: str = ""

    def wait_for(self, needle: str, timeout_s: float = WAIT_S) -> bool:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text and time.monotonic() < deadline:
            try:
                self.text += self.chunks.get(timeout=0.1)
            except queue.Empty:
                continue
        return needle in self.text

    def drain(self) -> str:
        while not self.chunks.empty():
            self.text += self.chunks.get_nowait()
        return self.text


def _open(client: FlaskClient, headers: dict[str, str] | None = None) -> Stream:
    stream = Stream()

    def read() -> None:
        response = client.get("/api/v1/events", headers=headers or {}, buffered=False)
        stream.status = response.status_code
        stream.opened.set()
        try:
            for chunk in response.response:
                stream.chunks.put(chunk.decode() if isinstance(chunk, bytes) else str(chunk))
        finally:
            response.close()
            stream.ended.set()

    threading.Thread(target=read, daemon=True).start()
    assert stream.opened.wait(WAIT_S), "the stream did not open"
    assert stream.status == 200
    assert stream.wait_for("retry:")
    return stream


def _publish(app: Flask, prediction_id: str) -> None:
    """A risk event through the real bus (pg_notify, delivered on commit)."""
    state = get_state(app)
    assert state.bus is not None
    with state.sessions() as session:
        state.bus.publish(
            session,
            {"type": "risk", "prediction_id": prediction_id, "unit": "MICU", "probability": 0.5},
        )
        session.commit()


def _deliver(app: Flask, stream: Stream, prediction_id: str) -> bool:
    """Publish until the stream shows the event: the bus's listener connects on the first
    subscription, and an event published before it listens is (rightly) not replayed."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        _publish(app, prediction_id)
        if stream.wait_for(f'"prediction_id": "{prediction_id}"', timeout_s=0.5):
            return True
    return False


@pytest.fixture
def signed_in(app: Flask, creds: Credentials) -> tuple[FlaskClient, str]:
    """A nurse bound to no unit, signed in; returns the client and its CSRF token."""
    client = app.test_client()
    token = creds.login(client, creds.user("nina", "nurse"))
    return client, token


def _sign_out_elsewhere(app: Flask, client: FlaskClient, token: str, _s: Settings) -> None:
    """Sign out in another tab (same cookie)."""
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    other_tab = app.test_client()
    other_tab.set_cookie(COOKIE, cookie.value)
    assert other_tab.post("/logout", data={"csrf_token": token}).status_code == 302


def _disable(_app: Flask, _client: FlaskClient, _token: str, settings: Settings) -> None:
    result = CliRunner().invoke(main, ["users", "disable", "nina"], obj={"settings": settings})
    assert result.exit_code == 0, result.output


def _idle_out(app: Flask, client: FlaskClient, _token: str, _s: Settings) -> None:
    idle = get_state(app).settings.session_idle_minutes
    set_web_session(client, last_seen_at=datetime.now(UTC) - timedelta(minutes=idle + 2))


ENDINGS: dict[str, Callable[[Flask, FlaskClient, str, Settings], None]] = {
    "sign-out": _sign_out_elsewhere,
    "disable": _disable,
    "idle": _idle_out,
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_a_session_stream_ends_with_the_session(
    app: Flask, settings: Settings, signed_in: tuple[FlaskClient, str], ending: str
) -> None:
    client, token = signed_in
    stream = _open(client)
    assert _deliver(app, stream, "before"), stream.drain()
    ENDINGS[ending](app, client, token, settings)
    time.sleep(1.2)  # past the per-event re-check interval: the next event is checked
    _publish(app, "after")
    assert stream.ended.wait(WAIT_S), "the stream outlived its session"
    text = stream.drain()
    assert '"after"' not in text
    assert text.rstrip().endswith("event: signed-out\ndata: {}")


def test_an_api_key_stream_ends_when_the_key_is_revoked(
    app: Flask, settings: Settings, creds: Credentials
) -> None:
    headers = creds.api_key("integration")
    stream = _open(app.test_client(), headers)
    assert _deliver(app, stream, "before"), stream.drain()
    prefix = headers["Authorization"].split("_")[1]
    result = CliRunner().invoke(main, ["apikeys", "revoke", prefix], obj={"settings": settings})
    assert result.exit_code == 0, result.output
    assert stream.ended.wait(WAIT_S), "the stream outlived its API key"
    assert "signed-out" in stream.drain()


def test_a_valid_stream_keeps_going(
    app: Flask, settings: Settings, signed_in: tuple[FlaskClient, str]
) -> None:
    """Re-checks pass while the session is good: heartbeats and events keep flowing."""
    client, token = signed_in
    stream = _open(client)
    assert stream.wait_for(": keep-alive")
    assert _deliver(app, stream, "still-here"), stream.drain()
    stream.text = ""
    assert stream.wait_for(": keep-alive")  # re-checked at this heartbeat, and passed
    assert not stream.ended.is_set()
    assert "signed-out" not in stream.drain()
    _sign_out_elsewhere(app, client, token, settings)  # and end it, for a clean teardown
    assert stream.ended.wait(WAIT_S)
