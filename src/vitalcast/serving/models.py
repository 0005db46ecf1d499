"""Keep each process's champion and challenger current, and store no prediction of a
retired one.

A watcher thread per process re-reads the registry aliases every few seconds; when the
champion or challenger changes (``vitalcast models promote``/``rollback``), it loads and
verifies the new artifact first and then swaps the reference in one assignment. Requests
already holding the old predictor finish with it, so the switch fails no request.

The watcher alone left a window: for up to one polling interval (plus the load) after a
promotion, a process could score a stay with the retired champion and store that
prediction after the promotion's rescoring pass had scored the stay with the new one; the
stay then showed the retired model's risk until its next observation. So a transaction
that stores a stay's prediction also confirms, in that transaction, that its models are
still the registry's (:func:`scoring_models`), and reloads them at once when not.

Why that is exact on PostgreSQL: the aliases are read after taking the audit chain lock
(:func:`vitalcast.security.audit.lock_chain`), which every alias change holds from its
audit event to its commit (promote, rollback, the first registration of a task, retrain;
each is audited in its own transaction). So a scoring transaction either reads the aliases
after the change committed and scores with the new model, or commits before the change
can; the command that changed the champion rescores every stay in progress after its
commit, which overwrites that prediction. The read is a statement of its own after the
lock: under READ COMMITTED a statement sees what was committed when it started, so a read
inside the locking statement would see the aliases from before the wait.

Why not a lock of its own (advisory, shared for scoring, exclusive for alias changes):
both sides already take the chain lock, and in both orders (ingestion writes its audit
event before scoring, ``POST /predict`` after; ``promote`` changes the alias before its
audit event, ``retrain`` audits the registration long before promoting), so a second lock
would deadlock them unless every side took the chain lock first, and then it would add
nothing. Nor ``SELECT ... FOR SHARE`` of the alias rows: every scoring transaction would
write a multixact on the same few rows. What it costs: one read of the task's registry
rows per scoring transaction, and ``POST /predict`` of a stored patient takes the chain
lock before scoring rather than after; ingestion holds it from its audit event anyway.

SQLite (the single-process demo) has no advisory locks: the read still catches a change
committed by another process before it, not one committed between it and the commit.

A reload takes seconds. To keep it out of the locked section, a caller that will lock
calls :func:`refresh_if_stale` first, before any lock; :func:`scoring_models` then reloads
only for a change committed in between.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.modeling.tables import ModelVersion
from vitalcast.security import audit
from vitalcast.serving.predictor import (
    DEFAULT_TASK,
    Predictor,
    alias_versions,
    aliases_in,
    load_predictor,
)
from vitalcast.serving.state import AppState

logger = logging.getLogger(__name__)

RELOAD_INTERVAL_S = 5.0

_SLOTS = (("champion", "predictor"), ("challenger", "challenger"))


def refresh_models(state: AppState, task: str = DEFAULT_TASK) -> bool:
    """Reload any alias whose version changed; True when something was swapped."""
    with state.reload_lock:  # a request and the watcher may notice the same change
        current = alias_versions(state.sessions, task)
        changed = False
        for alias, attr in _SLOTS:
            loaded = getattr(state, attr)
            wanted = current.get(alias)
            have = loaded.model_version_id if loaded is not None else None
            if wanted == have:
                state.unloadable.pop(alias, None)
                continue
            new = load_predictor(state.sessions, task, alias) if wanted is not None else None
            if wanted is not None and new is None:
                state.unloadable[alias] = wanted  # failed verification: keep the previous
                continue
            setattr(state, attr, new)
            state.unloadable.pop(alias, None)
            changed = True
            logger.info("model alias switched", extra={"alias": alias, "model_version_id": wanted})
        return changed


def refresh_if_stale(session: Session, state: AppState, task: str = DEFAULT_TASK) -> None:
    """Reload now if ``session`` reads other aliases than this process has loaded.

    A version that already failed to load here is not retried (the watcher retries it
    each interval): a request must not pay a failing load every time.
    """
    if _stale(state, aliases_in(session, task)):
        refresh_models(state, task)


def scoring_models(
    session: Session, state: AppState, task: str = DEFAULT_TASK
) -> tuple[Predictor | None, Predictor | None]:
    """The champion and challenger to score with in ``session``'s transaction: the
    registry's as that transaction sees them, which no alias change can alter before it
    commits (see the module docstring). The previous model when the registry's failed to
    load in this process, as the watcher keeps it."""
    audit.lock_chain(session)
    refresh_if_stale(session, state, task)
    return state.predictor, state.challenger


def _stale(state: AppState, current: dict[str, int]) -> bool:
    for alias, attr in _SLOTS:
        loaded = getattr(state, attr)
        wanted = current.get(alias)
        have = loaded.model_version_id if loaded is not None else None
        if wanted != have and (wanted is None or state.unloadable.get(alias) != wanted):
            return True
    return False


def refresh_task_champions(state: AppState) -> bool:
    """Load, swap or drop the champions of the tasks scored only on request.

    ``icu-mortality`` is scored on every stay as data arrives (:func:`refresh_models`);
    the other tasks (``readmission-30d``, ``tabular``) have no stream of data in the store
    to score, so their champions answer ``POST /predict`` and ``/predict/batch`` only.
    One read of the registry finds every such champion; a version that failed to load is
    retried at the next call, and the previous champion is kept meanwhile, as for the
    stay task. True when something was swapped.

    Only the watcher thread (and the app factory, before it starts) calls this, so no
    lock: the new mapping is built aside and swapped in one assignment, and requests read
    the old one or the new one, never one being changed. Loading (seconds, for the
    explainer) thus never holds ``reload_lock``, which the stay task's scoring waits on.
    """
    with state.sessions() as session:
        wanted = dict(
            session.execute(
                select(ModelVersion.task, ModelVersion.id).where(
                    ModelVersion.alias == "champion", ModelVersion.task != DEFAULT_TASK
                )
            ).all()
        )
    current = state.task_champions
    champions: dict[str, Predictor] = {}  # a task demoted with no successor: 503 from now on
    for task, version_id in wanted.items():
        loaded = current.get(task)
        if loaded is None or loaded.model_version_id != version_id:
            new = load_predictor(state.sessions, task, "champion")
            if new is not None and new.model_version_id == version_id:
                logger.info("model alias switched", extra={"alias": "champion", "task": task})
                loaded = new
            # else: failed verification (logged) or promoted again meanwhile: keep the old
        if loaded is not None:
            champions[task] = loaded
    changed = champions != current
    state.task_champions = champions
    return changed


def start_model_watcher(
    state: AppState, interval_s: float = RELOAD_INTERVAL_S, *, other_tasks: bool = False
) -> threading.Thread:
    """Start the per-process watcher thread (daemon; stops with the process); with
    ``other_tasks``, it also keeps the request-only tasks' champions current."""

    def loop() -> None:
        while not state.stopping.wait(interval_s):
            try:
                refresh_models(state)
                if other_tasks:
                    refresh_task_champions(state)
            except Exception:  # the next tick retries; a transient DB error must not kill it
                logger.exception("model refresh failed")

    thread = threading.Thread(target=loop, daemon=True, name="vitalcast-models")
    thread.start()
    return thread
