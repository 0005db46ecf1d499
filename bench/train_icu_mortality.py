"""Benchmark: train icu-mortality on PhysioNet 2012 set A end to end, then score set B.

Prints the wall and CPU time of each stage (parse + features at every landmark, search
with cross-validation, calibration, registration), the load average before and after (the
machine is shared: wall time depends on it, CPU time much less), and set B metrics at
48 h. Not a test.

    VITALCAST_SHARED_DATA=/work/shared/data OMP_NUM_THREADS=1 \
        .venv/bin/python bench/train_icu_mortality.py [--save]

``--save`` writes the timings to bench/results/train_icu_mortality.json (the set B
figures of record come from bench/model_report.py, which evaluates a registered model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _results
from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.registry import load_model
from vitalcast.modeling.service import train_and_register, validation_metrics
from vitalcast.modeling.tasks import get_task


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help="write the timings to bench/results")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    root = Path(os.environ.get("VITALCAST_SHARED_DATA", "../shared/data")) / "physionet2012"
    task = get_task("icu-mortality")
    print(f"load average before: {os.getloadavg()}, cores: {os.cpu_count()}")
    t0, c0 = time.perf_counter(), time.process_time()
    ds = load_dataset(
        task, session=None, data=root / "set-a.tar.gz", outcomes=root / "Outcomes-a.txt"
    )
    t_features, c_features = time.perf_counter() - t0, time.process_time() - c0
    with tempfile.TemporaryDirectory() as reg:
        out = train_and_register(task.name, session=None, registry_dir=Path(reg), dataset=ds)
        t_total, c_total = time.perf_counter() - t0, time.process_time() - c0
        model = load_model(out.artifact_path, out.sha256)
        print(f"set A: {len(ds.y)} rows, {ds.X.shape[1]} candidate features")
        print(f"parse + features (all landmarks): {t_features:.1f} s wall, {c_features:.1f} s CPU")
        print(f"search + calibration + threshold: {out.seconds:.1f} s wall")
        print(f"end to end (parse .. registered): {t_total:.1f} s wall, {c_total:.1f} s CPU")
        print(f"load average after: {os.getloadavg()}")
        chosen = model.sidecar["model"]
        print(f"chosen: {chosen['candidate']} / {chosen['calibration']}")
        print("search:", json.dumps(model.sidecar["model"]["search"]))
        print(
            f"internal (CV) 48 h: AUROC {out.metrics['auroc']:.4f}"
            f" event1 {out.metrics['event1']:.4f}"
            f" H {out.metrics['hl_h']:.2f} threshold {out.threshold:.4f}"
        )
        b = load_dataset(
            task, session=None, data=root / "set-b.tar.gz", outcomes=root / "Outcomes-b.txt"
        )
        proba = model.predict_proba(b.X)
        m = validation_metrics(task, b, proba, model.threshold, n_boot=200)
        print(
            f"set B 48 h: AUROC {m['auroc']:.4f} {m['auroc_ci']} event1 {m['event1']:.4f}"
            f" H {m['hl_h']:.2f} slope {m['calibration_slope']:.3f}"
            f" brier {m['brier']:.4f} NEWS2 AUROC {m['baseline']['auroc']:.4f}"
        )
        print("set B by landmark:", json.dumps(m["by_landmark"]))
        at_threshold = {
            k: round(m[k], 4) for k in ("sensitivity", "ppv", "specificity", "flagged_fraction")
        }
        print(f"set B 48 h at threshold {model.threshold:.4f}: {json.dumps(at_threshold)}")
    if args.save:
        _results.save(
            "train_icu_mortality",
            {
                "end_to_end_s": round(t_total, 1),
                "end_to_end_cpu_s": round(c_total, 1),
                "features_s": round(t_features, 1),
                "search_s": round(out.seconds, 1),
                "rows": len(ds.y),
                "chosen": f"{chosen['candidate']} / {chosen['calibration']}",
            },
            load_at_start=load_at_start,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
