"""Database foundation: declarative base, engine and session helpers, migrations."""

from vitalcast.db.base import Base, UTCDateTime, utcnow
from vitalcast.db.session import create_db_engine, session_scope, upgrade_database

__all__ = ["Base", "UTCDateTime", "create_db_engine", "session_scope", "upgrade_database", "utcnow"]
