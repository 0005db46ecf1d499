"""The database refuses to change audit rows; the CLI verifies and exports the chain.

Against real PostgreSQL: the trigger of migration 0005 rejects UPDATE and DELETE for any
role, and ``vitalcast db harden`` creates an application role that lacks the privileges
altogether while still doing its ordinary work.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, delete, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from vitalcast.cli import main
from vitalcast.config import Settings
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.security import audit
from vitalcast.security.hardening import harden_database
from vitalcast.security.tables import AuditEvent, User


def _fill(session: Session, n: int = 4) -> list[int]:
    ids = [
        audit.record(
            session,
            audit.Event(
                "patient.viewed", "R", actor=f"user:u{i % 2}", patient_id=f"p{i}", details={"i": i}
            ),
        ).id
        for i in range(n)
    ]
    session.commit()
    return ids


@pytest.mark.parametrize("statement", ["update", "delete"])
def test_trigger_refuses_changes_even_for_the_owner(db_session: Session, statement: str) -> None:
    ids = _fill(db_session)
    change = (
        update(AuditEvent).where(AuditEvent.id == ids[1]).values(actor="user:evil")
        if statement == "update"
        else delete(AuditEvent).where(AuditEvent.id == ids[1])
    )
    with pytest.raises(DBAPIError, match="audit_events is append-only"):
        db_session.execute(change)
    db_session.rollback()
    assert audit.verify_chain(db_session).ok
    assert db_session.scalar(select(AuditEvent.actor).where(AuditEvent.id == ids[1])) == "user:u1"


def test_sqlite_demo_database_is_guarded_too(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'demo.db'}")
    upgrade_database(engine)
    with Session(engine) as session:
        ids = _fill(session)
        with pytest.raises(DBAPIError, match="append-only: DELETE refused"):
            session.execute(delete(AuditEvent).where(AuditEvent.id == ids[0]))
        session.rollback()
        with pytest.raises(DBAPIError, match="append-only: UPDATE refused"):
            session.execute(update(AuditEvent).values(outcome="success"))
    engine.dispose()


@pytest.fixture
def app_role(pg_engine: Engine) -> Iterator[tuple[str, str]]:
    """A hardened app role on the test database; (role, URL to connect as it)."""
    role = f"vc_app_{uuid.uuid4().hex[:8]}"
    report = harden_database(pg_engine, app_role=role, password="not-used-with-trust-auth")
    assert (report.role_created, report.guard_installed) == (True, True)
    url = make_url(str(pg_engine.url.render_as_string(hide_password=False))).set(
        username=role, password="not-used-with-trust-auth"
    )
    yield role, url.render_as_string(hide_password=False)
    with pg_engine.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{role}"'))
        conn.execute(text(f'DROP ROLE "{role}"'))


def test_app_role_cannot_update_or_delete_audit_rows(
    pg_engine: Engine, app_role: tuple[str, str]
) -> None:
    role, url = app_role
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            assert session.scalar(text("SELECT current_user")) == role
            ids = _fill(session)  # the app can append (advisory lock, insert, select)
            session.add(User(username="u", password_hash="x", role="nurse"))
            session.commit()  # and do its ordinary DML
            for change in (
                update(AuditEvent).where(AuditEvent.id == ids[0]).values(outcome="failure"),
                delete(AuditEvent).where(AuditEvent.id == ids[0]),
                text("TRUNCATE audit_events"),
                text("DROP TRIGGER audit_events_append_only ON audit_events"),
                text("UPDATE alembic_version SET version_num = '0001'"),
            ):
                with pytest.raises(DBAPIError) as caught:
                    session.execute(change)
                session.rollback()
                assert "permission denied" in str(caught.value) or "must be owner" in str(
                    caught.value
                ), change
            assert audit.verify_chain(session).ok
    finally:
        engine.dispose()


def test_harden_is_idempotent_and_refuses_a_privileged_role(
    pg_engine: Engine, app_role: tuple[str, str]
) -> None:
    role, _ = app_role
    again = harden_database(pg_engine, app_role=role)
    assert again.role_created is False
    from vitalcast.errors import ConfigError

    with pytest.raises(ConfigError, match="is privileged"):
        harden_database(pg_engine, app_role="postgres")
    with pytest.raises(ConfigError, match="lower-case"):
        harden_database(pg_engine, app_role='x"; DROP TABLE users; --')


def _invoke(settings: Settings, args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args, obj={"settings": settings})
    return result.exit_code, result.stdout, result.stderr


def test_audit_verify_cli_reports_first_broken_link(
    settings: Settings, db_session: Session
) -> None:
    ids = _fill(db_session)
    code, out, _ = _invoke(settings, ["audit", "verify"])
    assert (code, out.splitlines()[:2]) == (
        0,
        [
            "audit chain intact: 4 events verified",
            "  keyed (HMAC-SHA-256): 4 (by key id: test1: 4)",
        ],
    )
    db_session.execute(text("SET session_replication_role = replica"))  # a superuser's tampering
    db_session.execute(update(AuditEvent).where(AuditEvent.id == ids[2]).values(patient_id="p9"))
    db_session.commit()
    code, _, err = _invoke(settings, ["audit", "verify"])
    assert code == 1
    assert f"BROKEN at event id {ids[2]}: row content does not match its HMAC" in err


def test_audit_export_cli_filters_and_is_audited(
    settings: Settings, db_session: Session, tmp_path: Path
) -> None:
    _fill(db_session)
    out = tmp_path / "audit.jsonl"
    code, _, err = _invoke(settings, ["audit", "export", "--actor", "user:u1", "--out", str(out)])
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["patient_id"] for e in lines] == ["p1", "p3"]
    assert {"hash", "prev_hash", "occurred_at", "client_addr", "details"} <= set(lines[0])
    exported = db_session.scalars(
        select(AuditEvent).where(AuditEvent.event == "audit.exported")
    ).one()
    assert exported.details == {"events": 2, "filters": {"actor": "user:u1"}}
    code, _, err = _invoke(settings, ["audit", "export", "--since", "yesterday"])
    assert code == 2
    assert "ISO 8601" in err
    # A folder that does not exist is a usage error naming --out, not "internal error".
    missing = tmp_path / "no-such-folder" / "audit.jsonl"
    code, _, err = _invoke(settings, ["audit", "export", "--out", str(missing)])
    assert code == 2, err
    assert "--out" in err
    assert "No such file or directory" in err


def test_db_harden_cli(settings: Settings) -> None:
    code, out, err = _invoke(settings, ["db", "harden"])
    assert code == 0, err
    assert "audit_events rejects UPDATE and DELETE" in out
