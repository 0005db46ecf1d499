"""Commands for message sources: ``ingest fhir``, ``ingest hl7``, ``listen hl7``, ``stream mqtt``.

Thin: parse options, call a service, print the report. Exit 0 when the input was read
(even with quarantined items); exit 2, as every ``vitalcast ingest`` command does for
input it cannot read (docs/ingestion-files.md), when some file or message could not be
read at all: each is named on stderr in one line, after the report of everything else,
which was stored.

``ingest fhir`` and ``ingest hl7`` then rescore the stays in progress whose data they
changed (unless ``--no-rescore``), after the import's commits. A stay that could
not be scored is reported and the command exits 3 (when all input was read): its data is
stored, but the ward shows a risk older than it. Exit 2 wins over 3: the input comes first.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from datetime import tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.errors import ConfigError
from vitalcast.security import audit

if TYPE_CHECKING:
    from vitalcast.config import Settings
    from vitalcast.ingest.units import RunResult
    from vitalcast.security.crypto import FieldCipher
    from vitalcast.serving.stream_scoring import ImportRescoring

logger = logging.getLogger(__name__)


def _context(ctx: click.Context) -> tuple[Any, sessionmaker[Session], Any]:
    # Imported here: vitalcast.cli imports this module while registering commands.
    from vitalcast.cli import get_settings
    from vitalcast.db.session import create_db_engine, make_session_factory
    from vitalcast.security.crypto import cipher_from_settings

    settings = get_settings(ctx)
    engine = create_db_engine(settings.resolved_database_url)
    return settings, make_session_factory(engine), cipher_from_settings(settings)


def _long_running(settings: Settings) -> None:
    """Set up logging for a process that runs until stopped: JSON lines (per
    ``VITALCAST_LOG_JSON``) on stderr at ``VITALCAST_LOG_LEVEL``, as the web server logs,
    so an orchestrator's log pipeline can parse them; stdout keeps the command's own
    lines."""
    from vitalcast.logging import configure_logging

    configure_logging(level=settings.log_level, json_lines=settings.log_json, to="stderr")


def _timezone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"VITALCAST_HL7_TIMEZONE: unknown time zone {name!r}") from None


def _interrupt(*_: object) -> None:
    """SIGTERM stops like Ctrl-C. A message cut mid-way was never ACKed: the sender
    resends it, and the dedup keys make the resend a no-op if it had been committed."""
    raise KeyboardInterrupt


def _finish(result: RunResult, as_json: bool, rescoring: ImportRescoring) -> None:
    """Print the report, then one ``error:`` line per unreadable unit (exit 2 if any) and
    one for stays not rescored (exit 3, when all input was read)."""
    if as_json:
        extra = {"errors": result.errors, "rescored": rescoring.to_dict()}
        click.echo(json.dumps(result.report.to_dict() | extra, indent=2))
    else:
        click.echo(result.report.render())
        click.echo(_rescoring_line(rescoring))
        for error in result.errors:
            click.echo(f"error: {error}", err=True)
    if rescoring.failed:
        click.echo(
            f"error: stays not rescored: {rescoring.failed} (see the log); their data is"
            " stored, and the ward shows their previous risk until their next data or the"
            " next champion change",
            err=True,
        )
    if result.errors:
        sys.exit(2)
    if rescoring.failed:
        sys.exit(3)


_SKIPPED = {
    "no_champion": "no champion to score with",
    "champion_not_loaded": "the champion could not be loaded (see the log)",
    "no_new_data": "no new observations, and no stay or patient changed",
    "not_requested": "--no-rescore",
}


def _rescoring_line(rescoring: ImportRescoring) -> str:
    """The report's last line: how many stays in progress were rescored, and why none."""
    line = f"stays in progress rescored with the champion: {rescoring.stays}"
    if rescoring.skipped is not None:
        line += f" ({_SKIPPED[rescoring.skipped]})"
    return line


def _rescore(
    settings: Settings,
    factory: sessionmaker[Session],
    cipher: FieldCipher,
    result: RunResult,
    *,
    rescore: bool,
    source: str,
) -> ImportRescoring:
    """Rescore the stays whose data the import changed (closes the pool). The ids
    come from the import's report, as the stream processes get theirs: no re-query."""
    from vitalcast.serving.stream_scoring import ImportRescoring, rescore_after_import

    if not rescore:
        return ImportRescoring(skipped="not_requested")
    touched = result.report.touched_encounters
    return rescore_after_import(settings, factory, cipher, touched, source=source)


