"""``/metrics`` and ``/healthz`` for the stream processes (``stream mqtt``, ``listen hl7``).

These processes run without the Flask app, so nothing served their counters (stored and
quarantined readings, rescoring failures, predictions, model loads) and an orchestrator
could not tell a wedged consumer from a quiet ward. With ``VITALCAST_WORKER_HTTP_PORT``
set, a small standard-library HTTP server in a daemon thread answers:

- ``GET /healthz``: 200 while each of the process's loops has turned within
  :data:`STALE_AFTER_S`, else 503, so a liveness probe restarts a loop stuck in a hung
  call. The body (JSON) gives the loop's age and whatever the process adds (the MQTT
  consumer: whether the broker connection is up). It holds no patient data and needs no
  credentials: probes have none. A broker that is down does not fail it: a restart would
  not bring the broker back, and paho reconnects by itself.
- ``GET /metrics``: this process's Prometheus counters (not the deployment-wide gauges
  read from the database: the web servers serve those, and two sources would double
  them). It holds counts, not patient data, but it says how busy each ward is: with
  ``VITALCAST_METRICS_TOKEN`` set it demands that bearer token, and without one the server
  may bind only a loopback address (:func:`start_worker_http` refuses the rest).

A scrape or probe never touches the database: a slow database must not fail the probe of
a process that is doing its job (waiting for that database).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from vitalcast.config import Settings
from vitalcast.errors import ConfigError

logger = logging.getLogger(__name__)

# A loop that has not turned for this long is stuck. The MQTT loop turns at least every
# 0.2 s plus one batch's commit (well under a second at 1,000 readings); the MLLP
# scorer's at least every 0.2 s plus one flush.
STALE_AFTER_S = 60.0

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Heartbeat:
    """When the process's main loop last turned (thread-safe: a float assignment)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last = clock()

    def beat(self) -> None:
        self.last = self.clock()

    @property
    def age_s(self) -> float:
        return self.clock() - self.last


class WorkerEndpoint:
    """The WSGI application: ``/healthz`` and ``/metrics``, GET only."""

    def __init__(
        self,
        heartbeats: Sequence[Heartbeat],
        *,
        token: str | None,
        details: Callable[[], dict[str, Any]] | None = None,
        problem: Callable[[], str | None] | None = None,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        self.heartbeats = list(heartbeats)  # every loop the process depends on
        self.token = token
        self.details = details
        # Why the process cannot do its job although its loops turn (None: it can).
        self.problem = problem
        self.stale_after_s = stale_after_s

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz", "/metrics"):
            return _reply(start_response, "404 Not Found", {"error": "no such path"})
        if environ.get("REQUEST_METHOD") != "GET":
            return _reply(start_response, "405 Method Not Allowed", {"error": "GET only"})
        if path == "/healthz":
            return self._health(start_response)
        return self._metrics(environ, start_response)

    def _health(self, start_response: StartResponse) -> Iterable[bytes]:
        age = max(heartbeat.age_s for heartbeat in self.heartbeats)  # the stalest loop
        problem = self.problem() if self.problem is not None else None
        alive = age <= self.stale_after_s and problem is None
        status = "ok" if alive else "stalled" if problem is None else "failing"
        body: dict[str, Any] = {"status": status, "loop_age_s": round(age, 3)}
        if problem is not None:
            body["problem"] = problem
        if self.details is not None:
            body |= self.details()
        return _reply(start_response, "200 OK" if alive else "503 Service Unavailable", body)

    def _metrics(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self.token is not None:
            scheme, _, sent = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                sent.strip().encode(), self.token.encode()
            ):
                return _reply(
                    start_response,
                    "401 Unauthorized",
                    {"error": "send Authorization: Bearer <VITALCAST_METRICS_TOKEN>"},
                    [("WWW-Authenticate", 'Bearer realm="vitalcast-worker"')],
                )
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        payload = generate_latest(REGISTRY)
        start_response(
            "200 OK",
            [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(payload)))],
        )
        return [payload]


def _reply(
    start_response: StartResponse,
    status: str,
    body: dict[str, Any],
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        + (headers or []),
    )
    return [payload]


def _is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address; another host name is not trusted to be one."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _QuietHandler(WSGIRequestHandler):
    """wsgiref prints every request to stderr in its own format; probes every few seconds
    would bury the process's JSON log lines."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """A thread per request: a scraper that stalls mid-request must not hold the probe."""

    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    """The same on an IPv6 address (``::`` in a dual-stack pod)."""

    address_family = socket.AF_INET6


class WorkerHttpServer:
    """The endpoint served from a daemon thread; :meth:`close` stops it."""

    def __init__(self, server: WSGIServer) -> None:
        self.server = server
        self.thread = threading.Thread(
            target=server.serve_forever, name="vitalcast-worker-http", daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_worker_http(
    settings: Settings,
    *heartbeats: Heartbeat,
    details: Callable[[], dict[str, Any]] | None = None,
    problem: Callable[[], str | None] | None = None,
) -> WorkerHttpServer | None:
    """Serve the endpoint when ``VITALCAST_WORKER_HTTP_PORT`` is set (``0``: any free
    port, for tests); None when it is not. ``/healthz`` fails when any of ``heartbeats``
    (one per loop the process depends on) is stale, or ``problem`` names one.

    Checked here, not in :class:`~vitalcast.config.Settings`: the setting may sit in a
    configuration every process shares, and only the stream commands serve it.

    Raises:
        ConfigError: a non-loopback address without ``VITALCAST_METRICS_TOKEN``.
    """
    if settings.worker_http_port is None:
        return None
    if settings.metrics_token is None and not _is_loopback(settings.worker_http_host):
        raise ConfigError(
            "VITALCAST_WORKER_HTTP_HOST is not a loopback address: set"
            " VITALCAST_METRICS_TOKEN, which its /metrics will demand"
        )
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    app = WorkerEndpoint(heartbeats, token=token, details=details, problem=problem)
    server = make_server(
        settings.worker_http_host,
        settings.worker_http_port,
        app,
        server_class=_ThreadingServer6 if ":" in settings.worker_http_host else _ThreadingServer,
        handler_class=_QuietHandler,
    )
    endpoint = WorkerHttpServer(server)
    logger.info(
        "worker endpoint serving /healthz and /metrics",
        extra={"host": settings.worker_http_host, "port": endpoint.port},
    )
    return endpoint
