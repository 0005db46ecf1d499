"""The audit chain detects a changed, deleted, reordered, re-hashed or truncated trail.

The database refuses such changes (migration 0005's trigger), so these tests play a
superuser who switches triggers off (``session_replication_role = replica``): the chain
must catch even what the guard cannot stop. That superuser can also recompute hashes,
but does not hold ``VITALCAST_AUDIT_KEY``; deleting the newest rows is caught by the
anchors ``vitalcast audit anchor`` keeps outside the database.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner
from pydantic import SecretStr
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.orm import Session

from tests.services import DatabaseFactory
from vitalcast.cli import main
from vitalcast.config import Settings
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.security import audit, audit_keys
from vitalcast.security.audit_keys import AuditKeyring
from vitalcast.security.tables import AuditEvent

KEY_OLD = "old:" + base64.b64encode(b"o" * 32).decode()
KEY_NEW = "new:" + base64.b64encode(b"n" * 32).decode()
KEY_ATTACKER = "test1:" + base64.b64encode(b"x" * 32).decode()  # same id, other key


def _fill(session: Session, n: int = 5, start: int = 0) -> list[int]:
    ids = []
    for i in range(start, start + n):
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


def _event(row: AuditEvent) -> audit.Event:
    return audit._event_of(row)


def _rehash_from(session: Session, start_id: int, digest: Callable[[str, AuditEvent], str]) -> None:
    """Re-link and re-hash every row from ``start_id`` on, as a forger would."""
    _as_superuser_bypassing_triggers(session)
    prev = session.scalar(
        select(AuditEvent.hash).where(AuditEvent.id < start_id).order_by(AuditEvent.id.desc())
    )
    prev = prev or audit.GENESIS
    for row in session.scalars(
        select(AuditEvent).where(AuditEvent.id >= start_id).order_by(AuditEvent.id)
    ).all():
        row.prev_hash = prev
        row.hash = digest(prev, row)
        session.flush()
        prev = row.hash
    session.commit()


def _invoke(settings: Settings, args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args, obj={"settings": settings})
    return result.exit_code, result.stdout, result.stderr


def _with_key(settings: Settings, key: str, **more: object) -> Settings:
    return settings.model_copy(update={"audit_key": SecretStr(key), **more})


def test_intact_chain_verifies(db_session: Session) -> None:
    _fill(db_session)
    result = audit.verify_chain(db_session)
    assert (result.ok, result.checked, result.legacy, result.keyed) == (True, 5, 0, {"test1": 5})
    head = db_session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
    assert head is not None
    assert (head.chain_version, head.key_id) == (audit.FORMAT_KEYED, "test1")
    assert (result.head_id, result.head_hash) == (head.id, head.hash)


def test_changed_row_is_found(db_session: Session) -> None:
    ids = _fill(db_session)
    _as_superuser_bypassing_triggers(db_session)
    db_session.execute(update(AuditEvent).where(AuditEvent.id == ids[2]).values(actor="user:evil"))
    db_session.commit()
    result = audit.verify_chain(db_session)
    assert (result.ok, result.first_broken_id) == (False, ids[2])
    assert result.reason is not None
    assert result.reason.startswith("row content does not match its HMAC")


def test_a_hash_edited_to_any_text_is_found_not_a_crash(db_session: Session) -> None:
    """The verifier compares MACs in constant time; a stored hash edited to text that is
    not ASCII broke that comparison (TypeError) instead of being reported."""
    ids = _fill(db_session)
    _as_superuser_bypassing_triggers(db_session)
    db_session.execute(update(AuditEvent).where(AuditEvent.id == ids[1]).values(hash="é" * 64))
    db_session.commit()
    result = audit.verify_chain(db_session)
    assert (result.ok, result.first_broken_id) == (False, ids[1])


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


def test_rewritten_rows_rehashed_with_plain_sha256_fail(
    settings: Settings, db_session: Session
) -> None:
    """The reviewer's forgery: change a row, then re-hash the rest of the chain with the
    project's own (unkeyed) digest. The old chain accepted it; the keyed one does not."""
    ids = _fill(db_session)
    _as_superuser_bypassing_triggers(db_session)
    db_session.execute(update(AuditEvent).where(AuditEvent.id == ids[2]).values(actor="user:evil"))
    _rehash_from(
        db_session, ids[2], lambda prev, row: audit._digest(prev, row.occurred_at, _event(row))
    )
    code, out, err = _invoke(settings, ["audit", "verify"])
    assert code == 1, out
    assert f"BROKEN at event id {ids[2]}: row content does not match its HMAC" in err
    assert "p2" not in err
    assert "user:evil" not in err


