"""Set-A-only evidence for the next calibration step of icu-mortality: is one calibration
map, fitted at the 48 h landmark (what is served), calibrated at 6, 12 and 24 h too?

The served model scores every hour of a stay, but its calibration map is fitted on the
48 h rows only (the task's primary landmark, chosen by cross-fitted log loss there). This
compares it with one map per landmark, both cross-fitted on the same five patient-grouped
folds of set A (seed 2012) from the same out-of-fold scores of the served candidate
(hgb-regularised), and prints, per landmark, log loss, calibration slope and intercept,
and the challenge's H. Nothing is chosen here and set B and set C are never read.

    VITALCAST_SHARED_DATA=/work/shared/data OMP_NUM_THREADS=2 \\
        .venv/bin/python bench/landmark_calibration.py [--save]

``--save`` writes bench/results/landmark_calibration.json for docs/project-report.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import log_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _results
from vitalcast.modeling import evaluate as ev
from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.tasks import get_task
from vitalcast.modeling.train import (
    DEFAULT_SEED,
    HGB_REGULARISED,
    fit_calibrator,
    grouped_folds,
    make_pipeline,
    raw_scores,
)

METHOD = "spline"  # the map the served model uses (docs/model-report.md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", action="store_true", help="write bench/results/<name>.json")
    args = ap.parse_args()
    load_at_start = os.getloadavg()[0]
    root = Path(os.environ.get("VITALCAST_SHARED_DATA", "../shared/data")) / "physionet2012"
    task = get_task("icu-mortality")
    ds = load_dataset(
        task, session=None, data=root / "set-a.tar.gz", outcomes=root / "Outcomes-a.txt"
    )
    numeric = [c for c in ds.numeric if ds.X[c].notna().any()]
    categorical = [c for c in ds.categorical if ds.X[c].notna().any()]
    X, y = ds.X[numeric + categorical], ds.y
    folds = grouped_folds(y, ds.groups, 5, DEFAULT_SEED)
    scores = np.zeros(len(y))
    for tr, te in folds:
        pipe = make_pipeline(HGB_REGULARISED, numeric, categorical, DEFAULT_SEED)
        scores[te] = raw_scores(pipe.fit(X.iloc[tr], y[tr]), X.iloc[te])
    landmark = ds.meta["landmark_h"].to_numpy()
    primary = task.primary_landmark_h
    everything = np.arange(len(y))
    served, own = np.zeros(len(y)), np.zeros(len(y))
    for _tr, te in folds:
        fit = np.setdiff1d(everything, te)
        at_primary = fit[landmark[fit] == primary]
        served[te] = fit_calibrator(METHOD, scores[at_primary], y[at_primary]).predict(scores[te])
        for h in np.unique(landmark):
            fit_h, te_h = fit[landmark[fit] == h], te[landmark[te] == h]
            own[te_h] = fit_calibrator(METHOD, scores[fit_h], y[fit_h]).predict(scores[te_h])
    print(f"load average at start: {load_at_start:.2f}; {len(np.unique(ds.groups))} patients")
    figures: dict[str, dict[str, dict[str, float]]] = {}
    print("| landmark (h) | map | log loss | calibration slope | intercept | H |")
    print("|---|---|---|---|---|---|")
    for h in np.unique(landmark):
        rows = landmark == h
        for key, name, p in (
            ("served", f"fitted at {primary:g} h (served)", served),
            ("own", "its own", own),
        ):
            yy, pp = y[rows], p[rows]
            m = {
                "log_loss": float(log_loss(yy, pp)),
                "calibration_slope": ev.calibration_slope(yy, pp),
                "calibration_intercept": ev.calibration_intercept(yy, pp),
                "hl_h": ev.hosmer_lemeshow_h(yy, pp),
            }
            figures.setdefault(key, {})[f"{h:g}"] = m
            print(
                f"| {h:g} | {name} | {m['log_loss']:.4f} | {m['calibration_slope']:.3f}"
                f" | {m['calibration_intercept']:.3f} | {m['hl_h']:.1f} |"
            )
    if args.save:
        _results.save("landmark_calibration", figures, load_at_start=load_at_start)


if __name__ == "__main__":
    main()
