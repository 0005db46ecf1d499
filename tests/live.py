"""A real vitalcast server process (gunicorn, two workers) for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

VITALCAST = str(Path(sys.executable).with_name("vitalcast"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class LiveServer:
    url: str
    process: subprocess.Popen[str]
    log: Path


@contextmanager
def live_server(
    env: dict[str, str], *, workers: int = 2, ready_s: float = 90.0, ready_path: str = "/readyz"
) -> Iterator[LiveServer]:
    """Start ``vitalcast serve`` with ``env`` and wait until ``ready_path`` answers 200."""
    port = free_port()
    log = Path(env["VITALCAST_DATA_DIR"]) / "server.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAST_")} | env
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                VITALCAST,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            env=clean,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}{ready_path}", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {ready_s} s:\n{log.read_text()}")
            time.sleep(0.3)
        yield LiveServer(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
