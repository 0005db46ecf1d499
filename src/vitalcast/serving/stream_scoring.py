"""Rescore stays from the processes that receive bedside data (``vitalcast stream mqtt``,
``vitalcast listen hl7``) and after file imports (``vitalcast ingest fhir``/``hl7``).

The web server rescores the stays a ``POST /api/v1/observations`` touched inside the
request's transaction. The MQTT consumer and the MLLP listener run without a Flask app, so
:func:`open_stream_scorer` builds the same :class:`~vitalcast.serving.state.AppState`
(pool, cipher, champion and challenger kept current by the model watcher, and an
:class:`~vitalcast.serving.realtime.EventBus` that announces each risk to every server's
ward streams, by ``pg_notify`` in the scoring transaction on PostgreSQL), and scoring goes
through the same :func:`~vitalcast.serving.rescoring.rescore_encounters`, which reads the
registry aliases under the audit chain lock: a promotion's rescoring pass cannot be
overtaken by a retired model here either.

Two things differ from the HTTP path, on purpose:

- Scoring runs after the ingest transaction has committed and its messages are
  acknowledged, in a transaction of its own. A stored reading is the record; a risk is
  derived from it and can be computed again. So a scoring failure (a bug, a model that
  cannot score, a lost connection) never rolls back, delays or loses readings (a device
  batch rolled back would be redelivered and fail again, forever): it is logged without
  identifiers, counted (``vitalcast_stream_rescore_failures``) and the stays are tried
  again after ``retry_s``. One stay that fails does not hold back the others of its flush.
- Coalescing. Monitors publish every few seconds, features use hourly windows and
  rescoring a stay costs some 6-8 ms, so a stay is scored at most once per
  ``interval_s``. Its first data after a quiet interval is scored at the next flush (at
  once: the ward sees new data without waiting); data arriving within the interval makes
  it due when the interval ends, and a flush then scores it whether or not another message
  came. The caller flushes often (the MQTT loop wakes at least every 0.2 s; the MLLP
  listener runs :meth:`StreamScorer.start_background`).

A clean stop scores every waiting stay. Stays that were waiting when the process was
killed (SIGKILL, a node lost) are found at the next start by :meth:`StreamScorer.catch_up`:
their readings were committed, so the database says which stays hold an observation
stored after their newest champion risk.

A file import (:func:`rescore_after_import`) uses the same scorer once, after its last
commit: every stay whose data it changed is scored in one flush, with no interval and
no retry (the command ends; it reports the stays that failed and exits 3).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.config import Settings
from vitalcast.db.session import session_scope
from vitalcast.errors import error_kind
from vitalcast.monitoring.metrics import observe_stream_rescore_failure
from vitalcast.monitoring.worker_http import Heartbeat
from vitalcast.security.crypto import FieldCipher
from vitalcast.serving.models import refresh_if_stale, refresh_models, start_model_watcher
from vitalcast.serving.realtime import EventBus
from vitalcast.serving.rescoring import rescore_encounters, stays_with_unscored_data
from vitalcast.serving.scoring import served_population
from vitalcast.serving.state import AppState

logger = logging.getLogger(__name__)

# After a failure, a stay waits this long before its next attempt: a model that cannot
# score (or a database that is down) would otherwise be retried, and logged, at every
# flush, five times a second.
RETRY_S = 5.0
# How often the background flusher (MLLP) looks for stays that became due.
TICK_S = 0.2


@dataclass
class ScoringStats:
    """Running totals of one process's stream scoring."""

    scored: int = 0  # stays a champion scored (in progress only); several per transaction
    failed: int = 0  # failed attempts, counted per stay; retried unless retry_s is None


