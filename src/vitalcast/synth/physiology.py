"""How each synthetic variable behaves: centre, spread, organ loading, noise, rounding.

The model is deliberately simple and explicit. A stay has a latent acuity ``s`` (standard
normal) and one state per organ system, ``z = 0.75 s + 0.66 e`` (``e`` independent), so
organs fail together but not in lock-step. A value at time ``t`` is

    value = centre + between-patient offset + loading × z_organ(t) + measurement noise

on the log scale for right-skewed analytes (creatinine, lactate, transaminases), which is
how these distributions look in PhysioNet 2012 set A (medians and spreads below were
read off its 4,000 stays: e.g. HR median 86, creatinine median 1.0 mg/dL with a long
right tail, GCS median 13). Signs follow the clinical direction of "worse": a failing
circulation raises heart rate and lowers blood pressure (Sepsis-3, Singer et al. JAMA
2016), a failing kidney raises creatinine and BUN and lowers urine output (KDIGO 2012),
hypoperfusion raises lactate and lowers pH and bicarbonate.

Values are clipped to physiological limits that lie inside the store's plausibility
ranges (clinical.codes), so only the deliberately injected artefacts are quarantined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Organ = Literal[
    "cardio", "resp", "renal", "hepatic", "neuro", "metabolic", "haem", "infect", "none"
]
ORGANS: tuple[Organ, ...] = (
    "cardio",
    "resp",
    "renal",
    "hepatic",
    "neuro",
    "metabolic",
    "haem",
    "infect",
)


@dataclass(frozen=True, slots=True)
class VarModel:
    """Generative model of one variable (keys are clinical.codes VariableSpec keys)."""

    key: str
    organ: Organ
    centre: float  # median in a typical adult ICU stay
    between_sd: float  # spread of patients' own baselines (log scale when ``log``)
    loading: float  # change per unit of organ dysfunction (log scale when ``log``)
    noise_sd: float  # measurement-to-measurement noise (log scale when ``log``)
    low: float  # physiological clip, inside the plausibility range
    high: float
    decimals: int
    log: bool = False


# fmt: off
MODELS: dict[str, VarModel] = {m.key: m for m in (
    # Vital signs (PhysioNet 2012 set A medians: HR 86, NISysABP 116, NIDiasABP 56,
    # RespRate 19, Temp 37.1).
    VarModel("hr", "cardio", 86, 13, 7, 9, 35, 190, 0),
    VarModel("resp_rate", "resp", 19, 3, 2.5, 2.5, 6, 48, 0),
    VarModel("temp", "infect", 37.1, 0.45, 0.15, 0.35, 33.5, 41.0, 1),
    VarModel("sbp", "cardio", 118, 16, -8, 10, 60, 220, 0),
    VarModel("dbp", "cardio", 57, 9, -4.5, 6, 25, 125, 0),
    VarModel("art_sbp", "cardio", 118, 16, -8, 8, 60, 220, 0),
    VarModel("art_dbp", "cardio", 58, 8, -4.5, 4, 25, 125, 0),
    VarModel("spo2", "resp", 97, 1.2, -1.2, 1.2, 75, 100, 0),
    VarModel("urine", "renal", 80, 0.35, -0.4, 0.7, 5, 1500, 0, log=True),
    # Laboratory results.
    VarModel("hct", "haem", 30.3, 3.5, -1.0, 1.2, 16, 52, 1),
    VarModel("platelets", "haem", 172, 0.5, -0.25, 0.08, 12, 900, 0, log=True),
    VarModel("wbc", "infect", 11.3, 0.45, 0.18, 0.1, 0.5, 80, 1, log=True),
    VarModel("bun", "renal", 20, 0.6, 0.35, 0.06, 3, 180, 0, log=True),
    VarModel("creatinine", "renal", 1.0, 0.55, 0.32, 0.06, 0.2, 15, 1, log=True),
    VarModel("sodium", "metabolic", 139, 4, 0.5, 1.0, 118, 165, 0),
    VarModel("potassium", "renal", 4.1, 0.35, 0.15, 0.2, 2.5, 7.5, 1),
    VarModel("hco3", "metabolic", 23.5, 3.8, -1.8, 0.8, 8, 45, 0),
    VarModel("magnesium", "none", 2.0, 0.25, 0.0, 0.15, 1.0, 4.0, 1),
    VarModel("glucose", "metabolic", 127, 0.3, 0.08, 0.25, 40, 700, 0, log=True),
    VarModel("lactate", "metabolic", 1.6, 0.45, 0.35, 0.15, 0.4, 20, 1, log=True),
    VarModel("ph", "metabolic", 7.385, 0.05, -0.035, 0.02, 6.9, 7.65, 2),
    VarModel("paco2", "resp", 40, 7, 1.0, 3, 20, 90, 0),
    VarModel("pao2", "resp", 120, 0.45, -0.2, 0.15, 40, 500, 0, log=True),
    VarModel("sao2", "resp", 97, 1.2, -1.0, 0.8, 75, 100, 0),
    VarModel("ast", "hepatic", 45, 1.2, 0.5, 0.15, 8, 15000, 0, log=True),
    VarModel("alt", "hepatic", 35, 1.2, 0.45, 0.15, 5, 11000, 0, log=True),
    VarModel("alp", "hepatic", 82, 0.45, 0.2, 0.08, 20, 1500, 0, log=True),
    VarModel("bilirubin", "hepatic", 0.8, 0.9, 0.35, 0.1, 0.1, 40, 1, log=True),
    VarModel("albumin", "hepatic", 2.9, 0.45, -0.2, 0.15, 1.0, 5.0, 1),
    VarModel("troponin_t", "cardio", 0.15, 1.4, 0.3, 0.2, 0.01, 25, 2, log=True),
    VarModel("troponin_i", "cardio", 2.0, 1.2, 0.3, 0.2, 0.3, 50, 1, log=True),
    VarModel("cholesterol", "none", 152, 38, 0.0, 0.0, 50, 330, 0),
)}
# fmt: on

# Device artefacts seen in PhysioNet 2012 (clinical.codes docstring): a disconnected lead
# reads HR 0, a probe in air reads -17.8 °C (0 °F), a failed cuff cycle reads 0 mmHg.
# Each is injected with this probability per measurement of its variable; the store
# quarantines them as implausible.
ARTEFACTS: dict[str, tuple[float, float]] = {
    "hr": (0.0, 0.002),
    "temp": (-17.8, 0.004),
    "sbp": (0.0, 0.002),
}


def draw_baselines(rng: np.random.Generator) -> dict[str, float]:
    """One patient's own baseline offset per variable (in model units)."""
    # Student t with 5 degrees of freedom, scaled to SD ``between_sd``: ICU values have
    # heavier tails than a normal (a few patients with creatinine 10 or AST 10,000).
    scale = np.sqrt(3.0 / 5.0)
    return {key: float(rng.standard_t(5) * scale * m.between_sd) for key, m in MODELS.items()}


def values(
    key: str,
    z: np.ndarray,
    offset: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Measured values of ``key`` given organ states ``z`` at the measurement times."""
    m = MODELS[key]
    noise = rng.normal(0.0, m.noise_sd, size=z.shape) if m.noise_sd else 0.0
    if m.log:
        raw = np.exp(np.log(m.centre) + offset + m.loading * z + noise)
    else:
        raw = m.centre + offset + m.loading * z + noise
    result: np.ndarray = np.round(np.clip(raw, m.low, m.high), m.decimals)
    return result


def inject_artefacts(key: str, vals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replace a few values by the variable's device artefact (a copy; input unchanged)."""
    if key not in ARTEFACTS or vals.size == 0:
        return vals
    bad, rate = ARTEFACTS[key]
    mask = rng.random(vals.shape) < rate
    if not mask.any():
        return vals
    out = vals.copy()
    out[mask] = bad
    return out


def is_artefact(key: str, value: float) -> bool:
    """Whether ``value`` is the artefact this generator injects for ``key``."""
    return key in ARTEFACTS and value == ARTEFACTS[key][0]
