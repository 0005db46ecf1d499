"""Drift detector figures: false-alarm rate under no drift and detection rate under shifts.

Run: .venv/bin/python bench/drift_alarms.py [--repeats 200]
Prints one row per (feature, scenario, window). Bounded: repeats × 3 windows × 6 rows.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from vitalcast.monitoring.drift import ALPHA, compare, reference_profile

REFERENCE_N = 4000


def heart_rate(rng: np.random.Generator, n: int, shift_sd: float = 0.0) -> list[object]:
    values = np.round(rng.normal(88 + shift_sd * 17, 17, n))
    return [None if rng.random() < 0.02 else float(v) for v in values]


def lactate(rng: np.random.Generator, n: int, factor: float = 1.0) -> list[object]:
    values = np.round(rng.lognormal(math.log(1.8), 0.55, n), 1) * factor
    return [None if rng.random() < 0.55 else float(v) for v in values]


SCENARIOS = {
    "hr: no drift": (heart_rate, lambda rng, n: heart_rate(rng, n)),
    "hr: +0.25 SD": (heart_rate, lambda rng, n: heart_rate(rng, n, 0.25)),
    "hr: +0.5 SD": (heart_rate, lambda rng, n: heart_rate(rng, n, 0.5)),
    "hr: not recorded": (heart_rate, lambda rng, n: [None] * n),
    "lactate: no drift": (lactate, lambda rng, n: lactate(rng, n)),
    "lactate: mg/dL (x9.01)": (lactate, lambda rng, n: lactate(rng, n, 9.01)),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(20261128)
    started = time.perf_counter()
    print(
        f"alpha={ALPHA}; derived false-alarm bound 2*alpha={2 * ALPHA:.0%}; "
        f"reference n={REFERENCE_N}; repeats={args.repeats}"
    )
    print(f"{'scenario':<26}{'window':>8}{'flagged':>10}{'mean PSI':>10}")
    for name, (ref_draw, new_draw) in SCENARIOS.items():
        for window in (100, 300, 1000):
            flagged = 0
            psis: list[float] = []
            for _ in range(args.repeats):
                result = compare(
                    reference_profile(ref_draw(rng, REFERENCE_N)), new_draw(rng, window)
                )
                flagged += result.flagged
                if result.psi is not None:
                    psis.append(result.psi)
            mean_psi = f"{np.mean(psis):.3f}" if psis else "n/a"
            print(f"{name:<26}{window:>8}{flagged / args.repeats:>10.1%}{mean_psi:>10}")
    print(f"elapsed {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