class StreamScorer:
    """Rescores the stays a stream stored data for, coalesced per stay (thread-safe)."""

    def __init__(
        self,
        state: AppState,
        *,
        source: str,
        interval_s: float,
        retry_s: float | None = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.source = source  # the metric's label: "mqtt" or "hl7v2"
        self.interval_s = interval_s
        self.retry_s = retry_s  # None: a failed stay is dropped (a one-shot import)
        self.clock = clock
        self.stats = ScoringStats()
        self.wake = threading.Event()
        self._lock = threading.Lock()  # guards the two dicts below
        self._flushing = threading.Lock()  # one flush at a time
        self._due: dict[int, float] = {}  # stay -> earliest time to score it
        self._attempted: dict[int, float] = {}  # stay -> last attempt, within the interval
        self._thread: threading.Thread | None = None
        # Beaten at every flush, which the process's loop calls at least every TICK_S:
        # the worker endpoint's /healthz reads it (monitoring/worker_http.py).
        self.heartbeat = Heartbeat(clock)

    def touched(self, encounter_ids: Iterable[int]) -> None:
        """Note stays whose data was just committed; each becomes due at once, or when its
        interval since the last attempt ends."""
        now = self.clock()
        with self._lock:
            for encounter_id in encounter_ids:
                if encounter_id in self._due:
                    continue
                last = self._attempted.get(encounter_id, -math.inf)
                self._due[encounter_id] = max(now, last + self.interval_s)
        self.wake.set()

    def catch_up(self) -> int:
        """Make due the stays in progress holding an observation stored after their newest
        champion risk (:func:`~vitalcast.serving.rescoring.stays_with_unscored_data`); how
        many. Call once at start, before the first flush."""
        if self.state.predictor is None:
            return 0  # nothing to score with; a promotion rescores every stay anyway
        with self.state.sessions() as session:
            stale = stays_with_unscored_data(
                session,
                self.state.predictor.task,
                population=served_population(self.state.settings),
            )
        self.touched(stale)
        if stale:
            logger.info(
                "stays with unscored data at start",
                extra={"source": self.source, "stays": len(stale)},
            )
        return len(stale)

    @property
    def pending(self) -> int:
        """Stays waiting to be scored (due now or later)."""
        with self._lock:
            return len(self._due)

    def flush(self, *, everything: bool = False) -> int:
        """Score the stays that are due (all waiting ones with ``everything``, as at a
        clean stop); the number scored. Never raises: failures are logged and retried."""
        self.heartbeat.beat()
        with self._flushing:
            now = self.clock()
            with self._lock:
                due = sorted(e for e, at in self._due.items() if everything or at <= now)
                for encounter_id in due:
                    del self._due[encounter_id]
                    self._attempted[encounter_id] = now
                self._forget_before(now)
            if not due:
                return 0
            scored, failed = self._score(due)
            if failed and self.retry_s is not None:
                with self._lock:
                    for encounter_id in failed:
                        # Data that arrived meanwhile keeps its own (earlier) due time.
                        at = min(self._due.get(encounter_id, math.inf), now + self.retry_s)
                        self._due[encounter_id] = at
            self.stats.scored += scored
            return scored

    def _forget_before(self, now: float) -> None:
        """Drop attempts older than the interval: they no longer delay anything, and a
        ward's turnover would otherwise grow the map for as long as the process runs."""
        stale = [e for e, at in self._attempted.items() if at + self.interval_s <= now]
        for encounter_id in stale:
            del self._attempted[encounter_id]

    def _score(self, due: list[int]) -> tuple[int, set[int]]:
        """Rescore ``due`` in one transaction; on failure, each stay in its own, so that one
        stay's failure does not keep the others unscored. The number of stays scored (not
        those discharged, nor any without a champion) and the stays that failed."""
        try:
            return self._transaction(due), set()
        except Exception as exc:
            first = exc
        scored = 0
        failed: set[int] = set()
        if len(due) > 1 and not _unavailable(first):
            for i, encounter_id in enumerate(due):
                try:
                    scored += self._transaction([encounter_id])
                except Exception as exc:
                    failed.add(encounter_id)
                    if _unavailable(exc):  # every later one would fail the same way
                        failed.update(due[i:])
                        break
        else:
            failed = set(due)
        # The error's class only (its text may quote data), and no stay identifiers.
        logger.error(
            "stream rescoring failed; retrying"
            if self.retry_s is not None
            else "rescoring failed; the stays keep their previous risk",
            extra={
                "source": self.source,
                "stays": len(failed),
                "error": error_kind(first),
                "retry_s": self.retry_s,
            },
        )
        self.stats.failed += len(failed)
        observe_stream_rescore_failure(source=self.source, stays=len(failed))
        return scored, failed

    def _transaction(self, encounter_ids: list[int]) -> int:
        """Rescore in one transaction; the number of stays scored, which is 0 without a
        champion (the stays were not "scored" then, and the totals must not say so)."""
        with session_scope(self.state.sessions) as session:
            # A champion promoted since the watcher's last poll is loaded now, before the
            # lock that rescore_encounters takes (a load under it would stall ingestion).
            refresh_if_stale(session, self.state)
            if self.state.predictor is None:
                return 0  # no champion (or none that loads here): nothing to score
            return len(rescore_encounters(session, self.state, encounter_ids))

    # -- a flusher thread, for callers without a loop of their own (MLLP) -------------
    def start_background(self, tick_s: float = TICK_S) -> threading.Thread:
        """Flush in a daemon thread: at once when :meth:`touched` is called, and every
        ``tick_s`` for stays that became due; stops with :meth:`close`."""

        def loop() -> None:
            while not self.state.stopping.is_set():
                self.wake.wait(tick_s)
                self.wake.clear()
                self.flush()

        self._thread = threading.Thread(target=loop, daemon=True, name="vitalcast-stream-scoring")
        self._thread.start()
        return self._thread

    def close(self) -> None:
        """Stop the flusher and the model watcher, score every waiting stay, then close the
        pool (the caller's engine: call this last)."""
        self.state.stopping.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(30)
        self.flush(everything=True)
        self.state.close()


def _unavailable(exc: BaseException) -> bool:
    """The database cannot be reached (down, restarting): no stay can be scored now."""
    return isinstance(exc, OperationalError | InterfaceError)


def open_stream_scorer(
    settings: Settings,
    sessions: sessionmaker[Session],
    cipher: FieldCipher,
    *,
    source: str,
    clock: Callable[[], float] = time.monotonic,
    watch: bool = True,
    retry_s: float | None = RETRY_S,
) -> StreamScorer:
    """A scorer for a stream process: its champion and challenger loaded (none is fine:
    scoring is then a no-op until one is promoted), the model watcher started (unless
    ``watch`` is False: a one-shot import is scored right away, and each scoring
    transaction reloads a model promoted meanwhile anyway), and risks announced on the
    event bus (publishing only: no listener thread is started)."""
    engine = sessions.kw["bind"]
    assert isinstance(engine, Engine)
    state = AppState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        cipher=cipher,
        bus=EventBus(engine, settings.redis_url),
    )
    refresh_models(state)
    if watch:
        start_model_watcher(state)
    return StreamScorer(
        state,
        source=source,
        interval_s=settings.stream_rescore_interval_s,
        retry_s=retry_s,
        clock=clock,
    )


