"""Pin native thread pools (OpenMP, BLAS) to one thread per serving worker.

Why: scikit-learn's HistGradientBoosting prediction runs an OpenMP ``prange`` and numpy's
matrix products run on OpenBLAS/MKL; each pool sizes itself to the machine's cores. Under
gunicorn every worker process does that, so N workers on C cores start N x C busy threads
for each request. On the 2-core reference machine this oversubscription collapsed gunicorn's
sync workers to about 5 requests per second (issue 5): threads spin-wait for each other and
the scheduler time-slices them. A single-row request has nothing to parallelise anyway, so
one thread per worker process and one worker process per core is the fast and predictable
configuration. The compiled scorer (``serving/scorer.py``) calls no OpenMP code, but
the fallback path and any batch call into scikit-learn do.

Call :func:`limit_native_threads` once per worker process *after* the fork (gunicorn's
``post_fork`` hook, or the app factory when the app is created inside the worker): thread
pools already started in the master are not inherited by forked children. Setting the
environment variables as well covers libraries that read them lazily on first use.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from threadpoolctl import threadpool_info, threadpool_limits

logger = logging.getLogger(__name__)

# Request threads of each gunicorn worker (``vitalcast serve``: gthread workers). A live
# update stream holds one for as long as the browser listens, so the realtime module
# leaves at least one of them to ordinary requests (:class:`~vitalcast.serving.realtime.EventBus`).
REQUEST_THREADS_PER_WORKER = 4

_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# Kept referenced so the limits stay in force for the life of the process.
_active_limits: list[Any] = []


def limit_native_threads(n_threads: int = 1) -> list[dict[str, Any]]:
    """Cap every loaded OpenMP/BLAS pool, and those loaded later, at ``n_threads``.

    Returns threadpoolctl's description of the pools after limiting (for a start-up log).
    """
    for var in _ENV_VARS:
        os.environ[var] = str(n_threads)
    _active_limits.append(threadpool_limits(limits=n_threads))
    pools: list[dict[str, Any]] = threadpool_info()
    logger.info(
        "native thread pools limited to %d thread(s): %s",
        n_threads,
        ", ".join(f"{p.get('internal_api')}={p.get('num_threads')}" for p in pools) or "none",
    )
    return pools


def gunicorn_post_fork(server: Any, worker: Any) -> None:
    """gunicorn ``post_fork`` hook: one native thread per worker (use in a gunicorn config)."""
    limit_native_threads(1)
