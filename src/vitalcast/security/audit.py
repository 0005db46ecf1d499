"""The audit trail: typed events written to an append-only, HMAC-chained table.

Each row stores the hash of the row before it; the row's own hash covers its fields and
that link, so changing, deleting or reordering any row breaks the chain, which
:func:`verify_chain` reports. Events are written in the caller's transaction, so an
action and its audit record commit or roll back together (HIPAA 164.312(b)).

Chain formats (``audit_events.chain_version``):

1. legacy, before migration 0010: plain SHA-256. Anyone who can write to the database
   can recompute it, so it only detects accidents. Such rows still verify, are counted
   apart, and may only form a prefix of the chain: the first keyed row links to the
   last legacy one, and its HMAC thereby pins the whole legacy prefix.
2. keyed: HMAC-SHA-256 under the audit key named by ``key_id``
   (:mod:`vitalcast.security.audit_keys`); forging or re-hashing a row needs the key.

Deleting the newest rows leaves a shorter chain that is still consistent; anchors
(:mod:`vitalcast.security.audit_anchor`) kept outside the database catch that.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Boolean, ColumnElement, Select, String, and_, bindparam, or_, select, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from vitalcast.db.base import utcnow
from vitalcast.security import audit_keys
from vitalcast.security.audit_keys import AuditKeyring, UnknownAuditKey
from vitalcast.security.tables import AuditEvent

GENESIS = "0" * 64
FORMAT_LEGACY = 1  # unkeyed SHA-256, rows written before migration 0010
FORMAT_KEYED = 2  # HMAC-SHA-256 under the key named by the row's key_id
# Domain separation: a row MAC can never be replayed as an anchor MAC or vice versa.
_ROW_MAC_PREFIX = b"vitalcast-audit-row/2\n"
# Any constant works; it names the lock that serialises chain appends on PostgreSQL.
_CHAIN_LOCK_ID = 0x56495441

Action = Literal[
    "C", "R", "U", "D", "E"
]  # FHIR AuditEvent.action: create/read/update/delete/execute


@dataclass(frozen=True)
class Event:
    """One auditable action."""

    event: str  # e.g. "patient.viewed", "prediction.served", "user.login"
    action: Action
    actor: str
    role: str | None = None
    outcome: str = "success"
    patient_id: str | None = None  # public id, never an MRN
    resource: str | None = None
    client_addr: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Agent:
    """Who performs an action (FHIR AuditEvent.agent), passed down to services.

    Services that must audit what they do (model promotion, ingest batches, quarantine
    reads) take an ``Agent`` rather than a bare actor string, so an HTTP caller can hand
    over its role, client address and request id, and a CLI or job its own name.
    """

    actor: str
    role: str | None = None
    client_addr: str | None = None
    request_id: str | None = None

    def event(
        self,
        event: str,
        action: Action,
        *,
        outcome: str = "success",
        patient_id: str | None = None,
        resource: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> Event:
        """An :class:`Event` performed by this agent."""
        return Event(
            event=event,
            action=action,
            actor=self.actor,
            role=self.role,
            outcome=outcome,
            patient_id=patient_id,
            resource=resource,
            client_addr=self.client_addr,
            request_id=self.request_id,
            details=details or {},
        )


SYSTEM = Agent("system")
CLI = Agent("cli")


def _body(prev_hash: str, occurred_at: datetime, ev: Event) -> dict[str, Any]:
    """The fields a row's hash covers (both formats)."""
    return {
        "prev": prev_hash,
        "at": occurred_at.isoformat(timespec="microseconds"),
        "event": ev.event,
        "action": ev.action,
        "outcome": ev.outcome,
        "actor": ev.actor,
        "role": ev.role,
        "patient": ev.patient_id,
        "resource": ev.resource,
        "client": ev.client_addr,
        "request": ev.request_id,
        "details": ev.details,
    }


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, default=str).encode()


