"""deploy/healthcheck.py, the image's HEALTHCHECK, against a real local endpoint."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tls_helpers import self_signed_certificate

HEALTHCHECK = Path(__file__).resolve().parents[2] / "deploy" / "healthcheck.py"


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    cert_file, key_file = self_signed_certificate(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], cert_file, key_file
    server.shutdown()
    server.server_close()


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_healthcheck_speaks_tls_when_vitalcast_terminates_it(
    tls_server: tuple[int, Path, Path],
) -> None:
    """With VITALCAST_TLS_CERTFILE/KEYFILE set, `vitalcast serve` answers only HTTPS: the
    plain-HTTP check marked a healthy container unhealthy ("Remote end closed
    connection without response")."""
    port, cert_file, key_file = tls_server
    done = _run(
        {
            "VITALCAST_PORT": str(port),
            "VITALCAST_TLS_CERTFILE": str(cert_file),
            "VITALCAST_TLS_KEYFILE": str(key_file),
        }
    )
    assert done.returncode == 0, done.stderr


def test_healthcheck_fails_when_nothing_answers(tls_server: tuple[int, Path, Path]) -> None:
    port, _, _ = tls_server
    done = _run({"VITALCAST_PORT": str(port)})  # plain HTTP to a TLS port
    assert done.returncode == 1
