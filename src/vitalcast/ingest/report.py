"""The ingest report: every item received is stored, a duplicate, or quarantined."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_LISTED_REJECTS = 1000


@dataclass
class KindCounts:
    """Counts for one record kind (observation, patient, encounter, ...)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0

    def balanced(self) -> bool:
        return self.received == self.stored + self.duplicates + self.quarantined


@dataclass(frozen=True)
class Withdrawal:
    """A stored stay withdrawn by a newer version saying it never was one.

    ``location`` and ``reason_code`` are reported; the public ids are for the audit
    event naming the patient, and are left out of the printed report.
    """

    location: str
    reason_code: str
    patient_public_id: str
    encounter_public_id: str


@dataclass(frozen=True)
class Reopening:
    """A discharged stay put back in progress by a newer message cancelling its
    discharge (HL7 ADT^A13, or a FHIR Encounter version saying the stay is going on).
    The public ids are for the audit event, as for :class:`Withdrawal`, and are left out
    of the printed report."""

    location: str
    patient_public_id: str
    encounter_public_id: str


@dataclass(frozen=True)
class Retraction:
    """A stored result removed by a newer version taking it back (HL7 OBX-11 W/D/X, FHIR
    entered-in-error or cancelled). The patient's public id is for the audit event, as
    for :class:`Withdrawal`, and is left out of the printed report."""

    location: str
    code: str
    reason_code: str
    patient_public_id: str


@dataclass
class IngestReport:
    """What one ingest run did with its input."""

    source: str
    location: str
    kinds: dict[str, KindCounts] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    rejects: list[dict[str, str]] = field(default_factory=list)
    # Stays whose inputs changed (new observations, a newer version of the stay or of its
    # patient): the ones to rescore.
    touched_encounters: set[int] = field(default_factory=set)
    run_id: int | None = None
    # Items deliberately not stored, by reason (e.g. FHIR resource types without a
    # canonical table: "not_modelled:Claim"); counted so that every input item is
    # accounted for, but outside received/stored/duplicates/quarantined.
    skipped: Counter[str] = field(default_factory=Counter)
    # Items that replaced a stored record with a newer version of it (FHIR meta, an HL7
    # ADT^A08/A03), per kind; they are also counted as stored (they were written).
    updated: Counter[str] = field(default_factory=Counter)
    # Input columns the mapping does not declare (CSV): read past and never stored, named
    # here so that a new column (a patient_name added to an export) is seen, not kept.
    ignored_columns: list[str] = field(default_factory=list)
    # Stored stays that a newer version withdrew (FHIR entered-in-error, cancelled): no
    # longer in progress, never scored, kept. Counted as stored encounter items.
    withdrawn: list[Withdrawal] = field(default_factory=list)
    # Internal ids of the patients this run wrote data about (a record stored or replaced,
    # an item quarantined against a known patient): the ``ingest.batch`` audit event names
    # them by public id, so each patient's audit trail shows the bulk writes to their
    # record. Never rendered or returned (internal ids are not for callers).
    patients: set[int] = field(default_factory=set)
    # Discharged stays whose discharge a newer message cancelled (HL7 ADT^A13): in
    # progress again, and rescored. Counted as stored encounter items.
    reopened: list[Reopening] = field(default_factory=list)
    # Stored results removed because a newer version took them back (_retract). Counted
    # as stored observation items (the retraction was applied); the removed rows are
    # kept in the quarantine under ``retracted``.
    retracted: list[Retraction] = field(default_factory=list)

    def count(self, kind: str) -> KindCounts:
        return self.kinds.setdefault(kind, KindCounts())

    def reject(self, kind: str, location: str, reason_code: str, reason: str) -> None:
        """Count one quarantined item (the caller stores its raw payload)."""
        counts = self.count(kind)
        counts.received += 1
        counts.quarantined += 1
        self.reasons[reason_code] += 1
        if len(self.rejects) < MAX_LISTED_REJECTS:
            self.rejects.append(
                {"kind": kind, "location": location, "reason_code": reason_code, "reason": reason}
            )

    @property
    def received(self) -> int:
        return sum(k.received for k in self.kinds.values())

    @property
    def stored(self) -> int:
        return sum(k.stored for k in self.kinds.values())

    @property
    def duplicates(self) -> int:
        return sum(k.duplicates for k in self.kinds.values())

    @property
    def quarantined(self) -> int:
        return sum(k.quarantined for k in self.kinds.values())

    def balanced(self) -> bool:
        """received == stored + duplicates + quarantined, for every kind."""
        return all(k.balanced() for k in self.kinds.values())

    def merge(self, other: IngestReport) -> None:
        """Add another run's counts (for multi-file commands)."""
        for kind, counts in other.kinds.items():
            mine = self.count(kind)
            mine.received += counts.received
            mine.stored += counts.stored
            mine.duplicates += counts.duplicates
            mine.quarantined += counts.quarantined
        self.reasons.update(other.reasons)
        room = MAX_LISTED_REJECTS - len(self.rejects)
        self.rejects.extend(other.rejects[: max(room, 0)])
        self.touched_encounters |= other.touched_encounters
        self.patients |= other.patients
        self.skipped.update(other.skipped)
        self.updated.update(other.updated)
        self.ignored_columns += [c for c in other.ignored_columns if c not in self.ignored_columns]
        self.withdrawn += other.withdrawn
        self.reopened += other.reopened
        self.retracted += other.retracted

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "location": self.location,
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "balanced": self.balanced(),
            "by_kind": {k: vars(v) for k, v in sorted(self.kinds.items())},
            "reasons": dict(self.reasons.most_common()),
            "skipped": dict(self.skipped.most_common()),
            "updated": dict(self.updated.most_common()),
            "ignored_columns": self.ignored_columns,
            "withdrawn": [
                {"location": w.location, "reason_code": w.reason_code} for w in self.withdrawn
            ],
            "discharge_cancelled": [{"location": r.location} for r in self.reopened],
            "retracted": [
                {"location": r.location, "code": r.code, "reason_code": r.reason_code}
                for r in self.retracted
            ],
            "rejects": self.rejects,
        }

    def render(self) -> str:
        """Human-readable summary for the CLI."""
        lines = [
            f"{self.source} {self.location}: received {self.received} = stored {self.stored}"
            f" + duplicates {self.duplicates} + quarantined {self.quarantined}"
        ]
        for kind, c in sorted(self.kinds.items()):
            lines.append(
                f"  {kind}: received {c.received}, stored {c.stored},"
                f" duplicates {c.duplicates}, quarantined {c.quarantined}"
            )
        for reason, n in self.reasons.most_common():
            lines.append(f"  quarantined {reason}: {n}")
        for kind, n in self.updated.most_common():
            lines.append(f"  {kind}: {n} of the stored replaced an older version")
        for w in self.withdrawn:
            lines.append(f"  stay withdrawn ({w.reason_code}), no longer in progress: {w.location}")
        for r in self.reopened:
            lines.append(f"  discharge cancelled, stay in progress again: {r.location}")
        for t in self.retracted:
            lines.append(f"  result {t.code} taken back ({t.reason_code}), removed: {t.location}")
        for reason, n in self.skipped.most_common():
            lines.append(f"  skipped {reason}: {n}")
        if self.ignored_columns:
            lines.append(
                "  columns not in the profile, not stored: " + ", ".join(self.ignored_columns)
            )
        for item in self.rejects[:10]:
            lines.append(f"    {item['location']}: {item['reason']}")
        if len(self.rejects) > 10:
            lines.append(f"    ... {self.quarantined - 10} more (see --json or the quarantine)")
        return "\n".join(lines)
