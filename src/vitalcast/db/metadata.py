"""Import every table module so that ``Base.metadata`` knows the whole schema."""

from __future__ import annotations

from sqlalchemy import MetaData


def all_metadata() -> MetaData:
    """The complete schema (for Alembic and tests)."""
    from vitalcast.clinical import tables as _clinical  # noqa: F401
    from vitalcast.db.base import Base
    from vitalcast.ingest import tables as _ingest  # noqa: F401
    from vitalcast.modeling import tables as _modeling  # noqa: F401
    from vitalcast.monitoring import tables as _monitoring  # noqa: F401
    from vitalcast.security import tables as _security  # noqa: F401
    from vitalcast.serving import tables as _serving  # noqa: F401
    from vitalcast.web import tables as _web  # noqa: F401

    return Base.metadata
