"""The model page's metrics table: intervals read as numbers, not Python lists."""

from __future__ import annotations

from vitalcast.web.model_views import flat_metrics


def test_intervals_are_shown_to_four_significant_digits() -> None:
    rows = dict(
        flat_metrics(
            {
                "auroc": 0.8712345678901234,
                "auroc_ci": [0.8571234567890123, 0.8853456789012345],
                "subgroups": {"sex": {"female": {"n": 1751.0}}},
                "landmarks_h": [6.0, 12.0, 24.0, 48.0],
                "notes": ["1 file quarantined"],
            }
        )
    )
    assert rows["auroc_ci"] == "0.8571 – 0.8853"
    assert rows["landmarks_h"] == "6, 12, 24, 48"
    assert rows["subgroups.sex.female.n"] == 1751.0
    assert rows["notes"] == ["1 file quarantined"]
