"""Set-A-only evidence for icu-mortality's calibration by the hour of the stay: is the served
risk calibrated at every landmark, and between the landmarks it was fitted at?

The served model keeps one calibration map per landmark (3 h, which only calibrates, and
the training landmarks 6, 12, 24, 48 h) and blends the two around a row's hour in
log-odds (``modeling/landmark_calibration.py``). This compares it, at the landmarks and at
hours no map was fitted at (2 h, before the first map, and 9, 18 and 36 h, between them),
with a single map fitted at the 48 h rows (what was served before). Both are cross-fitted
on the same five patient-grouped folds of set A (seed 2012, made as training makes them)
from the out-of-fold scores of the served candidate (hgb-regularised), whose fold models
are fitted on the training landmarks' rows only, as training does. Printed per hour: log
loss, calibration slope and intercept, and the challenge's H. Nothing is chosen here and
set B and set C are never read.

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
from vitalcast.modeling.calibration import fit_calibrator
from vitalcast.modeling.landmark_calibration import TIME_FEATURE, blend_landmark_maps
from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.tasks import get_task
from vitalcast.modeling.train import (
    DEFAULT_SEED,
    HGB_REGULARISED,
    grouped_folds_around,
    make_pipeline,
    raw_scores,
)

METHOD = "spline"  # the map the served model uses (docs/model-report.md)
BETWEEN_H = (2.0, 9.0, 18.0, 36.0)  # hours before and between landmarks, never fitted at


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", action="store_true", help="write bench/results/<name>.json")
    args = ap.parse_args()
    load_at_start = os.getloadavg()[0]
    root = Path(os.environ.get("VITALCAST_SHARED_DATA", "../shared/data")) / "physionet2012"
    task = get_task("icu-mortality")
    marks = task.all_landmarks_h  # every landmark with a calibration map
    ds = load_dataset(
        task,
        session=None,
        data=root / "set-a.tar.gz",
        outcomes=root / "Outcomes-a.txt",
        landmarks_h=tuple(sorted(marks + BETWEEN_H)),
    )
    numeric = [c for c in ds.numeric if ds.X[c].notna().any()]
    categorical = [c for c in ds.categorical if ds.X[c].notna().any()]
    X, y = ds.X[numeric + categorical], ds.y
    hour = ds.meta["landmark_h"].to_numpy(dtype=float)
    assert np.array_equal(X[TIME_FEATURE].to_numpy(dtype=float), hour)
    trained_at = np.isin(hour, task.landmarks_h)
    folds = grouped_folds_around(y, ds.groups, trained_at, 5, DEFAULT_SEED)
    scores = np.zeros(len(y))
    for tr, te in folds:
        tr = tr[trained_at[tr]]
        pipe = make_pipeline(HGB_REGULARISED, numeric, categorical, DEFAULT_SEED)
        scores[te] = raw_scores(pipe.fit(X.iloc[tr], y[tr]), X.iloc[te])
    primary = task.primary_landmark_h
    everything = np.arange(len(y))
    single, served = np.zeros(len(y)), np.zeros(len(y))
    for _tr, te in folds:
        fit = np.setdiff1d(everything, te)
        at_primary = fit[hour[fit] == primary]
        single[te] = fit_calibrator(METHOD, scores[at_primary], y[at_primary]).predict(scores[te])
        maps = [
            fit_calibrator(METHOD, scores[fit[hour[fit] == h]], y[fit[hour[fit] == h]])
            for h in marks
        ]
        probas = np.stack([m.predict(scores[te]) for m in maps])
        served[te] = blend_landmark_maps(probas, hour[te], marks)
    print(f"load average at start: {load_at_start:.2f}; {len(np.unique(ds.groups))} patients")
    figures: dict[str, dict[str, dict[str, float]]] = {}
    print("| hour | map | log loss | calibration slope | intercept | H |")
    print("|---|---|---|---|---|---|")
    for h in np.unique(hour):
        rows = hour == h
        for key, name, p in (
            ("single", f"one map fitted at {primary:g} h", single),
            ("served", "per landmark, blended (served)", served),
        ):
            yy, pp = y[rows], p[rows]
            m = {
                "log_loss": float(log_loss(yy, pp)),
                "calibration_slope": ev.calibration_slope(yy, pp),
                "calibration_intercept": ev.calibration_intercept(yy, pp),
                "hl_h": ev.hosmer_lemeshow_h(yy, pp),
            }
            figures.setdefault(key, {})[f"{h:g}"] = m
            where = "" if h in marks else " (no map fitted here)"
            print(
                f"| {h:g}{where} | {name} | {m['log_loss']:.4f} | {m['calibration_slope']:.3f}"
                f" | {m['calibration_intercept']:.3f} | {m['hl_h']:.1f} |"
            )
    if args.save:
        _results.save("landmark_calibration", figures, load_at_start=load_at_start)


if __name__ == "__main__":
    main()