_NO_RESCORE = click.option(
    "--no-rescore",
    "no_rescore",
    is_flag=True,
    help="Store only: do not rescore the stays in progress the import touched (bulk"
    " historical loads). By default they are rescored with the champion after the import.",
)


@click.command("fhir")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_NO_RESCORE
@click.pass_context
def ingest_fhir(
    ctx: click.Context, paths: tuple[Path, ...], as_json: bool, no_rescore: bool
) -> None:
    """FHIR R4 Bundles (.json), Bulk Data files (.ndjson), folders or .tar.gz of them.

    Then rescores the stays in progress whose data it changed (exit 3 if some fail).
    """
    from vitalcast.ingest.sources.fhir import SOURCE, iter_units
    from vitalcast.ingest.units import ingest_units

    settings, factory, cipher = _context(ctx)
    location = ", ".join(p.name for p in paths)[:500]
    try:
        result = ingest_units(
            factory,
            iter_units(list(paths)),
            source=SOURCE,
            location=location,
            cipher=cipher,
            agent=audit.CLI,
        )
        rescoring = _rescore(
            settings, factory, cipher, result, rescore=not no_rescore, source=SOURCE
        )
    finally:
        factory.kw["bind"].dispose()  # close the pool's connections, not leave them to GC
    _finish(result, as_json, rescoring)


@click.command("hl7")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_NO_RESCORE
@click.pass_context
def ingest_hl7(
    ctx: click.Context, paths: tuple[Path, ...], as_json: bool, no_rescore: bool
) -> None:
    """HL7 v2 files (ADT^A01/A03/A08/A11/A13, ORU^R01), one or many messages each.

    Then rescores the stays in progress whose data it changed (exit 3 if some fail).
    """
    from vitalcast.ingest.sources.hl7v2 import SOURCE, iter_file_messages
    from vitalcast.ingest.units import ingest_units

    settings, factory, cipher = _context(ctx)
    units = iter_file_messages(
        list(paths), pseudonym=cipher.mrn_hash, tz=_timezone(settings.hl7_timezone)
    )
    location = ", ".join(p.name for p in paths)[:500]
    try:
        result = ingest_units(
            factory, units, source=SOURCE, location=location, cipher=cipher, agent=audit.CLI
        )
        rescoring = _rescore(
            settings, factory, cipher, result, rescore=not no_rescore, source=SOURCE
        )
    finally:
        factory.kw["bind"].dispose()
    _finish(result, as_json, rescoring)


@click.group("listen")
def listen() -> None:
    """Network listeners that receive clinical messages."""