def test_forged_legacy_rows_after_keyed_rows_fail(db_session: Session) -> None:
    """Passing the forged rows off as pre-0010 (format 1) rows does not help either."""
    ids = _fill(db_session)
    _as_superuser_bypassing_triggers(db_session)
    db_session.execute(
        update(AuditEvent)
        .where(AuditEvent.id >= ids[3])
        .values(chain_version=audit.FORMAT_LEGACY, key_id=None)
    )
    _rehash_from(
        db_session, ids[3], lambda prev, row: audit._digest(prev, row.occurred_at, _event(row))
    )
    result = audit.verify_chain(db_session)
    assert (result.ok, result.first_broken_id) == (False, ids[3])
    assert result.reason == "unkeyed (legacy) row after keyed rows: written without the audit key"


def test_rows_rehashed_with_a_wrong_key_fail(settings: Settings, db_session: Session) -> None:
    ids = _fill(db_session)
    attacker = AuditKeyring.from_string(KEY_ATTACKER)
    _rehash_from(
        db_session,
        ids[1],
        lambda prev, row: attacker.mac(
            "test1", audit._keyed_message(prev, row.occurred_at, _event(row), "test1")
        ),
    )
    code, _, err = _invoke(settings, ["audit", "verify"])
    assert code == 1
    assert f"BROKEN at event id {ids[1]}: row content does not match its HMAC" in err


def test_unknown_key_id_fails_clearly(settings: Settings, db_session: Session) -> None:
    audit_keys.install(AuditKeyring.from_string(KEY_OLD))
    ids = _fill(db_session)
    code, _, err = _invoke(settings, ["audit", "verify"])  # keyring: test1 only
    assert code == 1
    assert (
        f"BROKEN at event id {ids[0]}: unknown audit key id 'old' (not in VITALCAST_AUDIT_KEY)"
        in err
    )


def test_rotated_keys_verify_while_the_old_id_is_kept(
    settings: Settings, db_session: Session
) -> None:
    audit_keys.install(AuditKeyring.from_string(KEY_OLD))
    _fill(db_session, 3)
    rotated = _with_key(settings, f"{KEY_NEW},{KEY_OLD}")
    code, _, _ = _invoke(rotated, ["audit", "export", "--out", "/dev/null"])  # audited: new key
    assert code == 0
    audit_keys.install(AuditKeyring.from_string(f"{KEY_NEW},{KEY_OLD}"))
    _fill(db_session, 2, start=3)
    rows = db_session.scalars(select(AuditEvent.key_id).order_by(AuditEvent.id)).all()
    assert rows == ["old"] * 3 + ["new"] * 3
    code, out, _ = _invoke(rotated, ["audit", "verify"])
    assert code == 0, out
    assert "audit chain intact: 6 events verified" in out
    assert "keyed (HMAC-SHA-256): 6 (by key id: new: 3, old: 3)" in out
    code, _, err = _invoke(_with_key(settings, KEY_NEW), ["audit", "verify"])  # old id dropped
    assert code == 1
    assert "unknown audit key id 'old'" in err


