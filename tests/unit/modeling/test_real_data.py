"""The real-data path on PhysioNet 2012, small enough for CI: train on the first 1000 stays
of set A, validate on the first 1000 stays of set B (never seen), at the 48 h landmark.

The floors are not the issue's targets (those need all of set A and the full search; see
docs/model-report.md). They were derived from a measured run of exactly this test (see
the comments) minus about 2.5 bootstrap standard errors, so that noise does not fail them
but a broken feature, label or calibration path does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from vitalcast.modeling.datasets import Dataset, load_physionet, timeseries_dataset
from vitalcast.modeling.registry import load_model
from vitalcast.modeling.service import train_and_register, validation_metrics
from vitalcast.modeling.tasks import get_task
from vitalcast.modeling.train import FAST_BUDGET

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

TASK = get_task("icu-mortality")
N_STAYS = 1000


def _dataset(root: Path, part: str) -> Dataset:
    stays, labels, groups, notes = load_physionet(
        root / f"set-{part}.tar.gz", root / f"Outcomes-{part}.txt", limit=N_STAYS
    )
    ds = timeseries_dataset(TASK, stays, labels, groups, source=f"set-{part} first {N_STAYS}")
    ds.notes = notes
    return ds


def test_train_on_set_a_subsample_validate_on_set_b(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "physionet2012"
    train = _dataset(root, "a")
    assert len(np.unique(train.groups)) == N_STAYS
    assert 0.08 < train.y.mean() < 0.20  # set A in-hospital mortality is 13.9 %
    out = train_and_register(
        TASK.name,
        session=None,
        registry_dir=tmp_path,
        dataset=train,
        budget=FAST_BUDGET,
        n_splits=3,
        n_boot=0,
    )
    model = load_model(out.artifact_path, out.sha256)
    valid = _dataset(root, "b")
    proba = model.predict_proba(valid.X)
    assert ((proba > 0) & (proba < 1)).all()  # never exactly 0 or 1 (H would explode)
    m = validation_metrics(TASK, valid, proba, model.threshold, n_boot=0)
    assert m["n"] == N_STAYS  # one prediction per stay at 48 h
    # Measured on 2026-11-28 (this exact code path): AUROC 0.812, bootstrap 95 % CI
    # 0.777-0.845 (SE about 0.017 with 139 deaths); floor 0.812 - 2.5 SE.
    assert m["auroc"] > 0.77
    # The model must add value over the bedside score on the same rows (measured: NEWS2
    # 0.706, a gap of 0.106).
    assert m["auroc"] > m["baseline"]["auroc"] + 0.05
    # Calibration in the large on unseen data: mean risk within 3 points of the death rate
    # (measured: 13.1 % predicted, 13.9 % observed).
    assert abs(proba[valid.rows_at(48.0)].mean() - m["prevalence"]) < 0.03
    assert math.isfinite(m["hl_h"])
    # Earlier landmarks are scored too, with less information: lower but still useful
    # (measured: 0.731 at 6 h).
    assert 0.65 < m["by_landmark"]["6"]["auroc"] < m["by_landmark"]["48"]["auroc"]
