"""Alembic environment: runs on the connection handed in by ``upgrade_database``.

Batch mode is on so that the same revisions alter tables on SQLite (the embedded demo)
and on PostgreSQL (production and CI).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from vitalcast.db.metadata import all_metadata

config = context.config
target_metadata = all_metadata()


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise RuntimeError("no connection and no sqlalchemy.url given to Alembic")
        with create_engine(url, hide_parameters=True).begin() as conn:  # no PHI in errors
            _run(conn)
    else:
        _run(connection)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
