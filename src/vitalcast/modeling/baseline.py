"""NEWS2 from the latest vital signs: the clinical baseline reported beside each model.

Royal College of Physicians. National Early Warning Score (NEWS) 2. London: RCP, 2017.
Scale 1 for SpO₂. A parameter never measured scores 0 (as on a paper chart left blank).
Consciousness: GCS < 15 is taken as "not alert" (3 points). PhysioNet 2012 has no pulse
oximetry, so arterial SaO₂ stands in for SpO₂ when SpO₂ is absent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _bands(x: np.ndarray, edges: list[float], points: list[int]) -> np.ndarray:
    """Points for ``x`` given ascending upper bounds ``edges`` (inclusive); NaN -> 0."""
    out = np.zeros(len(x))
    ok = ~np.isnan(x)
    idx = np.searchsorted(np.asarray(edges), x[ok], side="left")
    out[ok] = np.asarray(points)[idx]
    return out


def _col(X: pd.DataFrame, *names: str) -> np.ndarray:
    out = np.full(len(X), np.nan)
    for name in names:
        if name in X:
            v = X[name].to_numpy(dtype=float)
            out = np.where(np.isnan(out), v, out)
    return out


def news2_scores(X: pd.DataFrame) -> np.ndarray:
    """NEWS2 (0-20) for each row of a feature frame (``*_last_all`` columns)."""
    rr = _bands(_col(X, "resp_rate_last_all"), [8, 11, 20, 24], [3, 1, 0, 2, 3])
    spo2 = _bands(_col(X, "spo2_last_all", "sao2_last_all"), [91, 93, 95], [3, 2, 1, 0])
    fio2 = _col(X, "fio2_last_all")
    vent = _col(X, "mech_vent_last_all")
    oxygen = np.where((fio2 > 21) | (vent > 0), 2.0, 0.0)
    sbp = _bands(_col(X, "sbp_last_all", "art_sbp_last_all"), [90, 100, 110, 219], [3, 2, 1, 0, 3])
    hr = _bands(_col(X, "hr_last_all"), [40, 50, 90, 110, 130], [3, 1, 0, 1, 2, 3])
    gcs = _col(X, "gcs_last_all")
    conscious = np.where(gcs < 15, 3.0, 0.0)
    temp = _bands(_col(X, "temp_last_all"), [35.0, 36.0, 38.0, 39.0], [3, 1, 0, 1, 2])
    return np.asarray(rr + spo2 + oxygen + sbp + hr + conscious + temp)
