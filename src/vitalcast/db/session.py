"""Engine creation, one-unit-of-work sessions and schema upgrades."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.errors import ConfigError

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def create_db_engine(url: str, *, check: bool = True, **kwargs: Any) -> Engine:
    """Create an engine; with ``check``, fail fast with one line if it is unreachable.

    SQLite gets WAL mode and foreign keys on, so that the embedded demo behaves like
    PostgreSQL where it matters (referential integrity, readers beside one writer).

    ``hide_parameters`` is on: SQLAlchemy otherwise puts a failed statement's bound
    parameters into the exception text (``[parameters: ...]``), and those are patient data
    (a CSV row's patient number inside a source reference, a clinician's free-text
    comment), which would then reach server logs and CLI error output.
    """
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    else:
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("pool_size", 5)
        kwargs.setdefault("max_overflow", 10)
        engine = create_engine(url, **kwargs)
    if check:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            engine.dispose()
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise ConfigError(
                f"VITALCAST_DATABASE_URL: cannot connect to the database ({reason})"
            ) from None
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


_AFTER_COMMIT = "vitalcast_after_commit"


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` when ``session``'s transaction commits; never if it rolls back.

    For counters of what was stored (ingested records, predictions): counted at the write,
    a unit of work rolled back afterwards (a failed rescoring, an error at commit, a
    request answered 4xx) would still count as stored.
    """
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: the outer transaction may still roll back
    for callback in session.info.pop(_AFTER_COMMIT, []):
        callback()


@event.listens_for(Session, "after_transaction_end")
def _drop_after_rollback(session: Session, transaction: Any) -> None:
    # Fires after a commit's after_commit (nothing left then) or a rollback; a savepoint
    # (nested) ending leaves the outer transaction's callbacks in place.
    if transaction.parent is None and not transaction.nested:
        session.info.pop(_AFTER_COMMIT, None)


def upgrade_database(engine: Engine, revision: str = "head", *, cipher: Any = None) -> None:
    """Run Alembic migrations up to ``revision`` on this engine.

    ``cipher`` (a :class:`~vitalcast.security.crypto.FieldCipher`) is handed to revisions
    that encrypt existing data (0007, the quarantine's raw items); without it they use the
    configured settings' keys, and stop with a message if there are none.
    """
    _alembic(engine, revision, cipher, "upgrade")


def downgrade_database(engine: Engine, revision: str, *, cipher: Any = None) -> None:
    """Run Alembic migrations down to ``revision`` on this engine (tests, recovery)."""
    _alembic(engine, revision, cipher, "downgrade")


def _alembic(engine: Engine, revision: str, cipher: Any, direction: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["field_cipher"] = cipher
        getattr(command, direction)(cfg, revision)
