"""Under `vitalcast serve` (gunicorn, 2 workers) /metrics sums every worker's counters."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "scrape-token-for-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_serve_aggregates_workers_and_starts_from_a_clean_directory(
    pg_url: str, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "var" / "metrics"
    metrics_dir.mkdir(parents=True)
    (metrics_dir / "counter_999999.db").write_bytes(b"stale file of a previous run")
    port = _free_port()
    env = os.environ | {
        "VITALCAST_ENV": "test",
        "VITALCAST_DATA_DIR": str(tmp_path / "var"),
        "VITALCAST_DATABASE_URL": pg_url,
        "VITALCAST_METRICS_TOKEN": TOKEN,
        "VITALCAST_LOG_LEVEL": "WARNING",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "vitalcast"),
            "serve",
            "--workers",
            "2",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"server did not start:\n{out[-3000:]}")
            time.sleep(0.3)
        for _ in range(40):  # new connection each: spread over both workers
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        response = httpx.get(
            f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        assert response.status_code == 200
        families = list(text_string_to_metric_families(response.text))
        # Multiprocess exposition: built from the shared files, so the per-process
        # collectors of single-process mode (python_gc_*, process_*) are absent.
        assert not any(f.name.startswith(("python_gc", "process_")) for f in families)
        total = 0.0
        for family in families:
            for sample in family.samples:
                if (
                    sample.name == "vitalcast_http_requests_total"
                    and sample.labels.get("route") == "/healthz"
                ):
                    total += sample.value
        # 40 + the readiness probes that succeeded; every worker's counts are summed.
        assert total >= 41
        pids = {p.name.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}
        assert "999999.db" not in pids  # the previous run's file was cleared
        assert pids  # workers wrote their samples to the directory
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
