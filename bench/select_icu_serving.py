"""Set-A-only choice of how icu-mortality is served and calibrated (nested, patient-grouped).

Why: set-A cross-validation gave H 15 but the served model did worse on set B; the
options to fix that must be compared without looking at set B. Outer loop: 5 folds of
set A grouped by patient. On each outer training part the winner's pipeline runs as
``train.py`` runs it (inner 5-fold grouped CV, calibration map on the out-of-fold
scores, threshold on the cross-fitted out-of-fold probabilities); every option is then
scored on the outer part's unseen patients at 48 h. The five parts' predictions are
pooled (4000 stays, the size of set B) for AUROC, H and slope; Event 1 pools the
confusion counts, each part at its own threshold.

Options: serving ``refit`` (one model refitted on the whole training part) or ``ens``
(the inner fold models, each behind the one out-of-fold calibrator, probabilities
averaged); calibration ``chosen`` (choice among every map on all landmarks' or the
primary landmark's rows), ``chosen-primary`` (choice among maps fitted at the primary
landmark only), or one fixed map. Not a test; set B and set C are never read.

    VITALCAST_SHARED_DATA=/work/shared/data OMP_NUM_THREADS=1 \
        .venv/bin/python bench/select_icu_serving.py 7 11
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import log_loss

from vitalcast.modeling import evaluate as ev
from vitalcast.modeling.calibration import CALIBRATION_METHODS, choose_calibration, fit_calibrator
from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.tasks import get_task
from vitalcast.modeling.train import SEARCH_BUDGET, grouped_folds, make_pipeline, raw_scores

WINNER = "hgb-regularised"  # what the full search picks on set A


def crossfit(method: str, rows: str, oof: Any, y: Any, folds: Any, prim: Any) -> Any:
    """Out-of-fold calibrated probabilities: each fold's from a map fitted without it."""
    p = np.zeros(len(y))
    everything = np.arange(len(y))
    for _tr, te in folds:
        idx = np.setdiff1d(everything, te)
        if rows == "primary":
            idx = idx[prim[idx]]
        p[te] = fit_calibrator(method, oof[idx], y[idx]).predict(oof[te])
    return p


def main(seeds: list[int]) -> int:
    root = Path(os.environ.get("VITALCAST_SHARED_DATA", "../shared/data")) / "physionet2012"
    task = get_task("icu-mortality")
    ds = load_dataset(
        task, session=None, data=root / "set-a.tar.gz", outcomes=root / "Outcomes-a.txt"
    )
    spec = next(s for s in SEARCH_BUDGET if s.name == WINNER)
    numeric = [c for c in ds.numeric if ds.X[c].notna().any()]
    categorical = [c for c in ds.categorical if ds.X[c].notna().any()]
    X, y, groups = ds.X[numeric + categorical], ds.y, ds.groups
    prim_all = ds.rows_at(task.primary_landmark_h)
    print(f"load average before: {os.getloadavg()}")
    for seed in seeds:
        t0 = time.perf_counter()
        cals = ["chosen", "chosen-primary", *(f"{m}/primary" for m in CALIBRATION_METHODS)]
        res: dict[tuple[str, str], dict[str, Any]] = {}
        for otr, ote in grouped_folds(y, groups, 5, seed):
            Xtr, ytr, prim = X.iloc[otr].reset_index(drop=True), y[otr], prim_all[otr]
            folds = grouped_folds(ytr, groups[otr], 5, 2012)
            oof = np.zeros(len(ytr))
            members = []
            for tr, te in folds:
                m = make_pipeline(spec, numeric, categorical, 2012).fit(Xtr.iloc[tr], ytr[tr])
                oof[te] = raw_scores(m, Xtr.iloc[te])
                members.append(raw_scores(m, X.iloc[ote]))
            full = make_pipeline(spec, numeric, categorical, 2012).fit(Xtr, ytr)
            s_full = raw_scores(full, X.iloc[ote])
            hold = prim_all[ote]
            yte = y[ote][hold]
            print(
                f"seed {seed}: raw-score sd at 48 h, out-of-fold {oof[prim].std():.3f},"
                f" refit on unseen {s_full[hold].std():.3f}, fold models on unseen"
                f" {np.mean([s[hold].std() for s in members]):.3f}"
            )
            landmark = ds.meta["landmark_h"].to_numpy(dtype=float)[otr]
            choice = choose_calibration(oof, ytr, folds, prim, landmark)
            for c in cals:
                if c == "chosen":
                    method, rows, cf = choice.method, choice.rows, choice.oof_proba
                elif c == "chosen-primary":
                    fits = {
                        mm: crossfit(mm, "primary", oof, ytr, folds, prim)
                        for mm in CALIBRATION_METHODS
                    }
                    loss = {
                        mm: log_loss(ytr[prim], np.clip(q[prim], 1e-15, 1 - 1e-15))
                        for mm, q in fits.items()
                    }
                    method, rows = min(loss, key=loss.__getitem__), "primary"
                    cf = fits[method]
                else:
                    method, rows = c.split("/")
                    cf = crossfit(method, rows, oof, ytr, folds, prim)
                # Scored at 48 h only, where a per-landmark map is the 48 h rows' map.
                per_landmark = rows in ("primary", "landmark")
                fit_rows = prim if per_landmark else np.ones(len(ytr), dtype=bool)
                cal = fit_calibrator(method, oof[fit_rows], ytr[fit_rows])
                thr = ev.choose_threshold(ytr[prim], cf[prim], task.threshold_rule)
                served = {
                    "refit": cal.predict(s_full),
                    "ens": np.mean([cal.predict(s) for s in members], axis=0),
                }
                for name, p in served.items():
                    d = res.setdefault(
                        (name, c), {"p": np.zeros(len(y)), "tp": 0, "fp": 0, "fn": 0}
                    )
                    d["p"][ote] = p
                    pred = p[hold] >= thr
                    d["tp"] += int(np.sum(pred & (yte == 1)))
                    d["fp"] += int(np.sum(pred & (yte == 0)))
                    d["fn"] += int(np.sum(~pred & (yte == 1)))
        for (name, c), d in res.items():
            yy, pp = y[prim_all], d["p"][prim_all]
            tp, fp, fn = d["tp"], d["fp"], d["fn"]
            event1 = min(tp / (tp + fn), tp / (tp + fp))
            print(
                f"seed {seed} {name:5s} {c:24s} AUROC {ev.auroc(yy, pp):.4f}"
                f" H {ev.hosmer_lemeshow_h(yy, pp):6.2f} event1 {event1:.4f}"
                f" slope {ev.calibration_slope(yy, pp):.3f} brier {ev.brier(yy, pp):.4f}"
            )
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]] or [7, 11]))
