"""The request body limit holds for chunked bodies too, as gunicorn serves them.

A chunked body has no Content-Length; gunicorn passes it on as a terminated stream
(``wsgi.input_terminated``), which werkzeug cuts at MAX_CONTENT_LENGTH without an error.
The Flask test client cannot send such a request (without a Content-Length its body is
dropped), so this runs against a real ``vitalcast serve``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.live import LiveServer, live_server
from tests.modeling_data import register_champion
from tests.services import DatabaseFactory
from vitalcast.db import create_db_engine, session_scope
from vitalcast.db.session import make_session_factory
from vitalcast.security.service import create_api_key

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(
    databases: DatabaseFactory, trained_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    url = databases.new()
    home = tmp_path_factory.mktemp("body-limit")
    engine = create_db_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        register_champion(session, trained_model)  # /readyz waits for a champion
        _, key = create_api_key(session, name="writer", role="integration")
    engine.dispose()
    env = {
        "VITALCAST_ENV": "test",
        "VITALCAST_DATA_DIR": str(home),
        "VITALCAST_DATABASE_URL": url,
        "VITALCAST_MAX_REQUEST_BYTES": str(LIMIT),
    }
    with live_server(env, workers=1) as live:
        yield live, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def _body(size: int) -> bytes:
    """A JSON array of ``size`` bytes (padded with spaces): valid at any length."""
    doc = json.dumps([{"code": "8867-4", "value": 80, "unit": "/min", "patient": "nobody"}])
    return doc[:-1].encode() + b" " * (size - len(doc)) + b"]"


def _chunked(body: bytes) -> Iterator[bytes]:
    """An iterator body: httpx sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(body), 8192):
        yield body[start : start + 8192]


def _post(server: tuple[LiveServer, dict[str, str]], content: Any) -> httpx.Response:
    live, headers = server
    return httpx.post(f"{live.url}/api/v1/observations", content=content, headers=headers)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_body_past_the_limit_is_413(
    server: tuple[LiveServer, dict[str, str]], chunked: bool
) -> None:
    body = _body(LIMIT + 4096)
    response = _post(server, _chunked(body) if chunked else body)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT])
def test_a_chunked_body_up_to_the_limit_is_read_whole(
    server: tuple[LiveServer, dict[str, str]], size: int
) -> None:
    """Read to its end, not cut: the batch is parsed and answered (its unknown patient
    quarantined), not refused as JSON cut short (400) or as too large (413)."""
    response = _post(server, _chunked(_body(size)))
    assert response.status_code not in (400, 413), response.text