def test_legacy_unkeyed_prefix_then_keyed_rows_verify_and_are_reported(
    databases: DatabaseFactory, settings: Settings
) -> None:
    """Rows written before revision 0010 (plain SHA-256) keep verifying after the upgrade;
    the first keyed row links to the last of them, which its HMAC then pins."""
    url = databases.empty()
    engine = create_db_engine(url)
    try:
        upgrade_database(engine, "0009")  # the schema before 0010
        with engine.begin() as conn:  # what the code before 0010 wrote
            prev = audit.GENESIS
            for i in range(3):
                ev = audit.Event(f"old.event{i}", "R", actor="user:old", patient_id=f"p{i}")
                at = datetime(2026, 1, 1, 12, i, tzinfo=UTC)
                digest = audit._digest(prev, at, ev)
                conn.execute(
                    insert(AuditEvent.__table__).values(
                        occurred_at=at,
                        event=ev.event,
                        action=ev.action,
                        outcome=ev.outcome,
                        actor=ev.actor,
                        patient_id=ev.patient_id,
                        details=None,
                        prev_hash=prev,
                        hash=digest,
                    )
                )
                prev = digest
        upgrade_database(engine)
        with Session(engine) as session:
            _fill(session, 2)
            rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
            assert [r.chain_version for r in rows] == [1, 1, 1, 2, 2]
            assert rows[3].prev_hash == rows[2].hash
        on_copy = settings.model_copy(update={"database_url": url})
        code, out, _ = _invoke(on_copy, ["audit", "verify"])
        assert code == 0, out
        assert "audit chain intact: 5 events verified" in out
        assert "legacy unkeyed (SHA-256, written before keyed auditing): 3" in out
        # Rewriting the legacy prefix, even re-hashed, breaks the first keyed row's link.
        with Session(engine) as session:
            _as_superuser_bypassing_triggers(session)
            session.execute(
                update(AuditEvent).where(AuditEvent.id == rows[1].id).values(actor="user:evil")
            )
            _rehash_from(
                session,
                rows[1].id,
                lambda p, row: (
                    audit._digest(p, row.occurred_at, _event(row))
                    if row.chain_version == 1
                    else row.hash
                ),
            )
        code, _, err = _invoke(on_copy, ["audit", "verify"])
        assert code == 1
        assert f"BROKEN at event id {rows[3].id}: row content does not match its HMAC" in err
    finally:
        engine.dispose()


def test_tail_truncation_is_caught_by_an_anchor(
    settings: Settings, db_session: Session, tmp_path: Path
) -> None:
    anchors = tmp_path / "worm" / "audit-anchors.jsonl"
    _fill(db_session, 4)
    code, out, _ = _invoke(settings, ["audit", "anchor", "--file", str(anchors)])
    assert code == 0
    first = json.loads(out)
    ids = _fill(db_session, 3, start=4)
    code, out, _ = _invoke(settings, ["audit", "verify", "--anchor", str(anchors)])
    assert code == 0
    assert "anchors: 1 honoured" in out

    _as_superuser_bypassing_triggers(db_session)  # drop the newest rows, anchored head too
    db_session.execute(delete(AuditEvent).where(AuditEvent.id >= first["head_id"]))
    db_session.commit()
    code, out, _ = _invoke(settings, ["audit", "verify"])
    assert code == 0, "without an anchor a shorter chain is still consistent"
    code, _, err = _invoke(settings, ["audit", "verify", "--anchor", str(anchors)])
    assert code == 1
    assert f"does not match its anchors: anchor 1 (event id {first['head_id']}, 4 events," in err
    assert "the anchored head is missing: the chain was truncated" in err
    after_restore = ["--anchored-before", first["anchored_at"]]  # a backup older than it
    code, out, _ = _invoke(settings, ["audit", "verify", "--anchor", str(anchors), *after_restore])
    assert code == 0
    assert "anchors: none to check yet" in out
    code, _, err = _invoke(settings, ["audit", "anchor", "--file", str(anchors)])
    assert code == 1, "no new anchor over a truncated chain"
    assert "no anchor written" in err
    assert len(anchors.read_text().splitlines()) == 1
    assert ids  # the later rows existed and are gone with the anchored head


