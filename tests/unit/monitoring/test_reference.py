"""The drift reference holds one value per stay, not one per (stay, landmark) training row."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vitalcast.modeling.service import reference_distributions
from vitalcast.monitoring import drift
from vitalcast.monitoring.drift import compare, reference_rows

HOURS = (6.0, 12.0, 24.0, 48.0)


def _training_rows(values: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every stay at every landmark, carrying its one value (an admission lab) in each row."""
    n = len(values)
    X = pd.DataFrame({"lab": np.repeat(values, len(HOURS))}, dtype=float)
    meta = pd.DataFrame(
        {
            "stay_id": np.repeat([f"s{i}" for i in range(n)], len(HOURS)),
            "landmark_h": np.tile(HOURS, n),
        }
    )
    return X, meta


def _lab(rng: np.random.Generator, n: int) -> np.ndarray:
    """Lactate-like values, missing in half the stays (NaN)."""
    values = np.round(rng.lognormal(math.log(1.8), 0.55, n), 1)
    values[rng.random(n) < 0.5] = np.nan
    return values


def test_one_row_per_stay_in_equal_shares_per_landmark() -> None:
    X, meta = _training_rows(np.arange(100, dtype=float))
    keep = reference_rows(meta["stay_id"].tolist(), meta["landmark_h"].tolist())
    kept = meta[keep]
    assert kept["stay_id"].is_unique
    assert len(kept) == 100
    assert Counter(kept["landmark_h"]) == dict.fromkeys(HOURS, 25)
    assert (reference_rows(meta["stay_id"].tolist(), meta["landmark_h"].tolist()) == keep).all()

    reference = reference_distributions(X, [], np.full(len(X), 0.2), meta=meta)
    assert reference["n"] == 100  # stays, not the 400 training rows
    assert reference["features"]["lab"]["n"] == 100
    assert reference["score"]["n"] == 100


def test_stays_that_ended_early_are_balanced_as_a_window_is() -> None:
    # 30 stays ended before 48 h (three rows), 70 reached every landmark: 25 stays per
    # landmark at most, since 48 h rows belong to 70 stays and every landmark gets as many.
    stays = [f"s{i}" for i in range(100)]
    rows = [(s, h) for i, s in enumerate(stays) for h in (HOURS if i >= 30 else HOURS[:3])]
    keep = reference_rows([s for s, _ in rows], [h for _, h in rows])
    kept = [rows[i] for i in np.flatnonzero(keep)]
    assert len({s for s, _ in kept}) == len(kept) == 100
    assert Counter(h for _, h in kept) == dict.fromkeys(HOURS, 25)


def test_rows_without_a_landmark_each_are_refused() -> None:
    with pytest.raises(ValueError, match="one landmark per row"):
        reference_rows(["a", "b"], [6.0])


def test_repeated_landmark_rows_do_not_inflate_the_false_alarm_rate() -> None:
    # Reference and window drawn from the same distribution of stays. Counting each stay's
    # four identical landmark rows as four samples made the reference look four times
    # larger than it is: 11 % false alarms were measured with 200-stay samples, far above
    # the 2·ALPHA bound (drift.py). One row per stay keeps the bound: the count must not
    # exceed the 99.9th percentile of Binomial(REPEATS, 2·ALPHA).
    repeats, n = 300, 200
    rng = np.random.default_rng(5)
    alarms = 0
    for _ in range(repeats):
        X, meta = _training_rows(_lab(rng, n))
        reference = reference_distributions(X, [], np.full(len(X), 0.2), meta=meta)
        window = [None if math.isnan(v) else float(v) for v in _lab(rng, n)]
        alarms += compare(reference["features"]["lab"], window).flagged
    limit = int(stats.binom.ppf(0.999, repeats, 2 * drift.ALPHA))
    assert alarms <= limit, f"{alarms}/{repeats} false alarms; the bound allows {limit}"
