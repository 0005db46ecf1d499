"""A small icu-mortality champion for benchmarks that need one scoring (training not timed)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from vitalcast.db.session import session_scope
from vitalcast.modeling.service import train_and_register
from vitalcast.modeling.train import FAST_BUDGET


def train_small_champion(sessions: sessionmaker[Session], registry_dir: Path) -> None:
    """Train on the stored history with the fast search budget and register the result;
    the first version of a task becomes its champion."""
    with session_scope(sessions) as session:
        train_and_register(
            "icu-mortality",
            session=session,
            registry_dir=registry_dir,
            budget=FAST_BUDGET,
            n_splits=3,
            n_boot=20,
        )
