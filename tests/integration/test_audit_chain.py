"""The audit chain detects a changed, deleted or reordered row.

The database refuses such changes (migration 0005's trigger), so these tests play a
superuser who switches triggers off (``session_replication_role = replica``): the chain
must catch even what the guard cannot stop.
"""

from __future__ import annotations

from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session

from vitalcast.security import audit
from vitalcast.security.tables import AuditEvent


def _fill(session: Session, n: int = 5) -> list[int]:
    ids = []
    for i in range(n):
        row = audit.record(
            session,
            audit.Event(
                f"test.event{i}", "R", actor="user:test", patient_id=f"p{i}", details={"i": i}
            ),
        )
        ids.append(row.id)
    session.commit()
    return ids


def _as_superuser_bypassing_triggers(session: Session) -> None:
    session.execute(text("SET session_replication_role = replica"))


def test_intact_chain_verifies(db_session: Session) -> None:
    _fill(db_session)
    result = audit.verify_chain(db_session)
    assert (result.ok, result.checked) == (True, 5)


def test_changed_row_is_found(db_session: Session) -> None:
    ids = _fill(db_session)
    _as_superuser_bypassing_triggers(db_session)
    db_session.execute(update(AuditEvent).where(AuditEvent.id == ids[2]).values(actor="user:evil"))
    db_session.commit()
    result = audit.verify_chain(db_session)
    assert (result.ok, result.first_broken_id) == (False, ids[2])
    assert result.reason == "row content does not match its hash"


def test_deleted_row_is_found(db_session: Session) -> None:
    ids = _fill(db_session)
    _as_superuser_bypassing_triggers(db_session)
    db_session.execute(delete(AuditEvent).where(AuditEvent.id == ids[1]))
    db_session.commit()
    result = audit.verify_chain(db_session)
    assert (result.ok, result.first_broken_id) == (False, ids[2])


def test_reordered_rows_are_found(db_session: Session) -> None:
    ids = _fill(db_session)
    _as_superuser_bypassing_triggers(db_session)
    rows = {r.id: r for r in db_session.scalars(select(AuditEvent))}
    a, b = rows[ids[1]], rows[ids[3]]
    cols = ("event", "patient_id", "details", "prev_hash", "hash")
    old_a = {c: getattr(a, c) for c in cols}
    old_b = {c: getattr(b, c) for c in cols}
    a.hash = "f" * 64  # free the unique hash while swapping
    db_session.flush()
    for c, v in old_a.items():
        setattr(b, c, v)
    db_session.flush()
    for c, v in old_b.items():
        setattr(a, c, v)
    db_session.commit()
    result = audit.verify_chain(db_session)
    assert (result.ok, result.first_broken_id) == (False, ids[1])
