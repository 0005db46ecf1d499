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

Anchoring is incremental: it resumes the chain walk at the newest anchor (from the file,
or the ``audit.anchored`` event each anchoring appends to the chain itself) once that
anchor's signature, head and count check out, so its cost grows with the events since
then, not with the whole trail. A full walk (``vitalcast audit verify``, or
``audit anchor --full``) still re-checks every row and every anchor; run one daily.

Anchor records are JSON lines; they carry no patient data, only ids, counts and hashes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vitalcast.db.base import utcnow
from vitalcast.errors import ConfigError
from vitalcast.security import audit
from vitalcast.security.audit import ChainCheck, ChainPoint, verify_chain
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

    def point(self) -> ChainPoint:
        """Where a chain walk may resume once this anchor is checked (:func:`_anchor_failure`)."""
        return ChainPoint(self.head_id, self.head_hash, self.rows, self.legacy_rows)

    def to_json(self) -> str:
        """One JSON line (what is appended to the anchor file or shipped to a log)."""
        return json.dumps({"format": ANCHOR_FORMAT, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Anchor:
        """Parse one anchor line.

        Raises:
            ValueError: not an anchor record of a known format.
        """
        return cls.from_dict(json.loads(line))

    @classmethod
    def from_dict(cls, data: Any) -> Anchor:
        """An anchor from its JSON object (``format`` included).

        Raises:
            ValueError: not an anchor record of a known format.
        """
        if not isinstance(data, dict):
            raise ValueError("not an anchor record of a known format")
        data = dict(data)
        if data.pop("format", None) != ANCHOR_FORMAT:
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
    positions = _positions(session, {a.head_id for a in anchors})
    for n, anchor in enumerate(anchors, start=1):
        reason = _anchor_failure(session, anchor, keyring, positions)
        if reason is not None:
            return AnchorCheck(False, n - 1, f"anchor {n} ({_describe(anchor)}): {reason}")
    newest = max(anchors, key=lambda a: (a.head_id, a.rows), default=None)
    return AnchorCheck(True, len(anchors), newest=newest)


def _describe(anchor: Anchor) -> str:
    return f"event id {anchor.head_id}, {anchor.rows} events, anchored {anchor.anchored_at}"


def _positions(session: Session, ids: Collection[int]) -> dict[int, tuple[str, int]]:
    """Each stored id's hash and position (events up to and including it), in one pass
    over the table however many anchors ask: a count per anchor made checking a year of
    15-minute anchors (35,000) scan the table 35,000 times."""
    wanted = sorted(i for i in ids if i > 0)
    if not wanted:
        return {}
    ranked = (
        select(
            AuditEvent.id,
            AuditEvent.hash,
            func.row_number().over(order_by=AuditEvent.id).label("position"),
        )
        .where(AuditEvent.id <= wanted[-1])
        .subquery()
    )
    rows = session.execute(
        select(ranked.c.id, ranked.c.hash, ranked.c.position).where(ranked.c.id.in_(wanted))
    )
    return {event_id: (hash_, position) for event_id, hash_, position in rows}


def _anchor_failure(
    session: Session,
    anchor: Anchor,
    keyring: AuditKeyring,
    positions: dict[int, tuple[str, int]] | None = None,
) -> str | None:
    """Why the chain does not honour ``anchor`` (signature, head, events up to it)."""
    try:
        if not keyring.verify(anchor.key_id, anchor._message(), anchor.mac):
            return "signature does not verify (edited, or signed with another key)"
    except UnknownAuditKey:
        return f"unknown audit key id {anchor.key_id!r} (not in VITALCAST_AUDIT_KEY)"
    if positions is None:
        positions = _positions(session, [anchor.head_id])
    rows = 0
    if anchor.head_id:
        stored, rows = positions.get(anchor.head_id, (None, 0))
        if stored != anchor.head_hash:
            what = "is missing" if stored is None else "has another hash"
            return (
                f"the anchored head {what}: the chain was truncated, rewritten or replaced"
                " by an older copy"
            )
    if rows != anchor.rows:
        return (
            f"the chain holds {rows} events up to the anchored head, the anchor counted"
            f" {anchor.rows}: events were deleted or inserted"
        )
    return None


@dataclass(frozen=True)
class AnchorOutcome:
    """What :func:`anchor_now` did: the new anchor and the walk behind it, or why it
    refused to make one."""

    anchor: Anchor | None
    failure: str | None = None
    check: ChainCheck | None = None


def chain_failure(check: ChainCheck) -> str:
    """One line naming the first broken row and why (no row content)."""
    return (
        f"audit chain BROKEN at event id {check.first_broken_id}: {check.reason}"
        f" ({check.checked} events before it verified)"
    )


# The audit event each anchoring appends: the anchor itself, so that the next anchoring
# can resume there even where anchors only go to a log (the Kubernetes CronJob).
ANCHORED_EVENT = "audit.anchored"


def anchor_now(
    session: Session,
    keyring: AuditKeyring,
    path: Path | None,
    now: datetime | None = None,
    *,
    full: bool = False,
    agent: audit.Agent = audit.SYSTEM,
) -> AnchorOutcome:
    """Verify the chain, sign its head, append the anchor to ``path`` (if given) and
    record it in the chain as an ``audit.anchored`` event (the caller commits).

    The walk resumes at the newest anchor, the file's or the chain's own, after checking
    that anchor (see the module docstring); ``full`` walks every row and checks every
    anchor in the file instead. Refuses, appending nothing, when the chain is broken or
    does not honour an anchor it checked: a new anchor must never make a tampered chain
    look authoritative.
    """
    earlier = read_anchors(path) if path is not None and path.exists() else []
    if full:
        check = verify_chain(session, keyring=keyring)
        if check.ok and earlier:
            honoured = check_anchors(session, earlier, keyring)
            if not honoured.ok:
                return AnchorOutcome(
                    None, f"audit chain does not match its anchors: {honoured.reason}", check
                )
    else:
        start, failure = _resume_point(session, earlier, keyring)
        if failure is not None:
            return AnchorOutcome(None, failure)
        check = verify_chain(session, keyring=keyring, start=start)
    if not check.ok:
        return AnchorOutcome(None, chain_failure(check), check)
    anchor = sign_head(check, keyring, now)
    if path is not None:
        append_anchor(path, anchor)
    details = {
        "anchor": json.loads(anchor.to_json()),
        "verified_events": check.walked,
        "full_walk": full or check.start_id == 0,
    }
    audit.record(session, agent.event(ANCHORED_EVENT, "E", details=details), keyring=keyring)
    return AnchorOutcome(anchor, check=check)


def _resume_point(
    session: Session, earlier: Sequence[Anchor], keyring: AuditKeyring
) -> tuple[ChainPoint | None, str | None]:
    """Where an incremental walk starts: after the newest of the file's anchors and the
    chain's own ``audit.anchored`` events, each checked first (None: at the genesis).

    The file's newest anchor is always checked, as the evidence kept outside the database;
    the chain's newer one, if any, only spares the walk, but one that does not verify is
    tampering all the same and refuses the anchor.
    """
    newest_file = max(earlier, key=lambda a: (a.head_id, a.rows), default=None)
    candidates: list[tuple[str, Anchor | None]] = [("the anchor file's newest anchor", newest_file)]
    try:
        recorded = last_recorded_anchor(session)
    except ValueError as exc:
        return None, str(exc)
    if recorded is not None:
        event, in_chain = recorded
        if newest_file is None or in_chain.head_id > newest_file.head_id:
            candidates.append((f"the anchor recorded in audit event {event.id}", in_chain))
    checked = [(name, anchor) for name, anchor in candidates if anchor is not None]
    positions = _positions(session, {anchor.head_id for _, anchor in checked})  # one pass
    start: ChainPoint | None = None
    for name, anchor in checked:
        reason = _anchor_failure(session, anchor, keyring, positions)
        if reason is not None:
            return None, f"audit chain does not match {name} ({_describe(anchor)}): {reason}"
        start = anchor.point()
    return start, None


def recorded_anchors(session: Session) -> list[Anchor]:
    """Every anchor the chain recorded (its ``audit.anchored`` events), oldest first.

    Each is signed with the audit key, so a forger without it can neither make one nor
    edit one; where anchors go only to a log (no anchor file), they are what
    ``vitalcast audit verify`` can check a rewritten chain against.

    Raises:
        ValueError: such an event holds no readable anchor (names the event id only).
    """
    anchors = []
    for event_id, details in session.execute(
        select(AuditEvent.id, AuditEvent.details)
        .where(AuditEvent.event == ANCHORED_EVENT)
        .order_by(AuditEvent.id)
    ):
        try:
            anchors.append(Anchor.from_dict((details or {}).get("anchor")))
        except ValueError as exc:
            raise ValueError(
                f"audit event {event_id} ({ANCHORED_EVENT}) holds no anchor: {exc}"
            ) from None
    return anchors


def last_recorded_anchor(session: Session) -> tuple[AuditEvent, Anchor] | None:
    """The newest ``audit.anchored`` event and the anchor it records (None: never
    anchored): what the next anchoring resumes from, and what the admin page reports.

    Raises:
        ValueError: that event holds no readable anchor (names the event id only).
    """
    event = session.scalar(
        select(AuditEvent)
        .where(AuditEvent.event == ANCHORED_EVENT)
        .order_by(AuditEvent.id.desc())
        .limit(1)
    )
    if event is None:
        return None
    try:
        return event, Anchor.from_dict((event.details or {}).get("anchor"))
    except ValueError as exc:
        raise ValueError(
            f"audit event {event.id} ({ANCHORED_EVENT}) holds no anchor: {exc}"
        ) from None
