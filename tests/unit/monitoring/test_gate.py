"""The promotion gate on simulated holdouts whose answers are known by construction."""

from __future__ import annotations

import numpy as np

from vitalcast.monitoring.gate import GatePolicy, evaluate_gate

N = 20000  # large, so that sampling noise is far below every margin tested


def _holdout(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lp = rng.normal(-2.0, 1.2, N)  # linear predictor: ~17 % events, AUROC ~0.8
    p = 1 / (1 + np.exp(-lp))
    y = (rng.random(N) < p).astype(int)
    units = rng.choice(["MICU", "SICU"], N)
    return y, p, units


def _names(result: object) -> list[str]:
    return [c.name for c in result.criteria if not c.passed]  # type: ignore[attr-defined]


def test_equal_and_calibrated_challenger_passes() -> None:
    y, p, units = _holdout(1)
    result = evaluate_gate(y.tolist(), p.tolist(), p.tolist(), subgroups={"unit": units.tolist()})
    assert result.passed, result.reasons
    assert {c.name for c in result.criteria} >= {
        "holdout_size",
        "auroc",
        "calibration_slope",
        "calibration_in_the_large",
        "subgroup:unit=MICU",
        "subgroup:unit=SICU",
    }


def test_less_discriminating_challenger_is_refused() -> None:
    y, p, _ = _holdout(2)
    rng = np.random.default_rng(3)
    lp = np.log(p / (1 - p)) + rng.normal(0, 1.0, N)  # noise: AUROC falls by ~0.05
    noisy = 1 / (1 + np.exp(-lp))
    result = evaluate_gate(y.tolist(), p.tolist(), noisy.tolist())
    assert not result.passed
    assert "auroc" in _names(result)


def test_overconfident_challenger_fails_calibration() -> None:
    y, p, _ = _holdout(4)
    lp = 2 * np.log(p / (1 - p)) + 2.0  # same ranking, logits doubled: slope ~0.5
    sharp = 1 / (1 + np.exp(-lp))
    result = evaluate_gate(y.tolist(), p.tolist(), sharp.tolist())
    assert _names(result) == ["calibration_slope", "calibration_in_the_large"]


def test_challenger_worse_in_one_unit_is_refused_for_that_unit() -> None:
    y, p, units = _holdout(5)
    rng = np.random.default_rng(6)
    worse = p.copy()
    sicu = units == "SICU"
    worse[sicu] = rng.permutation(p[sicu])  # no discrimination left in SICU
    result = evaluate_gate(
        y.tolist(), p.tolist(), worse.tolist(), subgroups={"unit": units.tolist()}
    )
    assert "subgroup:unit=SICU" in _names(result)
    assert "subgroup:unit=MICU" not in _names(result)


def test_small_holdout_cannot_pass() -> None:
    y, p, _ = _holdout(7)
    result = evaluate_gate(
        y[:100].tolist(), p[:100].tolist(), p[:100].tolist(), policy=GatePolicy()
    )
    assert "holdout_size" in _names(result)


def test_first_model_is_judged_on_its_own_calibration_only() -> None:
    y, p, _ = _holdout(8)
    result = evaluate_gate(y.tolist(), None, p.tolist())
    assert result.passed
    assert "auroc" not in {c.name for c in result.criteria}
