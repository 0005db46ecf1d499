"""Transmission security: `vitalcast serve` terminates TLS itself and then sends HSTS.

A self-signed certificate for 127.0.0.1 is made on the fly; the real server (gunicorn)
runs in a subprocess and is reached over HTTPS, verifying that certificate.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.tls_helpers import self_signed_certificate
from vitalcast.config import Settings

VITALCAST = str(Path(sys.executable).with_name("vitalcast"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_with_certificates_speaks_tls_and_sends_hsts(
    settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAST_")}
    env |= {
        "VITALCAST_ENV": "test",
        "VITALCAST_DATA_DIR": str(settings.data_dir),
        "VITALCAST_DATABASE_URL": pg_url,
        "VITALCAST_TLS_CERTFILE": str(cert),
        "VITALCAST_TLS_KEYFILE": str(key),
    }
    proc = subprocess.Popen(
        [VITALCAST, "serve", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        context = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 60
        response = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                response = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=context)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        if response is None:
            proc.terminate()
            output = proc.communicate(timeout=10)[0].decode(errors="replace")
            pytest.fail(f"server did not answer over TLS:\n{output[-3000:]}")
        assert response.status_code == 200
        assert response.headers["Strict-Transport-Security"] == (
            "max-age=31536000; includeSubDomains"
        )
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)  # no plaintext HTTP
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout:
            proc.stdout.close()
