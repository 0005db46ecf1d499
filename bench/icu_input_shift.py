"""Do set B's inputs differ from set A's? The drift monitor's own test, outcomes unread.

docs/model-report.md finds icu-mortality less well calibrated on set B (H 66.6) than in
set-A cross-validation (H 13). A calibration gap has two kinds of cause: the model, or
inputs that differ (another population, a unit or parsing difference). This separates
them without looking at set B's outcomes: every feature of set B's one-per-stay 48 h
rows is compared with set A's by :func:`vitalcast.monitoring.drift.compare`, exactly as
`vitalcast monitor drift` compares live data with a model's training profile (PSI bands
and a chi-squared test of the binned counts, the missing rate, KS on the grid).
Outcomes-b.txt is passed only because the loader reads stays and labels together; the
labels are dropped unread. Not a test; set C is never read.

    VITALCAST_SHARED_DATA=/work/shared/data OMP_NUM_THREADS=2 \\
        .venv/bin/python bench/icu_input_shift.py [--save]

``--save`` writes bench/results/icu_input_shift.json for docs/project-report.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _results
from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.tasks import get_task
from vitalcast.monitoring.drift import ALPHA, compare, reference_profile

LANDMARK_H = 48.0  # the evaluation protocol: one prediction per stay at 48 h


def features(root: Path, part: str) -> pd.DataFrame:
    """Set ``part``'s feature rows at 48 h (its labels are not kept)."""
    dataset = load_dataset(
        get_task("icu-mortality"),
        session=None,
        data=root / f"set-{part}.tar.gz",
        outcomes=root / f"Outcomes-{part}.txt",
        landmarks_h=(LANDMARK_H,),
    )
    return dataset.X


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help="write bench/results/ too")
    save = parser.parse_args().save
    load_at_start = os.getloadavg()[0]
    root = Path(os.environ.get("VITALCAST_SHARED_DATA", "../shared/data")) / "physionet2012"
    a, b = features(root, "a"), features(root, "b")
    drifts = {
        name: compare(reference_profile(a[name].tolist()), b[name].tolist()) for name in a.columns
    }
    severities = Counter(d.severity for d in drifts.values())
    print(f"features compared: {len(drifts)} (set A {len(a)} stays, set B {len(b)} stays)")
    print("drift monitor verdicts:", dict(sorted(severities.items())))
    flagged = {n: d for n, d in drifts.items() if d.severity != "none"}
    for name, d in sorted(flagged.items(), key=lambda kv: kv[0]):
        print(f"  {name}: {d.severity}: {'; '.join(d.reasons)}")
    tested = [(n, d) for n, d in drifts.items() if d.chi2_pvalue is not None]
    ranked = sorted(tested, key=lambda kv: (kv[1].chi2_pvalue, kv[0]))[:10]
    print(f"smallest chi-squared p of {len(tested)} tested (alpha {ALPHA} before any correction):")
    for name, d in ranked:
        print(
            f"  {name}: p {d.chi2_pvalue:.3g}, PSI {d.psi:.3f},"
            f" missing {d.missing_rate_reference:.1%} -> {d.missing_rate_recent:.1%}"
        )
    if save:
        significant = sum(1 for _, d in tested if d.chi2_pvalue < ALPHA)
        figures = {
            "features": len(drifts),
            "tested": len(tested),
            "flagged": len(flagged),
            "below_alpha": significant,
            "alpha": ALPHA,
            "max_psi_below_alpha": max(
                (d.psi or 0.0 for _, d in tested if d.chi2_pvalue < ALPHA), default=0.0
            ),
        }
        _results.save("icu_input_shift", figures, load_at_start=load_at_start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
