"""Anchors: signed records of the audit chain's head, kept outside the database.

A keyed chain stops anyone without the key from rewriting rows, but deleting the newest
rows (or restoring an older backup) leaves a shorter chain that is still perfectly
consistent. An anchor records the head at a moment (event id, hash, number of events up
to it, how many of those are legacy unkeyed rows, time) with an HMAC under the audit key,
and lives where the database's writers cannot reach it: an append-only / WORM file, or a
log shipped off the host. Verification then requires every anchored head to still be in
the chain with exactly the events the anchor counted; tampering after the newest anchor
is caught by the next one, so anchor often (``vitalcast monitor run`` does when
``VITALCAST_AUDIT_ANCHOR_FILE`` is set).

Anchor records are JSON lines; they carry no patient data, only ids, counts and hashes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vitalcast.db.base import utcnow
from vitalcast.errors import ConfigError
from vitalcast.security.audit import ChainCheck, verify_chain
from vitalcast.security.audit_keys import AuditKeyring, UnknownAuditKey
from vitalcast.security.tables import AuditEvent

ANCHOR_FORMAT = 1
# Domain separation from row MACs made with the same key.
_ANCHOR_MAC_PREFIX = b"vitalcast-audit-anchor/1\n"


@dataclass(frozen=True)
class Anchor:
    """The chain head at ``anchored_at``, signed with the audit key ``key_id``."""

    head_id: int  # 0 for an empty chain
    head_hash: str
    rows: int  # events with id <= head_id (ids may have gaps)
    legacy_rows: int  # of which unkeyed format-1 rows
    anchored_at: str  # ISO 8601, UTC
    key_id: str
    mac: str = ""

    def _message(self) -> bytes:
        payload = {k: v for k, v in asdict(self).items() if k != "mac"}
        payload["format"] = ANCHOR_FORMAT
        return _ANCHOR_MAC_PREFIX + json.dumps(payload, sort_keys=True).encode()

    def to_json(self) -> str:
        """One JSON line (what is appended to the anchor file or shipped to a log)."""
        return json.dumps({"format": ANCHOR_FORMAT, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Anchor:
        """Parse one anchor line.

        Raises:
            ValueError: not an anchor record of a known format.
        """
        data: Any = json.loads(line)
        if not isinstance(data, dict) or data.pop("format", None) != ANCHOR_FORMAT:
            raise ValueError("not an anchor record of a known format")
        try:
            anchor = cls(**data)
        except TypeError:
            raise ValueError("anchor record has missing or unknown fields") from None
        if not (
            isinstance(anchor.head_id, int)
            and isinstance(anchor.rows, int)
            and isinstance(anchor.legacy_rows, int)
            and all(
                isinstance(v, str)
                for v in (anchor.head_hash, anchor.anchored_at, anchor.key_id, anchor.mac)
            )
        ):
            raise ValueError("anchor record has fields of the wrong type")
        return anchor


def sign_head(check: ChainCheck, keyring: AuditKeyring, now: datetime | None = None) -> Anchor:
    """An anchor of the head that ``check`` (a successful full walk) ended on."""
    if not check.ok:
        raise ValueError("refusing to anchor a broken chain")
    unsigned = Anchor(
        head_id=check.head_id,
        head_hash=check.head_hash,
        rows=check.checked,
        legacy_rows=check.legacy,
        anchored_at=(now or utcnow()).isoformat(timespec="seconds"),
        key_id=keyring.current,
    )
    return replace(unsigned, mac=keyring.mac(keyring.current, unsigned._message()))


def anchor_chain(
    session: Session, keyring: AuditKeyring, now: datetime | None = None
) -> tuple[ChainCheck, Anchor | None]:
    """Verify the whole chain and, if it is intact, sign its head (None if broken)."""
    check = verify_chain(session, keyring=keyring)
    return check, (sign_head(check, keyring, now) if check.ok else None)


def append_anchor(path: Path, anchor: Anchor) -> None:
    """Append ``anchor`` as one line, flushed to disk before returning.

    ``O_APPEND`` only: on append-only or WORM storage nothing here needs to rewrite.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, (anchor.to_json() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_anchors(path: Path) -> list[Anchor]:
    """Every anchor in ``path`` (blank lines skipped), oldest first.

    Raises:
        ConfigError: the file is missing, or a line is not an anchor record.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"audit anchor file {path} not found (write one with `vitalcast audit anchor`)"
        ) from None
    return parse_anchor_lines(text.splitlines(), source=str(path))


def parse_anchor_lines(lines: Iterable[str], *, source: str) -> list[Anchor]:
    """Anchors from JSON lines (e.g. collected back from a log system).

    Raises:
        ConfigError: a non-blank line is not an anchor record (names the line number).
    """
    anchors = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            anchors.append(Anchor.from_json(line))
        except ValueError as exc:  # JSONDecodeError is a ValueError
            reason = "not JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise ConfigError(f"{source}, line {number}: {reason}") from None
    return anchors


@dataclass(frozen=True)
class AnchorCheck:
    """Result of :func:`check_anchors`: the first anchor the chain does not honour."""

    ok: bool
    checked: int
    reason: str | None = None
    newest: Anchor | None = None


def check_anchors(
    session: Session, anchors: Sequence[Anchor], keyring: AuditKeyring
) -> AnchorCheck:
    """Whether every anchored head is still in the chain with all the events before it.

    Combined with :func:`~vitalcast.security.audit.verify_chain` (every row links to the
    one before), this proves that nothing up to the newest anchor was deleted, rewritten
    or replaced by an older copy.
    """
    for n, anchor in enumerate(anchors, start=1):
        reason = _anchor_failure(session, anchor, keyring)
        if reason is not None:
            return AnchorCheck(False, n - 1, f"anchor {n} ({_describe(anchor)}): {reason}")
    newest = max(anchors, key=lambda a: (a.head_id, a.rows), default=None)
    return AnchorCheck(True, len(anchors), newest=newest)


def _describe(anchor: Anchor) -> str:
    return f"event id {anchor.head_id}, {anchor.rows} events, anchored {anchor.anchored_at}"


def _anchor_failure(session: Session, anchor: Anchor, keyring: AuditKeyring) -> str | None:
    try:
        if not keyring.verify(anchor.key_id, anchor._message(), anchor.mac):
            return "signature does not verify (edited, or signed with another key)"
    except UnknownAuditKey:
        return f"unknown audit key id {anchor.key_id!r} (not in VITALCAST_AUDIT_KEY)"
    if anchor.head_id:
        stored = session.scalar(select(AuditEvent.hash).where(AuditEvent.id == anchor.head_id))
        if stored != anchor.head_hash:
            what = "is missing" if stored is None else "has another hash"
            return (
                f"the anchored head {what}: the chain was truncated, rewritten or replaced"
                " by an older copy"
            )
    rows = session.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.id <= anchor.head_id)
    )
    if rows != anchor.rows:
        return (
            f"the chain holds {rows} events up to the anchored head, the anchor counted"
            f" {anchor.rows}: events were deleted or inserted"
        )
    return None


@dataclass(frozen=True)
class AnchorOutcome:
    """What :func:`anchor_now` did: the new anchor, or why it refused to make one."""

    anchor: Anchor | None
    failure: str | None = None


def chain_failure(check: ChainCheck) -> str:
    """One line naming the first broken row and why (no row content)."""
    return (
        f"audit chain BROKEN at event id {check.first_broken_id}: {check.reason}"
        f" ({check.checked} events before it verified)"
    )


def anchor_now(
    session: Session, keyring: AuditKeyring, path: Path | None, now: datetime | None = None
) -> AnchorOutcome:
    """Verify the chain and the anchors already in ``path``, then sign the head and
    append it there (if ``path`` is given).

    Refuses, appending nothing, when the chain is broken or no longer holds an earlier
    anchor's head: a new anchor must never make a tampered chain look authoritative.
    """
    check, anchor = anchor_chain(session, keyring, now)
    if anchor is None:
        return AnchorOutcome(None, chain_failure(check))
    if path is not None and path.exists():
        earlier = check_anchors(session, read_anchors(path), keyring)
        if not earlier.ok:
            return AnchorOutcome(None, f"audit chain does not match its anchors: {earlier.reason}")
    if path is not None:
        append_anchor(path, anchor)
    return AnchorOutcome(anchor)
