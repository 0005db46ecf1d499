"""Each task searches its own documented budget unless the caller gives one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vitalcast.modeling.datasets import Dataset
from vitalcast.modeling.tasks import TASKS, get_task
from vitalcast.modeling.train import (
    FAST_BUDGET,
    READMISSION_BUDGET,
    SEARCH_BUDGET,
    TASK_BUDGETS,
    fit_model,
    search_budget,
)


def test_readmission_has_its_own_budget_and_the_others_keep_theirs() -> None:
    assert search_budget(get_task("readmission-30d")) is READMISSION_BUDGET
    for name in TASKS:
        if name != "readmission-30d":
            assert search_budget(get_task(name)) is SEARCH_BUDGET
    assert set(TASK_BUDGETS) <= set(TASKS)


def test_budgets_are_fixed_and_named_once() -> None:
    for budget in (SEARCH_BUDGET, READMISSION_BUDGET, FAST_BUDGET):
        names = [spec.name for spec in budget]
        assert names
        assert len(names) == len(set(names))
        assert {spec.family for spec in budget} <= {"lr", "hgb", "rf"}


def _table(n: int = 240, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    colour = rng.choice(["red", "blue"], size=n)
    y = (x + (colour == "red") + rng.normal(scale=1.0, size=n) > 0.5).astype(int)
    return Dataset(
        X=pd.DataFrame({"x": x, "colour": colour}),
        y=y,
        groups=np.arange(n).astype(str),
        meta=pd.DataFrame(index=range(n)),
        numeric=["x"],
        categorical=["colour"],
    )


def test_fit_model_searches_the_task_budget_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    task = get_task("tabular")
    monkeypatch.setitem(TASK_BUDGETS, "tabular", FAST_BUDGET[:1])
    default = fit_model(_table(), task, n_splits=3)
    assert [row["candidate"] for row in default.search] == [FAST_BUDGET[0].name]
    given = fit_model(_table(), task, n_splits=3, budget=FAST_BUDGET)
    assert [row["candidate"] for row in given.search] == [s.name for s in FAST_BUDGET]