@dataclass(frozen=True)
class ImportRescoring:
    """What :func:`rescore_after_import` did, for the import's report and exit code."""

    stays: int = 0  # stays in progress scored with the champion
    failed: int = 0  # stays whose scoring failed (their data is stored all the same)
    # Why no stay was scored, when none could be: "no_champion", "champion_not_loaded",
    # "no_new_data", or "not_requested" (``--no-rescore``).
    skipped: str | None = None

    def to_dict(self) -> dict[str, int | str | None]:
        return {"stays": self.stays, "failed": self.failed, "skipped": self.skipped}


def rescore_after_import(
    settings: Settings,
    sessions: sessionmaker[Session],
    cipher: FieldCipher,
    encounter_ids: Iterable[int],
    *,
    source: str,
) -> ImportRescoring:
    """Rescore the stays whose data a file import changed, after its commits.

    One flush of a :class:`StreamScorer` (same models, events and per-stay fallback as the
    stream processes), each transaction its own: a failure is logged without identifiers
    and counted, never raised, so the stored data is neither rolled back nor hidden behind
    an error. Closes ``sessions``' pool. A champion registered but not loadable here counts
    as a failure (the stays keep a risk older than their data); no champion at all does
    not (nothing is due to be scored until one is promoted, which rescores every stay).
    """
    ids = sorted(set(encounter_ids))
    if not ids:
        return ImportRescoring(skipped="no_new_data")
    try:
        scorer = open_stream_scorer(
            settings, sessions, cipher, source=source, watch=False, retry_s=None
        )
    except Exception as exc:  # the models could not be read: the data is stored anyway
        logger.error(
            "rescoring failed; the stays keep their previous risk",
            extra={"source": source, "stays": len(ids), "error": error_kind(exc)},
        )
        return ImportRescoring(failed=len(ids))
    try:
        scorer.touched(ids)
        scorer.flush(everything=True)
    finally:
        scorer.close()
    if scorer.state.predictor is None:
        if "champion" in scorer.state.unloadable:
            return ImportRescoring(failed=len(ids), skipped="champion_not_loaded")
        return ImportRescoring(skipped="no_champion")
    return ImportRescoring(stays=scorer.stats.scored, failed=scorer.stats.failed)
