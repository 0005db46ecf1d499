"""Database hardening: a restricted application role and the append-only audit guard.

HIPAA 164.312(b) and (c)(1) ask that audit records cannot be altered or destroyed. Two
layers do that on PostgreSQL, independently of Alembic:

1. a trigger that rejects UPDATE and DELETE on ``audit_events`` for every role (also
   installed by migration 0005; re-installed here idempotently, since a batch-mode table
   rebuild on SQLite would drop it);
2. an application role that holds SELECT and INSERT on ``audit_events`` but no UPDATE,
   DELETE or TRUNCATE, and ordinary DML elsewhere. It owns nothing, so it can neither
   drop the trigger nor alter the schema; migrations run as the owner.

The hash chain (``vitalcast audit verify``) still detects what only a database superuser
could do around both layers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, text

from vitalcast.errors import ConfigError

logger = logging.getLogger(__name__)

_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

PG_GUARD = (
    """
    CREATE OR REPLACE FUNCTION vitalcast_audit_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    "DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events",
    "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events"
    " FOR EACH ROW EXECUTE FUNCTION vitalcast_audit_append_only()",
)
SQLITE_GUARD = (
    "DROP TRIGGER IF EXISTS audit_events_no_update",
    "DROP TRIGGER IF EXISTS audit_events_no_delete",
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events"
    " BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END",
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events"
    " BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused'); END",
)


@dataclass
class HardenReport:
    """What :func:`harden_database` did, for the CLI summary."""

    dialect: str
    guard_installed: bool = False
    app_role: str | None = None
    role_created: bool = False
    steps: list[str] = field(default_factory=list)


def install_audit_guard(conn: Connection) -> None:
    """(Re-)install the trigger that rejects UPDATE/DELETE on audit_events."""
    statements = PG_GUARD if conn.dialect.name == "postgresql" else SQLITE_GUARD
    for statement in statements:
        conn.execute(text(statement))


def harden_database(
    engine: Engine, *, app_role: str | None, password: str | None = None
) -> HardenReport:
    """Install the audit guard and, on PostgreSQL, create or update the app role.

    Must run as the owner of the schema (the role that ran ``vitalcast db upgrade``).

    Raises:
        ConfigError: a bad role name, not connected as the owner, or the app role is
            privileged (superuser or owner), which would defeat the restriction.
    """
    report = HardenReport(dialect=engine.dialect.name)
    with engine.begin() as conn:
        if report.dialect == "postgresql":
            _check_owner(conn)
        install_audit_guard(conn)
        report.guard_installed = True
        report.steps.append("audit_events rejects UPDATE and DELETE (trigger)")
        if report.dialect != "postgresql" or app_role is None:
            return report
        if not _ROLE_NAME.match(app_role):
            raise ConfigError(
                f"--app-role {app_role!r}: use lower-case letters, digits and underscores"
            )
        report.app_role = app_role
        report.role_created = _ensure_role(conn, app_role, password)
        _grant(conn, app_role)
        report.steps.append(
            f"role {app_role}: DML on application tables; SELECT, INSERT only on audit_events;"
            " SELECT only on alembic_version"
        )
    logger.info("database hardened", extra={"app_role": app_role, "dialect": report.dialect})
    return report


def _check_owner(conn: Connection) -> None:
    row = conn.execute(
        text(
            "SELECT t.tableowner, current_user,"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            " FROM pg_tables t WHERE t.tablename = 'audit_events'"
            " AND t.schemaname = current_schema()"
        )
    ).first()
    if row is None:
        raise ConfigError("no audit_events table here: run `vitalcast db upgrade` first")
    owner, user, superuser = row
    if owner != user and not superuser:
        raise ConfigError(
            f"connected as {user}, but the schema belongs to {owner}: run `vitalcast db"
            " harden` with the owner's VITALCAST_DATABASE_URL"
        )


def _ensure_role(conn: Connection, role: str, password: str | None) -> bool:
    existing = conn.execute(
        text("SELECT rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = :r"),
        {"r": role},
    ).first()
    owns = conn.scalar(
        text(
            "SELECT count(*) FROM pg_tables WHERE tableowner = :r AND schemaname = current_schema()"
        ),
        {"r": role},
    )
    if existing is not None and (any(existing) or owns):
        raise ConfigError(
            f"role {role} is privileged (superuser, CREATEROLE, BYPASSRLS or table owner);"
            " choose a dedicated role for the application"
        )
    quoted = conn.dialect.identifier_preparer.quote(role)
    created = existing is None
    if created:
        conn.execute(text(f"CREATE ROLE {quoted} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"))
    if password is not None:
        conn.execute(text(f"ALTER ROLE {quoted} PASSWORD {_literal(conn, password)}"))
    return created


def _literal(conn: Connection, value: str) -> str:
    """A safely quoted SQL string literal (utility statements take no bind parameters)."""
    from psycopg import sql

    raw = conn.connection.driver_connection
    return sql.Literal(value).as_string(raw)


def _grant(conn: Connection, role: str) -> None:
    quoted = conn.dialect.identifier_preparer.quote(role)
    schema = conn.dialect.identifier_preparer.quote(
        str(conn.scalar(text("SELECT current_schema()")))
    )
    database = conn.dialect.identifier_preparer.quote(
        str(conn.scalar(text("SELECT current_database()")))
    )
    for statement in (
        f"GRANT CONNECT ON DATABASE {database} TO {quoted}",
        f"GRANT USAGE ON SCHEMA {schema} TO {quoted}",
        f"REVOKE CREATE ON SCHEMA {schema} FROM {quoted}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {quoted}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {quoted}",
        f"REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON audit_events FROM {quoted}",
        "REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM PUBLIC",
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM {quoted}",
        # Tables added by later migrations get the same DML; re-run `db harden` after each
        # upgrade so that audit restrictions are re-applied too.
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema}"
        f" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {quoted}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {quoted}",
    ):
        conn.execute(text(statement))
