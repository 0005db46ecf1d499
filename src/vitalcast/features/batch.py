"""Training frames: many stays × landmark times through the same per-stay code path.

Landmarking (van Houwelingen 2007): each stay contributes one sample per landmark time
still inside the stay, so a model trained on them is valid at hour 6 as well as hour 48.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import pandas as pd

from vitalcast.features.stay import FEATURE_NAMES, StayInput, stay_features


def build_feature_frame(
    stays: Mapping[str, StayInput],
    landmarks_h: Sequence[float],
    *,
    ends_at: Mapping[str, datetime | None] | None = None,
) -> pd.DataFrame:
    """One row per (stay, landmark) with columns ``stay_id``, ``landmark_h`` + features.

    A landmark after the stay's end (``ends_at``; discharge or death) is skipped: there is
    no one to score then. Calls :func:`stay_features` for every row, the function serving
    uses, so offline and online features cannot diverge.
    """
    records: list[dict[str, float]] = []
    keys: list[tuple[str, float]] = []
    for stay_id, stay in stays.items():
        end = ends_at.get(stay_id) if ends_at else None
        for hours in landmarks_h:
            as_of = stay.admitted_at + timedelta(hours=hours)
            if end is not None and as_of > end:
                continue
            records.append(stay_features(stay, as_of))
            keys.append((stay_id, float(hours)))
    frame = pd.DataFrame.from_records(records, columns=list(FEATURE_NAMES))
    frame.insert(0, "landmark_h", [k[1] for k in keys])
    frame.insert(0, "stay_id", [k[0] for k in keys])
    return frame