@listen.command("hl7")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=None, help="TCP port (default VITALCAST_MLLP_PORT).")
@click.pass_context
def listen_hl7(ctx: click.Context, host: str, port: int | None) -> None:
    """Receive HL7 v2 over MLLP; ACK each message after it is committed.

    Takes ADT^A01/A03/A08/A11/A13 and ORU^R01. After the ACK, the stays a message stored
    results for or put back in progress (A13) are rescored with the champion
    (each at most once per VITALCAST_STREAM_RESCORE_INTERVAL_S) and announced to the wards.
    With VITALCAST_WORKER_HTTP_PORT set, serves GET /healthz and GET /metrics there. Logs
    to stderr (JSON lines, per VITALCAST_LOG_JSON).
    """
    from vitalcast.ingest.mllp import MessageHandler, MllpServer
    from vitalcast.ingest.sources.hl7v2 import SOURCE
    from vitalcast.monitoring.worker_http import start_worker_http
    from vitalcast.serving.stream_scoring import open_stream_scorer

    settings, factory, cipher = _context(ctx)
    _long_running(settings)
    handler = MessageHandler(
        factory,
        cipher,
        tz=_timezone(settings.hl7_timezone),
        max_bytes=settings.mllp_max_message_bytes,
    )
    scorer = open_stream_scorer(settings, factory, cipher, source=SOURCE)
    scorer.catch_up()  # stays left unscored by a previous run that was killed
    server = MllpServer((host, port or settings.mllp_port), handler, scorer=scorer)
    scorer.start_background()
    # Healthy while both loops turn: the one accepting connections, the one scoring.
    endpoint = start_worker_http(settings, server.heartbeat, scorer.heartbeat)
    signal.signal(signal.SIGTERM, _interrupt)
    click.echo(f"listening for HL7 v2 (MLLP) on {host}:{server.port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if endpoint is not None:
            endpoint.close()
        scorer.close()


@click.group("stream")
def stream() -> None:
    """Streaming consumers of device data."""


@stream.command("mqtt")
@click.option("--url", default=None, help="Broker URL (default VITALCAST_MQTT_URL).")
@click.option("--client-id", default=None, help="Client id (default VITALCAST_MQTT_CLIENT_ID).")
@click.option(
    "--topic-prefix",
    default="vitalcast/devices",
    show_default=True,
    help="Topics are PREFIX/{device_id}/observations.",
)
@click.option(
    "--idle-exit",
    type=float,
    default=None,
    help="Exit after this many seconds without messages (batch jobs, benchmarks).",
)
@click.pass_context
def stream_mqtt(
    ctx: click.Context,
    url: str | None,
    client_id: str | None,
    topic_prefix: str,
    idle_exit: float | None,
) -> None:
    """Consume device observations (QoS 1, persistent session, ack after commit).

    After each commit and its acks, the stays it stored readings for are rescored with the
    champion (each at most once per VITALCAST_STREAM_RESCORE_INTERVAL_S) and announced to
    the wards.
    With VITALCAST_WORKER_HTTP_PORT set, serves GET /healthz and GET /metrics there. Logs
    to stderr (JSON lines, per VITALCAST_LOG_JSON).
    """
    import threading

    from vitalcast.ingest.mqtt import (
        SOURCE,
        DeviceStreamConsumer,
        MqttConfig,
        SubscriptionRefused,
        parse_mqtt_url,
    )
    from vitalcast.monitoring.worker_http import start_worker_http
    from vitalcast.serving.stream_scoring import open_stream_scorer

    settings, factory, cipher = _context(ctx)
    _long_running(settings)
    url = url or settings.mqtt_url
    if not url:
        raise ConfigError("VITALCAST_MQTT_URL: no broker configured (or pass --url)")
    config = MqttConfig(
        **parse_mqtt_url(url),
        client_id=client_id or settings.mqtt_client_id,
        topic_prefix=topic_prefix,
        batch_size=settings.mqtt_batch_size,
        batch_wait_s=settings.mqtt_batch_wait_ms / 1000,
        session_expiry_s=settings.mqtt_session_expiry_s,
    )
    consumer = DeviceStreamConsumer(factory, cipher, config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        consumer.connect_check()
    except SubscriptionRefused as exc:
        raise ConfigError(f"VITALCAST_MQTT_URL: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"VITALCAST_MQTT_URL: cannot reach the broker ({exc})") from None
    click.echo(f"consuming {config.topic} from {config.host}:{config.port}", err=True)
    # Loaded after the line above (tools wait for it): messages queue meanwhile.
    consumer.scorer = open_stream_scorer(settings, factory, cipher, source=SOURCE)
    consumer.scorer.catch_up()  # stays left unscored by a previous run that was killed
    endpoint = start_worker_http(
        settings,
        consumer.scorer.heartbeat,  # the loop flushes the scorer at least every 0.2 s
        details=lambda: {"broker_connected": consumer.client.is_connected()},
        problem=lambda: f"subscription refused ({consumer.refusal})" if consumer.refusal else None,
    )
    try:
        stats = consumer.run(stop, idle_exit_s=idle_exit)
    finally:
        if endpoint is not None:
            endpoint.close()
        consumer.scorer.close()  # scores the stays still waiting, then closes the pool
    click.echo(f"stopped after {stats.messages} messages in {stats.batches} batches", err=True)
    if consumer.scorer.stats.failed:
        click.echo(
            f"stays not rescored at a first attempt: {consumer.scorer.stats.failed} (retried)",
            err=True,
        )
    click.echo(stats.report.render())
