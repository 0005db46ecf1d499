"""Serving workers pin OpenMP and BLAS pools to one thread."""

from __future__ import annotations

import os

import pytest
import sklearn.ensemble  # noqa: F401  (loads scikit-learn's OpenMP runtime)
from threadpoolctl import threadpool_info, threadpool_limits

from vitalcast.serving import threads


def test_limit_native_threads_caps_every_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in threads._ENV_VARS:
        monkeypatch.setenv(var, os.environ.get(var, "2"))
    original = threadpool_limits(limits=None)
    try:
        pools = threads.limit_native_threads(1)
        apis = {p["user_api"] for p in pools}
        assert {"openmp", "blas"} <= apis
        assert all(p["num_threads"] == 1 for p in threadpool_info())
        assert os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        threads._active_limits.clear()
        original.restore_original_limits()
