"""Benchmark: `make demo` from a fresh clone until the UI answers, then a second start.

Clones the repository (the committed HEAD) into a temporary directory, runs `make demo`
there and polls ``http://127.0.0.1:8000/healthz`` every second from the moment `make`
starts; stops the demo (SIGTERM to its process group) and starts it again in the same
clone, whose ``var/`` now holds the database, keys and model. Prints both times and the
"prepared in" time the demo reports (synthesise, store, train, score). The first run
includes creating ``.venv`` (uv's download cache decides how much is downloaded). Needs
port 8000 free. Not a test.

    .venv/bin/python bench/demo_startup.py [--save]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import _results

ROOT = Path(__file__).resolve().parents[1]
URL = "http://127.0.0.1:8000/healthz"
TIMEOUT_S = 1200.0


def _start(clone: Path) -> tuple[float, float | None]:
    """Seconds until /healthz answers 200, and the demo's own 'prepared in' seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAST_")}
    log = clone / "demo.log"
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["make", "demo"],
            cwd=clone,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                elapsed = time.perf_counter() - started
                if proc.poll() is not None:
                    raise SystemExit(f"make demo exited with {proc.returncode}; see {log}")
                if elapsed > TIMEOUT_S:
                    raise SystemExit(f"no answer from {URL} after {TIMEOUT_S:.0f} s")
                try:
                    with urllib.request.urlopen(URL, timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(1.0)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    prepared = re.search(r"prepared in ([\d.]+) s", log.read_text())
    return elapsed, float(prepared.group(1)) if prepared else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help="write bench/results/demo_startup.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vitalcast-demo-") as tmp:
        clone = Path(tmp) / "vitalcast"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        first, first_prepared = _start(clone)
        print(f"first start (fresh clone): {first:.0f} s, demo prepared in {first_prepared} s")
        second, second_prepared = _start(clone)
        print(f"second start (same clone): {second:.0f} s, demo prepared in {second_prepared} s")
    print(f"load average at start {load_at_start:.1f}, at end {os.getloadavg()[0]:.1f}")
    if args.save:
        _results.save(
            "demo_startup",
            {
                "first_s": round(first),
                "first_prepared_s": first_prepared,
                "second_s": round(second),
                "second_prepared_s": second_prepared,
            },
            load_at_start=load_at_start,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
