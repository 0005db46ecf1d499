"""``vitalcast audit verify|anchor|export`` and ``vitalcast db harden``: the audit trail's CLI."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click
from sqlalchemy import select

from vitalcast.clinical.times import TimeOutOfRange, parse_iso
from vitalcast.db.session import create_db_engine, make_session_factory, session_scope
from vitalcast.security import audit
from vitalcast.security.audit_anchor import (
    Anchor,
    AnchorCheck,
    anchor_now,
    chain_failure,
    check_anchors,
    read_anchors,
    recorded_anchors,
)
from vitalcast.security.audit_keys import keyring_from_settings
from vitalcast.security.hardening import harden_database
from vitalcast.security.tables import AuditEvent

EXPORT_BATCH = 5000


def _settings(ctx: click.Context) -> Any:
    from vitalcast.cli import get_settings

    return get_settings(ctx)


@click.group("audit")
def audit_group() -> None:
    """Verify, anchor and export the tamper-evident audit trail (HIPAA 164.312(b)).

    Every event is chained to the one before with HMAC-SHA-256 under VITALCAST_AUDIT_KEY,
    so rows cannot be altered, removed from the middle or re-hashed without the key;
    anchors kept outside the database (VITALCAST_AUDIT_ANCHOR_FILE) catch the deletion of
    the newest events.
    """


@audit_group.command("verify")
@click.option(
    "--anchor",
    "anchor_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Anchor file (JSON lines of `vitalcast audit anchor`) whose heads the chain must"
    " still hold. Default: VITALCAST_AUDIT_ANCHOR_FILE, if set.",
)
@click.option(
    "--anchored-before",
    help="Honour only anchors made before this time (ISO 8601): for a database restored"
    " from a backup taken then, which cannot hold the events anchored later.",
)
@click.pass_context
def audit_verify(ctx: click.Context, anchor_file: Path | None, anchored_before: str | None) -> None:
    """Walk the chain and check it against the anchors; name the first broken row.

    Exit status: 0 intact; 1 a row was altered, removed or re-hashed, is keyed with a key
    id not in VITALCAST_AUDIT_KEY, or an anchored head is missing (truncation); 2 a
    configuration error (no key, unreadable anchor file).
    """
    settings = _settings(ctx)
    keyring = keyring_from_settings(settings)
    anchor_path = anchor_file or settings.audit_anchor_file
    anchors = read_anchors(anchor_path) if anchor_path is not None else None
    cutoff = _when(anchored_before, "--anchored-before")
    if anchors is not None and cutoff is not None:
        anchors = _made_before(anchors, cutoff)
    engine = create_db_engine(settings.resolved_database_url)
    failures = []
    in_chain: AnchorCheck | None = None
    try:
        with session_scope(make_session_factory(engine)) as session:
            chain = audit.verify_chain(session, keyring=keyring)
            anchored = check_anchors(session, anchors, keyring) if anchors is not None else None
            # The anchors the chain recorded: signed, so a rewrite of the whole chain
            # (e.g. as unkeyed legacy rows) that leaves them in place is caught even
            # where anchors go only to a log and no anchor file is given.
            try:
                recorded = recorded_anchors(session)
            except ValueError as exc:
                failures.append(f"audit chain does not match the anchors recorded in it: {exc}")
                recorded = []
            if recorded:
                in_chain = check_anchors(session, recorded, keyring)
    finally:
        engine.dispose()
    if not chain.ok:
        failures.insert(0, chain_failure(chain))
    if anchored is not None and not anchored.ok:
        failures.append(f"audit chain does not match its anchors: {anchored.reason}")
    if in_chain is not None and not in_chain.ok:
        failures.append(
            "audit chain does not match the anchors recorded in it: "
            + (in_chain.reason or "").replace("anchor ", "recorded anchor ", 1)
        )
    if failures:
        for line in failures:
            click.echo(line, err=True)
        sys.exit(1)
    click.echo("\n".join(_intact_report(chain, anchored, in_chain)))


def _made_before(anchors: list[Anchor], cutoff: datetime) -> list[Anchor]:
    """The anchors made before ``cutoff``: after a restore, later ones name events that
    the backup never held, and would (rightly, but uselessly) report a truncation."""
    kept = []
    for anchor in anchors:
        made = _when(anchor.anchored_at, "anchored_at")
        if made is not None and made < cutoff:
            kept.append(anchor)
    return kept


def _intact_report(
    chain: audit.ChainCheck, anchored: AnchorCheck | None, in_chain: AnchorCheck | None = None
) -> list[str]:
    """The lines of a successful verification: counts by format and key, and anchors."""
    lines = [f"audit chain intact: {chain.checked} events verified"]
    if chain.keyed:
        per_key = ", ".join(f"{key_id}: {n}" for key_id, n in sorted(chain.keyed.items()))
        lines.append(f"  keyed (HMAC-SHA-256): {sum(chain.keyed.values())} (by key id: {per_key})")
    if chain.legacy:
        lines.append(
            f"  legacy unkeyed (SHA-256, written before keyed auditing): {chain.legacy}"
            + ("" if chain.keyed else "; no keyed event yet, so they could still be re-hashed")
        )
    if in_chain is not None and in_chain.newest is not None:
        lines.append(f"  anchors: {in_chain.checked} honoured (recorded in the chain)")
    if anchored is None:
        lines.append(
            "  anchors: no anchor file given; deleting the newest events (or the whole"
            " chain with its recorded anchors) would go unnoticed (see `vitalcast audit anchor`)"
        )
    elif anchored.newest is None:
        lines.append("  anchors: none to check yet")
    else:
        newest = anchored.newest
        lines.append(
            f"  anchors: {anchored.checked} honoured; newest: event id {newest.head_id}"
            f" ({newest.rows} events) anchored {newest.anchored_at}"
        )
    return lines


@audit_group.command("anchor")
@click.option(
    "--file",
    "anchor_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append the anchor to this file (append-only / WORM storage, off the database"
    " host). Default: VITALCAST_AUDIT_ANCHOR_FILE; without either it is only printed.",
)
@click.option(
    "--full",
    is_flag=True,
    help="Walk the whole chain and check every anchor in the file, not only the events"
    " since the newest anchor.",
)
@click.pass_context
def audit_anchor(ctx: click.Context, anchor_file: Path | None, full: bool) -> None:
    """Record the chain's head outside the database, signed with the audit key.

    Checks the newest anchor (the file's, or the one the chain records of the last
    anchoring) and verifies the events after it, or with --full the whole chain and
    every anchor in the file; then appends one JSON line (head event id and hash, number
    of events, time, key id, HMAC) to the anchor file, prints it on standard output for
    log shipping (syslog, SIEM) and records it in the chain as an audit.anchored event.
    Run it on a schedule: `vitalcast audit verify` then detects deleted newest events
    back to the latest anchor; run `audit verify` (a full walk) daily as well. Exit
    status: 0 anchored; 1 the chain is broken or no longer holds an anchor it checked
    (nothing appended); 2 a configuration error.
    """
    settings = _settings(ctx)
    keyring = keyring_from_settings(settings)
    path = anchor_file or settings.audit_anchor_file
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            outcome = anchor_now(session, keyring, path, full=full, agent=audit.CLI)
    finally:
        engine.dispose()
    if outcome.anchor is None or outcome.check is None:
        click.echo(f"{outcome.failure}; no anchor written", err=True)
        sys.exit(1)
    click.echo(outcome.anchor.to_json())
    check = outcome.check
    walked = (
        f"{check.walked} events verified after the anchor at event id {check.start_id}"
        if check.start_id
        else f"{check.walked} events verified (whole chain)"
    )
    where = f"appended to {path}" if path else "not stored: no anchor file configured"
    click.echo(f"anchored event id {outcome.anchor.head_id}; {walked}; {where}", err=True)


def _when(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = parse_iso(value, name)
    except TimeOutOfRange as exc:  # the shared clinical year rule, as for every time input
        raise click.BadParameter(str(exc), param_hint=name) from None
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
        "chain_version": row.chain_version,
        "key_id": row.key_id,
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
            fh: IO[str] = _open_out(out) if out else sys.stdout
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


def _open_out(path: Path) -> IO[str]:
    """The export file, or a usage error naming it (a missing folder, no permission)."""
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(
            f"cannot write {path}: {exc.strerror or type(exc).__name__}", param_hint="--out"
        ) from None


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
