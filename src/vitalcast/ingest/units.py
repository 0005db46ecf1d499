"""Units of work for file and message sources: parse one unit, store it, commit it.

A file or message is one unit: it is stored by :func:`store_batch` and committed on its
own, so a crash or a database error leaves nothing half-written, and re-running the same
input is a no-op (natural keys and observation dedup keys).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.clinical.records import RecordBatch
from vitalcast.db.session import session_scope
from vitalcast.errors import IngestError, error_kind
from vitalcast.ingest.report import IngestReport
from vitalcast.ingest.service import store_batch
from vitalcast.security import audit
from vitalcast.security.crypto import FieldCipher

logger = logging.getLogger(__name__)


@dataclass
class ParsedUnit:
    """One parsed unit (a file, a message): records, rejections and skipped items."""

    name: str
    batch: RecordBatch = field(default_factory=RecordBatch)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def items(self) -> int:
        """Every item seen: modelled items plus deliberately skipped ones."""
        return self.batch.received + sum(self.skipped.values())


Loader = Callable[[], ParsedUnit]


@dataclass
class RunResult:
    """A multi-unit run: the merged report, and the units that could not be read."""

    report: IngestReport
    errors: list[str] = field(default_factory=list)
    units: int = 0


def store_unit(
    session: Session,
    unit: ParsedUnit,
    *,
    source: str,
    cipher: FieldCipher,
    now: datetime | None = None,
    agent: audit.Agent = audit.SYSTEM,
) -> IngestReport:
    """Store one parsed unit in ``session`` (the caller commits) and count its skips."""
    report = store_batch(
        session,
        unit.batch,
        source=source,
        location=unit.name,
        cipher=cipher,
        now=now,
        agent=agent,
    )
    report.skipped.update(unit.skipped)
    return report


def ingest_units(
    factory: sessionmaker[Session],
    units: Iterable[tuple[str, Loader]],
    *,
    source: str,
    location: str,
    cipher: FieldCipher,
    now: datetime | None = None,
    agent: audit.Agent = audit.SYSTEM,
) -> RunResult:
    """Parse and store each unit in its own transaction; unreadable units are listed.

    An :class:`IngestError` from a loader (malformed JSON, not UTF-8, a wrong
    resourceType) stores nothing for that unit and is reported; the other units go on.
    So does any other failure of one unit: a parser bug (reported as an internal error)
    or a database refusal of its writes (rolled back). A folder is never left with its
    first files committed, the rest unread and no report. Only a lost connection to the
    database stops the run (every later unit would fail the same way).
    """
    result = RunResult(IngestReport(source=source, location=location))
    # Logs name a unit by its place in the run, never by its name: file names can be
    # patients' names (Synthea writes Given_Family_<uuid>.json). The run's report, read by
    # whoever ran it, names the file.
    for index, (name, load) in enumerate(units, 1):
        try:
            unit = load()
        except IngestError as exc:
            result.errors.append(str(exc))
            logger.warning("ingest unit unreadable", extra={"source": source, "unit_index": index})
            continue
        except Exception as exc:  # a parser bug must not abort the whole run
            result.errors.append(f"{name}: could not be read (internal error {error_kind(exc)})")
            logger.error(
                "ingest unit failed",
                extra={"source": source, "unit_index": index, "error": error_kind(exc)},
            )
            continue
        try:
            with session_scope(factory) as session:
                report = store_unit(
                    session, unit, source=source, cipher=cipher, now=now, agent=agent
                )
        except (OperationalError, InterfaceError):
            raise  # the database is gone: stop, the CLI says so in one line
        except SQLAlchemyError as exc:
            result.errors.append(f"{name}: not stored (database error {error_kind(exc)})")
            logger.error(
                "ingest unit not stored",
                extra={"source": source, "unit_index": index, "error": error_kind(exc)},
            )
            continue
        result.report.merge(report)
        result.units += 1
    return result
