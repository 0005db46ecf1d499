"""Per-process application state, created once by the app factory."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import Flask, current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.config import Settings
from vitalcast.security.crypto import FieldCipher

if TYPE_CHECKING:
    from vitalcast.serving.predictor import Predictor
    from vitalcast.serving.realtime import EventBus


@dataclass
class AppState:
    """What every request needs: settings, the database, the cipher and the model."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    cipher: FieldCipher
    predictor: Predictor | None = None  # the champion
    challenger: Predictor | None = None  # scored in shadow, never shown to clinicians
    # Champions of the tasks scored only on request (readmission-30d, tabular), by task;
    # replaced whole by the watcher (serving/models.refresh_task_champions), never mutated.
    task_champions: dict[str, Predictor] = field(default_factory=dict)
    bus: EventBus | None = None
    # One model reload at a time (the watcher and scoring requests both reload).
    reload_lock: threading.Lock = field(default_factory=threading.Lock)
    # Alias -> the version that failed to load here: scoring does not retry it on every
    # request (the watcher does, each interval), and keeps the previous model meanwhile.
    unloadable: dict[str, int] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        """Stop the background threads (model watcher, event bus) and close the pool: for
        an app built outside a server (tests, benchmarks, document generation)."""
        self.stopping.set()
        if self.bus is not None:
            self.bus.close()
        self.engine.dispose()


def init_state(app: Flask, state: AppState) -> None:
    app.extensions["vitalcast"] = state


def get_state(app: Flask | None = None) -> AppState:
    """The state of ``app`` (default: the current app)."""
    target = app if app is not None else current_app
    state: AppState = target.extensions["vitalcast"]
    return state