def test_anchor_file_from_settings_and_edited_anchor(
    settings: Settings, db_session: Session, tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    configured = settings.model_copy(update={"audit_anchor_file": anchors})
    code, _, err = _invoke(configured, ["audit", "verify"])
    assert code == 2, "a configured anchor file must exist"
    assert "anchor file" in err
    assert "not found" in err
    _fill(db_session, 2)
    assert _invoke(configured, ["audit", "anchor"])[0] == 0
    _fill(db_session, 1, start=2)
    assert _invoke(configured, ["audit", "anchor"])[0] == 0
    code, out, _ = _invoke(configured, ["audit", "verify"])
    assert code == 0
    assert "anchors: 2 honoured; newest: event id" in out
    lines = anchors.read_text().splitlines()
    edited = json.loads(lines[1]) | {"rows": 2}  # someone "adjusts" the anchor
    anchors.write_text(lines[0] + "\n" + json.dumps(edited) + "\n")
    code, _, err = _invoke(configured, ["audit", "verify"])
    assert code == 1
    assert "anchor 2 (" in err
    assert "signature does not verify" in err
    anchors.write_text("not json\n")
    code, _, err = _invoke(configured, ["audit", "verify"])
    assert code == 2
    assert "line 1: not JSON" in err


def test_monitor_run_appends_an_anchor_when_configured(
    settings: Settings, db_session: Session, tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    _fill(db_session, 2)
    configured = settings.model_copy(update={"audit_anchor_file": anchors})
    code, out, err = _invoke(configured, ["monitor", "run"])
    assert code == 0, err
    assert "audit anchor: {" in out
    [anchor] = [json.loads(line) for line in anchors.read_text().splitlines()]
    # The anchor signs the head as it was; the chain then records the anchoring itself.
    recorded, head = db_session.scalars(
        select(AuditEvent).order_by(AuditEvent.id.desc()).limit(2)
    ).all()
    assert (recorded.event, recorded.details["anchor"]) == ("audit.anchored", anchor)
    assert (anchor["head_id"], anchor["head_hash"]) == (head.id, head.hash)


def _anchor(settings: Settings, *more: str) -> tuple[int, dict[str, object] | None, str]:
    code, out, err = _invoke(settings, ["audit", "anchor", *more])
    return code, (json.loads(out) if code == 0 else None), err


def test_anchoring_resumes_at_the_newest_anchor(
    settings: Settings, db_session: Session, tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    _fill(db_session, 5)
    code, first, err = _anchor(settings, "--file", str(anchors))
    assert code == 0, err
    assert "5 events verified (whole chain)" in err
    _fill(db_session, 3, start=5)
    code, second, err = _anchor(settings, "--file", str(anchors))
    assert code == 0, err
    assert first is not None
    assert second is not None
    # The three new events and the first anchoring's own audit.anchored event.
    assert f"4 events verified after the anchor at event id {first['head_id']}" in err
    assert second["rows"] == 9
    code, out, _ = _invoke(settings, ["audit", "verify", "--anchor", str(anchors)])
    assert code == 0
    assert "audit chain intact: 10 events verified" in out  # and the second anchoring's
    assert "anchors: 2 honoured" in out
    code, _, err = _anchor(settings, "--file", str(anchors), "--full")
    assert code == 0, err
    assert "10 events verified (whole chain)" in err


def test_anchoring_without_a_file_resumes_at_the_anchor_the_chain_recorded(
    settings: Settings, db_session: Session
) -> None:
    _fill(db_session, 3)
    code, first, err = _anchor(settings)
    assert code == 0, err
    assert "not stored: no anchor file configured" in err
    _fill(db_session, 2, start=3)
    code, _, err = _anchor(settings)
    assert code == 0, err
    assert first is not None
    assert f"3 events verified after the anchor at event id {first['head_id']}" in err
    # A forged audit.anchored event (no audit key: its anchor cannot be signed) that
    # would have the next anchoring skip the rows before it is refused, not trusted.
    head = db_session.scalar(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1))
    assert head is not None
    fake = dict(first) | {"head_id": head.id, "head_hash": head.hash, "rows": 7}
    _as_superuser_bypassing_triggers(db_session)
    db_session.execute(
        insert(AuditEvent).values(
            occurred_at=datetime.now(UTC),
            event="audit.anchored",
            action="E",
            outcome="success",
            actor="system",
            details={"anchor": fake},
            prev_hash=head.hash,
            chain_version=audit.FORMAT_KEYED,
            key_id="test1",
            hash="e" * 64,
        )
    )
    db_session.commit()
    code, _, err = _anchor(settings)
    assert code == 1
    assert "does not match the anchor recorded in audit event" in err
    assert "signature does not verify" in err


def test_incremental_anchoring_walks_after_the_anchor_and_counts_before_it(
    settings: Settings, db_session: Session, tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    before = _fill(db_session, 4)
    assert _anchor(settings, "--file", str(anchors))[0] == 0
    after = _fill(db_session, 2, start=4)
    _as_superuser_bypassing_triggers(db_session)
    # A row changed after the newest anchor: the incremental walk covers it.
    db_session.execute(update(AuditEvent).where(AuditEvent.id == after[1]).values(actor="x"))
    db_session.commit()
    code, _, err = _anchor(settings, "--file", str(anchors))
    assert code == 1
    assert f"BROKEN at event id {after[1]}: row content does not match its HMAC" in err
    db_session.execute(delete(AuditEvent).where(AuditEvent.id == after[1]))
    db_session.commit()
    assert _anchor(settings, "--file", str(anchors))[0] == 0
    # A row changed before it: the trade-off of resuming. Only a full walk sees it.
    db_session.execute(update(AuditEvent).where(AuditEvent.id == before[1]).values(actor="x"))
    db_session.commit()
    assert _anchor(settings, "--file", str(anchors))[0] == 0
    code, _, err = _anchor(settings, "--file", str(anchors), "--full")
    assert code == 1
    assert f"BROKEN at event id {before[1]}" in err
    assert _invoke(settings, ["audit", "verify", "--anchor", str(anchors)])[0] == 1
    # A row deleted before the newest anchor changes its count: caught without a walk.
    db_session.execute(delete(AuditEvent).where(AuditEvent.id == before[2]))
    db_session.commit()
    code, _, err = _anchor(settings, "--file", str(anchors))
    assert code == 1
    assert "does not match the anchor file's newest anchor" in err
    assert "events were deleted or inserted" in err


def test_verify_checks_the_anchors_the_chain_recorded(
    settings: Settings, db_session: Session
) -> None:
    """Where anchors go only to a log (the Kubernetes CronJob, no anchor file), the daily
    `audit verify` has no file to check. A superuser who rewrote the whole chain as
    format-1 (legacy, plain SHA-256) rows, which no key pins, passed it with exit 0, while
    the signed anchors recorded in the chain itself (`audit.anchored` events) showed the
    head's hash had changed: verify now checks them too."""
    _fill(db_session, 3)
    code, anchored, err = _anchor(settings)
    assert code == 0, err
    assert anchored is not None
    _fill(db_session, 2, start=3)
    code, out, err = _invoke(settings, ["audit", "verify"])
    assert code == 0, err
    assert "anchors: 1 honoured (recorded in the chain)" in out
    first = db_session.scalar(select(AuditEvent.id).order_by(AuditEvent.id).limit(1))
    assert first is not None
    _as_superuser_bypassing_triggers(db_session)
    db_session.execute(update(AuditEvent).where(AuditEvent.id == first).values(actor="user:evil"))
    db_session.execute(update(AuditEvent).values(chain_version=audit.FORMAT_LEGACY, key_id=None))
    db_session.commit()
    _rehash_from(
        db_session, first, lambda prev, row: audit._digest(prev, row.occurred_at, _event(row))
    )
    assert audit.verify_chain(db_session).ok  # every row links and hashes: only anchors tell
    code, out, err = _invoke(settings, ["audit", "verify"])
    assert code == 1, out
    assert "audit chain does not match the anchors recorded in it" in err
    assert f"event id {anchored['head_id']}" in err
    assert "has another hash" in err
    assert "user:evil" not in err + out
