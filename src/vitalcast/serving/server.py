"""Run the app under gunicorn with settings-driven options.

Each worker builds its own app (own database pool) and is told how many workers there
are: without Redis the rate-limit counters are per worker, so each enforces its share of
every limit (``security/rate_limits.py``). OpenMP/BLAS pools are pinned to one
thread per worker, because N workers × M threads on a small machine oversubscribes the
cores and collapses throughput.
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from vitalcast.config import Settings
from vitalcast.serving.threads import REQUEST_THREADS_PER_WORKER, limit_native_threads


class VitalcastServer(BaseApplication):  # type: ignore[misc]
    """gunicorn application that loads vitalcast's factory in each worker."""

    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.workers = int(options["workers"])
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        limit_native_threads()
        from vitalcast.serving.app import create_app

        return create_app(self.settings, workers=self.workers)


def serve(settings: Settings, *, host: str, port: int, workers: int) -> None:
    """Serve until interrupted.

    Raises:
        ConfigError: a rate limit the workers cannot share without Redis (before any
            worker starts, rather than once per worker).
    """
    from vitalcast.monitoring.multiproc import prepare_multiprocess_dir, worker_exit
    from vitalcast.security.rate_limits import effective_limits

    if settings.rate_limit_enabled:
        effective_limits(settings, workers)

    limit_native_threads()
    # Before any worker imports prometheus-client (docs: monitoring/multiproc.py).
    prepare_multiprocess_dir(settings.resolved_metrics_dir)
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": REQUEST_THREADS_PER_WORKER,
        "timeout": 60,
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": "vitalcast",
        "child_exit": worker_exit,
    }
    if settings.tls_certfile is not None and settings.tls_keyfile is not None:
        # TLS terminated by gunicorn itself (docs/security.md, transmission security).
        options |= {"certfile": str(settings.tls_certfile), "keyfile": str(settings.tls_keyfile)}
    VitalcastServer(settings, options).run()
