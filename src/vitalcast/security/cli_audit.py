"""``vitalcast audit verify|export`` and ``vitalcast db harden``: the audit trail's CLI."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click
from sqlalchemy import select

from vitalcast.db.session import create_db_engine, make_session_factory, session_scope
from vitalcast.security import audit
from vitalcast.security.hardening import harden_database
from vitalcast.security.tables import AuditEvent

EXPORT_BATCH = 5000


def _settings(ctx: click.Context) -> Any:
    from vitalcast.cli import get_settings

    return get_settings(ctx)


@click.group("audit")
def audit_group() -> None:
    """Check and export the tamper-evident audit trail (HIPAA 164.312(b))."""


@audit_group.command("verify")
@click.pass_context
def audit_verify(ctx: click.Context) -> None:
    """Walk the hash chain; exit 1 and name the first broken row if any was altered."""
    engine = create_db_engine(_settings(ctx).resolved_database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            result = audit.verify_chain(session)
    finally:
        engine.dispose()
    if result.ok:
        click.echo(f"audit chain intact: {result.checked} events verified")
        return
    click.echo(
        f"audit chain BROKEN at event id {result.first_broken_id}: {result.reason}"
        f" ({result.checked} events before it verified)",
        err=True,
    )
    sys.exit(1)


def _when(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            "use ISO 8601, e.g. 2026-11-28T09:00:00Z", param_hint=name
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def event_dict(row: AuditEvent) -> dict[str, Any]:
    """One audit row as a JSON-ready dict (FHIR AuditEvent-shaped field names)."""
    return {
        "id": row.id,
        "occurred_at": row.occurred_at.isoformat(),
        "event": row.event,
        "action": row.action,
        "outcome": row.outcome,
        "actor": row.actor,
        "role": row.role,
        "patient_id": row.patient_id,
        "resource": row.resource,
        "client_addr": row.client_addr,
        "request_id": row.request_id,
        "details": row.details or {},
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


@audit_group.command("export")
@click.option("--since", help="Only events at or after this time (ISO 8601).")
@click.option("--until", help="Only events before this time (ISO 8601).")
@click.option("--actor", help="Only this actor (the user), e.g. user:alice or api_key:ehr.")
@click.option("--patient", "patient_id", help="Only events about this patient id.")
@click.option(
    "--event", "event_name", help="Only this event type, e.g. patient.viewed, or model.* ."
)
@click.option(
    "--action",
    type=click.Choice(list(audit.ACTIONS)),
    help="Only this FHIR action: C(reate), R(ead), U(pdate), D(elete), E(xecute).",
)
@click.option("--outcome", type=click.Choice(list(audit.OUTCOMES)))
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="File (default: stdout)."
)
@click.pass_context
def audit_export(
    ctx: click.Context,
    since: str | None,
    until: str | None,
    actor: str | None,
    patient_id: str | None,
    event_name: str | None,
    action: str | None,
    outcome: str | None,
    out: Path | None,
) -> None:
    """Write matching events as JSON lines, oldest first; the export is itself audited."""
    selected = audit.AuditFilter(
        actor=actor,
        patient_id=patient_id,
        event=event_name,
        action=action,
        outcome=outcome,
        since=_when(since, "--since"),
        until=_when(until, "--until"),
    )
    query = selected.apply(select(AuditEvent).order_by(AuditEvent.id))
    engine = create_db_engine(_settings(ctx).resolved_database_url)
    count = 0
    try:
        with session_scope(make_session_factory(engine)) as session:
            fh: IO[str] = out.open("w", encoding="utf-8") if out else sys.stdout
            try:
                last_id = 0
                while True:
                    rows = session.scalars(
                        query.where(AuditEvent.id > last_id).limit(EXPORT_BATCH)
                    ).all()
                    if not rows:
                        break
                    for row in rows:
                        fh.write(json.dumps(event_dict(row), sort_keys=True) + "\n")
                    count += len(rows)
                    last_id = rows[-1].id
            finally:
                if out:
                    fh.close()
            audit.record(
                session,
                audit.Event(
                    "audit.exported",
                    "E",
                    actor="cli",
                    resource="AuditEvent",
                    details={"events": count, "filters": selected.describe()},
                ),
            )
    finally:
        engine.dispose()
    click.echo(f"exported {count} audit events" + (f" to {out}" if out else ""), err=True)


@click.command("harden")
@click.option(
    "--app-role",
    default=None,
    help="Create or update this PostgreSQL role for the application: DML on its tables,"
    " SELECT and INSERT only on audit_events. Omit to install only the audit guard.",
)
@click.option(
    "--password-stdin", is_flag=True, help="Read the app role's password from standard input."
)
@click.pass_context
def db_harden(ctx: click.Context, app_role: str | None, password_stdin: bool) -> None:
    """Make the audit table append-only and create the restricted application role.

    Run as the schema owner after every `vitalcast db upgrade` (it is idempotent); then
    point the web tier's VITALCAST_DATABASE_URL at the app role.
    """
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    engine = create_db_engine(_settings(ctx).resolved_database_url)
    try:
        report = harden_database(engine, app_role=app_role, password=password)
    finally:
        engine.dispose()
    for step in report.steps:
        click.echo(f"- {step}")
    if report.app_role and report.role_created:
        click.echo(f"created role {report.app_role}")
    click.echo(f"database hardened ({report.dialect})")