def _digest(prev_hash: str, occurred_at: datetime, ev: Event) -> str:
    """Format 1 (legacy): plain SHA-256, kept only to verify rows written before 0010."""
    return hashlib.sha256(_canonical(_body(prev_hash, occurred_at, ev))).hexdigest()


def _keyed_message(prev_hash: str, occurred_at: datetime, ev: Event, key_id: str) -> bytes:
    """Format 2: what the row's HMAC covers; the format and key id are bound in too, so a
    row cannot be passed off as written under another key or format."""
    body = _body(prev_hash, occurred_at, ev) | {"v": FORMAT_KEYED, "key": key_id}
    return _ROW_MAC_PREFIX + _canonical(body)


def lock_chain(session: Session) -> None:
    """Take the chain's lock in ``session``'s transaction (PostgreSQL; held to commit,
    re-entrant; a no-op on SQLite, whose single writer already serialises appends).

    Every audited transaction holds this lock from its first append to its commit, so it
    also orders them: whatever a transaction reads after taking it was committed by every
    audited transaction that committed before it, and no audited transaction can commit
    until it does. Serving relies on that to score only with the current champion (every
    alias change is audited in its own transaction; ``serving/models.py``). A transaction
    that takes another lock must take this one first: the order is what keeps them
    deadlock-free.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK_ID})


def record(session: Session, ev: Event, *, keyring: AuditKeyring | None = None) -> AuditEvent:
    """Append ``ev`` to the chain inside the caller's transaction, keyed with the current
    key of ``keyring`` (default: the one the process's entry point installed).

    Raises:
        ConfigError: no keyring is installed; an event is never written unkeyed.
    """
    keyring = keyring or audit_keys.installed()
    lock_chain(session)  # two transactions never link to the same predecessor
    prev = session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
    prev_hash = prev or GENESIS
    occurred_at = utcnow()
    row = AuditEvent(
        occurred_at=occurred_at,
        event=ev.event,
        action=ev.action,
        outcome=ev.outcome,
        actor=ev.actor,
        role=ev.role,
        patient_id=ev.patient_id,
        resource=ev.resource,
        client_addr=ev.client_addr,
        request_id=ev.request_id,
        details=ev.details or None,
        prev_hash=prev_hash,
        chain_version=FORMAT_KEYED,
        key_id=keyring.current,
        hash=keyring.mac(
            keyring.current, _keyed_message(prev_hash, occurred_at, ev, keyring.current)
        ),
    )
    session.add(row)
    session.flush()
    return row


ACTIONS: dict[str, str] = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "execute"}
OUTCOMES = ("success", "failure", "denied")


# Events about many patients at once name them in ``details.patients`` (a list of public
# ids) instead of ``patient_id``: a ward page read (``patient.list``) and a bulk import
# (``ingest.batch``). Other events may hold a count under that key.
LISTING_EVENTS = ("patient.list", "ingest.batch")


class _ListsPatient(FunctionElement[bool]):
    """``details.patients`` (a JSON list) holds the given public id; compiled per dialect."""

    type = Boolean()
    inherit_cache = True
    name = "lists_patient"


@compiles(_ListsPatient, "postgresql")
def _lists_patient_postgresql(element: _ListsPatient, compiler: SQLCompiler, **kw: Any) -> str:
    details, public_id = (compiler.process(c, **kw) for c in element.clauses)
    return (
        f"(CAST({details} AS JSONB) -> 'patients') @> jsonb_build_array(CAST({public_id} AS TEXT))"
    )


@compiles(_ListsPatient)
def _lists_patient_sqlite(element: _ListsPatient, compiler: SQLCompiler, **kw: Any) -> str:
    details, public_id = (compiler.process(c, **kw) for c in element.clauses)
    listed = f"json_each({details}, '$.patients')"
    return f"EXISTS (SELECT 1 FROM {listed} AS p WHERE p.value = {public_id})"


def about_patient(public_id: str) -> ColumnElement[bool]:
    """Events about this patient (public id): those naming them in ``patient_id``, and the
    events of :data:`LISTING_EVENTS` that list them. The one definition of a patient's
    audit trail, shared by the admin API, the admin page and ``audit export``.

    Cost: on PostgreSQL the listing events naming the patient are found by a partial GIN
    index on ``details -> 'patients'`` (migration 0013; the containment below is the
    expression it indexes); SQLite reads every listing event. See docs/security.md.
    """
    value = bindparam(None, public_id, type_=String())
    return or_(
        AuditEvent.patient_id == public_id,
        and_(AuditEvent.event.in_(LISTING_EVENTS), _ListsPatient(AuditEvent.details, value)),
    )


@dataclass(frozen=True)
class AuditFilter:
    """What the admin audit view and ``vitalcast audit export`` select (all optional).

    ``event`` ending in ``*`` matches a prefix (``model.*``: every model change); the time
    range is ``since <= occurred_at < until``.
    """

    actor: str | None = None  # the user or key: "user:alice", "api_key:ehr", "cli"
    patient_id: str | None = None  # their trail: see :func:`about_patient`
    event: str | None = None
    action: str | None = None  # FHIR AuditEvent.action: C, R, U, D or E
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        """``query`` (over :class:`AuditEvent`) restricted to the matching events."""
        if self.patient_id:
            query = query.where(about_patient(self.patient_id))
        for column, value in (
            (AuditEvent.actor, self.actor),
            (AuditEvent.action, self.action),
            (AuditEvent.outcome, self.outcome),
        ):
            if value:
                query = query.where(column == value)
        if self.event and self.event.endswith("*"):
            query = query.where(AuditEvent.event.startswith(self.event[:-1], autoescape=True))
        elif self.event:
            query = query.where(AuditEvent.event == self.event)
        if self.since is not None:
            query = query.where(AuditEvent.occurred_at >= self.since)
        if self.until is not None:
            query = query.where(AuditEvent.occurred_at < self.until)
        return query

    def describe(self) -> dict[str, str]:
        """The filters in use, for the audit event that records the read itself."""
        return {
            k: v.isoformat() if isinstance(v, datetime) else v
            for k, v in vars(self).items()
            if v is not None and v != ""
        }


@dataclass(frozen=True)
class ChainPoint:
    """A verified position in the chain: the row ``head_id`` with ``head_hash``, and how
    many events (``rows``, of which ``legacy_rows`` unkeyed) lie up to it. A walk can
    resume there instead of from the genesis (see :func:`verify_chain`)."""

    head_id: int
    head_hash: str
    rows: int
    legacy_rows: int


@dataclass(frozen=True)
class ChainCheck:
    """Result of :func:`verify_chain`.

    ``head_id``/``head_hash`` name the newest verified row (0 and :data:`GENESIS` for an
    empty chain): what an anchor records. ``checked`` and ``legacy`` count from the
    genesis, the rows before ``start_id`` included (those were verified earlier);
    ``keyed`` counts only the rows this walk verified.
    """

    ok: bool
    checked: int
    first_broken_id: int | None = None
    reason: str | None = None
    legacy: int = 0  # unkeyed format-1 rows (all before the first keyed row)
    keyed: dict[str, int] = field(default_factory=dict)  # rows per key id
    head_id: int = 0
    head_hash: str = GENESIS
    start_id: int = 0  # the walk began after this row (0: at the genesis)
    start_rows: int = 0  # events up to start_id, verified before this walk

    @property
    def walked(self) -> int:
        """Rows this walk verified itself."""
        return self.checked - self.start_rows


@dataclass
class _Walk:
    """Where a chain walk stands: the state :func:`_check_row` advances."""

    prev_hash: str = GENESIS
    checked: int = 0
    legacy: int = 0
    keyed: Counter[str] = field(default_factory=Counter)
    head_id: int = 0
    keyed_before: bool = False  # keyed rows precede the start of this walk
    start_id: int = 0
    start_rows: int = 0

    @classmethod
    def resuming(cls, start: ChainPoint | None) -> _Walk:
        if start is None:
            return cls()
        return cls(
            prev_hash=start.head_hash,
            checked=start.rows,
            legacy=start.legacy_rows,
            head_id=start.head_id,
            keyed_before=start.rows > start.legacy_rows,
            start_id=start.head_id,
            start_rows=start.rows,
        )

    def result(self, broken: AuditEvent | None = None, reason: str | None = None) -> ChainCheck:
        return ChainCheck(
            ok=broken is None,
            checked=self.checked,
            first_broken_id=broken.id if broken is not None else None,
            reason=reason,
            legacy=self.legacy,
            keyed=dict(self.keyed),
            head_id=self.head_id,
            head_hash=self.prev_hash,
            start_id=self.start_id,
            start_rows=self.start_rows,
        )


def _event_of(row: AuditEvent) -> Event:
    return Event(
        event=row.event,
        action=row.action,  # type: ignore[arg-type]
        actor=row.actor,
        role=row.role,
        outcome=row.outcome,
        patient_id=row.patient_id,
        resource=row.resource,
        client_addr=row.client_addr,
        request_id=row.request_id,
        details=row.details or {},
    )


def _check_row(row: AuditEvent, walk: _Walk, keyring: AuditKeyring) -> str | None:
    """Why ``row`` does not continue the chain walked so far, or None if it does.

    Reasons name the failure, never the row's content (which may identify a patient).
    """
    if row.prev_hash != walk.prev_hash:
        return "link to the previous row is broken"
    ev = _event_of(row)
    if row.chain_version == FORMAT_LEGACY:
        if walk.keyed or walk.keyed_before:
            return "unkeyed (legacy) row after keyed rows: written without the audit key"
        if _digest(row.prev_hash, row.occurred_at, ev) != row.hash:
            return "row content does not match its hash"
        return None
    if row.chain_version != FORMAT_KEYED:
        return f"unknown chain format version {row.chain_version}"
    if not row.key_id:
        return "keyed row names no key id"
    try:
        message = _keyed_message(row.prev_hash, row.occurred_at, ev, row.key_id)
        if not keyring.verify(row.key_id, message, row.hash):
            return "row content does not match its HMAC (altered, or hashed without the key)"
    except UnknownAuditKey:
        return f"unknown audit key id {row.key_id!r} (not in VITALCAST_AUDIT_KEY)"
    return None


def verify_chain(
    session: Session,
    *,
    keyring: AuditKeyring | None = None,
    batch_size: int = 5000,
    start: ChainPoint | None = None,
) -> ChainCheck:
    """Walk the chain in id order and report the first row that does not link or hash.

    ``keyring`` defaults to the process's installed one; it must hold every key id the
    chain uses (the current key and the retired ones kept for verification).

    ``start`` resumes after a point verified earlier (a signed anchor's head, which the
    caller has checked is still in the chain with as many rows before it): only the rows
    after it are walked. Why: the walk costs tens of microseconds a row, so a chain of
    tens of millions of events takes most of an hour, far too long for an anchor every
    15 minutes. What it gives up: a row before ``start`` rewritten since (possible only
    past the table's trigger) is found by a full walk, not by this one.
    """
    keyring = keyring or audit_keys.installed()
    walk = _Walk.resuming(start)
    while True:
        rows = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.id > walk.head_id)
            .order_by(AuditEvent.id)
            .limit(batch_size)
        ).all()
        if not rows:
            return walk.result()
        for row in rows:
            reason = _check_row(row, walk, keyring)
            if reason is not None:
                return walk.result(row, reason)
            if row.chain_version == FORMAT_LEGACY:
                walk.legacy += 1
            else:
                walk.keyed[row.key_id or ""] += 1
            walk.prev_hash = row.hash
            walk.checked += 1
            walk.head_id = row.id
