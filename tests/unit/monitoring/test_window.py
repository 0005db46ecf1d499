"""Landmark-balanced drift windows: equal shares per landmark, as the training reference."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from vitalcast.monitoring.drift import balanced_landmarks

T0 = datetime(2026, 6, 1, tzinfo=UTC)
HOURS = (6, 12, 24, 48)


def _ward(reach_counts: list[int]) -> dict[int, dict[int, datetime]]:
    """Stay i reached its first reach_counts[i] landmarks (stays in progress)."""
    return {
        i: {j: T0 + timedelta(days=i, hours=HOURS[j]) for j in range(n)}
        for i, n in enumerate(reach_counts)
    }


def test_every_landmark_gets_the_same_number_of_stays_and_as_many_as_possible() -> None:
    # 40 stays reached only 6 h, 30 up to 12 h, 20 up to 24 h, 10 all four: a ward where
    # early landmarks are common. Letting each stay choose would give 6 h over half the rows.
    reached = _ward([1] * 40 + [2] * 30 + [3] * 20 + [4] * 10)
    chosen = balanced_landmarks(reached, 4)
    by_landmark = Counter(
        next(j for j, at in reached[e].items() if at == when) for e, when in chosen.items()
    )
    # 10 reached 48 h; 30 reached 24 h (10 of them needed at 48 h) ... the largest equal
    # quota is 10 per landmark, and every landmark gets exactly that.
    assert by_landmark == {0: 10, 1: 10, 2: 10, 3: 10}
    assert all(when in reached[e].values() for e, when in chosen.items())
    assert balanced_landmarks(reached, 4) == chosen  # deterministic


def test_quota_uses_stays_that_reached_several_landmarks_where_needed() -> None:
    # 100 complete stays and nothing else: 25 per landmark, every stay used once.
    chosen = balanced_landmarks(_ward([4] * 100), 4)
    assert len(chosen) == 100
    assert Counter(chosen.values()) == Counter(set(chosen.values()))  # one row per stay


def test_no_stay_or_a_landmark_nobody_reached_gives_an_empty_window() -> None:
    assert balanced_landmarks({}, 4) == {}
    assert balanced_landmarks(_ward([1, 2, 3]), 4) == {}  # nobody at 48 h: no balance
