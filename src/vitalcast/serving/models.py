"""Keep each process's champion and challenger current without restarts.

A watcher thread per process re-reads the registry aliases every few seconds; when the
champion or challenger changes (``vitalcast models promote``/``rollback``), it loads and
verifies the new artifact first and then swaps the reference in one assignment. Requests
already holding the old predictor finish with it, so the switch fails no request, and
every worker serves the new model within one polling interval.
"""

from __future__ import annotations

import logging
import threading

from vitalcast.serving.predictor import DEFAULT_TASK, alias_versions, load_predictor
from vitalcast.serving.state import AppState

logger = logging.getLogger(__name__)

RELOAD_INTERVAL_S = 5.0


def refresh_models(state: AppState, task: str = DEFAULT_TASK) -> bool:
    """Reload any alias whose version changed; True when something was swapped."""
    current = alias_versions(state.sessions, task)
    changed = False
    for alias, attr in (("champion", "predictor"), ("challenger", "challenger")):
        loaded = getattr(state, attr)
        wanted = current.get(alias)
        have = loaded.model_version_id if loaded is not None else None
        if wanted == have:
            continue
        new = load_predictor(state.sessions, task, alias) if wanted is not None else None
        if wanted is not None and new is None:
            continue  # failed verification: keep serving the previous model
        setattr(state, attr, new)
        changed = True
        logger.info("model alias switched", extra={"alias": alias, "model_version_id": wanted})
    return changed


def start_model_watcher(state: AppState, interval_s: float = RELOAD_INTERVAL_S) -> threading.Thread:
    """Start the per-process watcher thread (daemon; stops with the process)."""

    def loop() -> None:
        while not state.stopping.wait(interval_s):
            try:
                refresh_models(state)
            except Exception:  # the next tick retries; a transient DB error must not kill it
                logger.exception("model refresh failed")

    thread = threading.Thread(target=loop, daemon=True, name="vitalcast-models")
    thread.start()
    return thread
