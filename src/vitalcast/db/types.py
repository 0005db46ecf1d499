"""Column types shared by the table modules."""

from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, Integer

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a real bigint.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def new_public_id() -> str:
    """An opaque id for URLs and APIs (never an MRN or a database sequence number)."""
    return uuid.uuid4().hex
