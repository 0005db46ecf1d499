"""prometheus-client's multiprocess mode under gunicorn: set up in the master, clean per worker.

gunicorn forks N workers, each with its own counters; a scrape reaches one worker at
random. In multiprocess mode every worker writes its samples to memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them. prometheus-client picks the mode
when it is *first imported*, so this module must not import it at module level, and
:func:`prepare_multiprocess_dir` must run in the master before any worker starts.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(path: Path) -> Path:
    """Empty ``path`` and export it as ``PROMETHEUS_MULTIPROC_DIR`` for the workers to come.

    Files left by a previous run would add its counts to this one, hence the emptying.

    Raises:
        RuntimeError: prometheus-client was already imported in single-process mode, so
            forked workers would silently keep per-process counters.
        ConfigError: the directory cannot be emptied or created (e.g. on a read-only root
            filesystem); the message names VITALCAST_METRICS_DIR.
    """
    if "prometheus_client" in sys.modules and os.environ.get(MULTIPROC_ENV) != str(path):
        raise RuntimeError(
            "prometheus_client was imported before the multiprocess directory was set;"
            " import vitalcast.monitoring.metrics only inside workers"
        )
    try:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, mode=0o700)
    except OSError as exc:
        from vitalcast.errors import ConfigError

        raise ConfigError(
            f"VITALCAST_METRICS_DIR: cannot recreate {path} ({exc.strerror or type(exc).__name__});"
            " point it at a writable directory (default: metrics/ in VITALCAST_DATA_DIR)"
        ) from None
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def worker_exit(_server: object, worker: Any) -> None:
    """gunicorn ``child_exit`` hook: drop the dead worker's live gauges."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)  # type: ignore[no-untyped-call]
