"""One synthetic ICU stay's observations: organ trajectories, charting schedule, values.

Charting follows the rhythm of PhysioNet 2012 set A (per 48 h, median counts): bedside
vital-sign rounds about hourly (HR 55), arterial-line pressures where a line exists (70 %
of stays), cuff pressures every round without a line and in some rounds with one,
temperature and GCS every 3-4 h, urine output most rounds; ventilator settings (FiO2,
MechVent) every few hours while ventilated; a chemistry and blood-count panel every
6-24 h (3 per 48 h); blood gases every 4-10 h while ventilated; liver tests daily in
fewer than half the stays; troponin mostly in the coronary care unit.

Survivors recover: organ dysfunction decays towards a residual level. Stays that end in
death do not recover and, over their last one to three days, deteriorate in two or three
organ systems (rising lactate and creatinine, falling pressure, consciousness and urine
output, rising heart and respiratory rate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from scipy.signal import lfilter

from vitalcast.clinical.codes import BY_KEY
from vitalcast.clinical.records import ObservationRecord, Sex
from vitalcast.synth.physiology import (
    MODELS,
    ORGANS,
    Organ,
    draw_baselines,
    inject_artefacts,
    values,
)

_ORGAN_CORRELATION = 0.65  # loading of each organ state on the stay's latent acuity

_Draw = Callable[[str, np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class StayPlan:
    """Everything decided about a stay before its observations are drawn."""

    record_id: int
    ref: str
    historic: bool
    admitted_at: datetime
    observed_minutes: int  # observations fall in [0, observed_minutes] after admission
    los_hours: float  # admission to discharge or death (in the future for current stays)
    died: bool
    icu_type: int  # PhysioNet ICUType: 1 CCU, 2 CSRU, 3 MICU, 4 SICU
    age_years: int
    sex: Sex
    height_cm: float | None
    weight_kg: float | None
    acuity: float


class _Trajectory:
    """Organ dysfunction over time, on an hourly grid, read at any minute by interpolation."""

    def __init__(self, plan: StayPlan, rng: np.random.Generator) -> None:
        hours = int(plan.observed_minutes // 60) + 2
        self.grid = np.arange(hours, dtype=float)
        w = _ORGAN_CORRELATION
        own = w * plan.acuity + np.sqrt(1 - w * w) * rng.normal(size=len(ORGANS))
        if plan.died:
            level = np.ones_like(self.grid)
        else:
            tau = rng.uniform(24.0, 96.0)  # hours to recover most of the dysfunction
            level = 0.35 + 0.65 * np.exp(-self.grid / tau)
        states = own[:, None] * level[None, :]
        if plan.died:
            # Terminal deterioration in two or three failing organs.
            span = rng.uniform(24.0, 72.0)
            amp = rng.uniform(0.6, 1.6)
            weights = np.full(len(ORGANS), 0.35)
            weights[rng.choice(len(ORGANS), size=int(rng.integers(2, 4)), replace=False)] = 1.0
            ramp = np.clip((self.grid - (plan.los_hours - span)) / span, 0.0, 1.0) ** 1.5
            states = states + amp * weights[:, None] * ramp[None, :]
        # Hour-to-hour drift: AR(1) with 12 h memory and stationary SD 0.3.
        phi = np.exp(-1.0 / 12.0)
        shocks = rng.normal(0.0, 0.3 * np.sqrt(1 - phi * phi), size=states.shape)
        self.states = states + lfilter([1.0], [1.0, -phi], shocks, axis=1)
        self.index: dict[Organ, int] = {organ: k for k, organ in enumerate(ORGANS)}

    def at(self, organ: Organ, minutes: np.ndarray) -> np.ndarray:
        if organ == "none":
            return np.zeros(len(minutes))
        result: np.ndarray = np.interp(minutes / 60.0, self.grid, self.states[self.index[organ]])
        return result


def _times(start: float, mean_gap: float, end: int, rng: np.random.Generator) -> np.ndarray:
    """Whole-minute times from ``start`` with gamma-distributed gaps, up to ``end``."""
    count = int(end / mean_gap) + 3
    gaps = rng.gamma(6.0, mean_gap / 6.0, size=count)
    times = np.floor(start + np.concatenate([[0.0], np.cumsum(gaps)]))
    return np.unique(times[times <= end]).astype(np.int64)


def _rounds(plan: StayPlan, rng: np.random.Generator) -> np.ndarray:
    """Bedside rounds: about hourly for 48 h, two-hourly to 96 h, then four-hourly.

    The thinning of settled patients (PhysioNet 2012 itself stops at 48 h) keeps long
    historic stays affordable to store; a dying patient is watched hourly again in the
    last day.
    """
    end = plan.observed_minutes
    settled = 48 * 60
    first = _times(rng.uniform(0, 20), 55.0, min(end, settled), rng)
    if end <= settled:
        return first
    parts = [first]
    last_day = int(plan.los_hours * 60) - 24 * 60 if plan.died else end + 1
    if last_day > settled:
        parts.append(_times(settled + 60, 120.0, min(end, last_day, 2 * settled), rng))
    if last_day > 2 * settled:
        parts.append(_times(2 * settled + 60, 240.0, min(end, last_day), rng))
    if last_day <= end:
        parts.append(_times(max(last_day, settled) + 55, 55.0, end, rng))
    return np.unique(np.concatenate(parts))


def _collected_urine(
    minutes: np.ndarray, hourly: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Volumes emptied at ``minutes`` from hourly rates: each collection holds what was
    made since the one before (the first: since the round before it, about an hour).

    A volume is charted per collection, not per hour: with rounds thinned to two- and
    four-hourly after 48 h, hourly-sized volumes made every settled patient look
    oliguric (a 24 h sum of 6 x 80 mL is 0.25 mL/kg/h at 80 kg), in the charts and in the
    urine-output feature. Capped below the variable's plausible maximum (5,000 mL).
    """
    hours = np.diff(minutes, prepend=minutes[:1] - 60.0) / 60.0
    volume = np.round(hourly * np.clip(hours, 0.5, 12.0))
    volume[rng.random(len(volume)) < 0.03] = 0.0  # anuric hours and clamped catheters
    return np.minimum(volume, 4000.0)


def _subset(times: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return times[rng.random(len(times)) < p]


class _Builder:
    """Collects one stay's observations as canonical records."""

    def __init__(self, plan: StayPlan) -> None:
        self.plan = plan
        self.out: list[ObservationRecord] = []
        self._at: dict[int, datetime] = {}

    def add(self, key: str, minutes: np.ndarray, vals: np.ndarray) -> None:
        spec = BY_KEY[key]
        ref = self.plan.ref
        admitted = self.plan.admitted_at
        for m, v in zip(minutes.tolist(), vals.tolist(), strict=True):
            at = self._at.get(m)
            if at is None:
                at = self._at[m] = admitted + timedelta(minutes=m)
            self.out.append(
                ObservationRecord(
                    patient_ref=ref,
                    code=spec.code,
                    effective_at=at,
                    value=float(v),
                    unit=spec.unit,
                    encounter_ref=ref,
                    source_ref=ref,
                )
            )


def stay_observations(plan: StayPlan, rng: np.random.Generator) -> list[ObservationRecord]:
    """All observations of one stay, time-ordered by variable."""
    traj = _Trajectory(plan, rng)
    base = draw_baselines(rng)
    end = plan.observed_minutes
    out = _Builder(plan)

    def draw(key: str, minutes: np.ndarray) -> np.ndarray:
        return values(key, traj.at(MODELS[key].organ, minutes), base[key], rng)

    vent_until = _ventilation(plan, rng)
    art_line = rng.random() < (0.97 if plan.icu_type == 2 else 0.75 if vent_until else 0.35)
    rounds = _rounds(plan, rng)
    rounds = rounds[rng.random(len(rounds)) > 0.04]  # a missed round now and then

    hr_t = _subset(rounds, 0.97, rng)
    out.add("hr", hr_t, inject_artefacts("hr", draw("hr", hr_t), rng))
    ventilated = rounds < vent_until
    if rng.random() < 0.8:
        rr_t = rounds[~ventilated] if rng.random() < 0.85 else rounds
        rr_t = _subset(rr_t, 0.9, rng)
        out.add("resp_rate", rr_t, draw("resp_rate", rr_t))
    if rng.random() < 0.6:
        spo2_t = _subset(rounds, 0.9, rng)
        out.add("spo2", spo2_t, draw("spo2", spo2_t))
    _pressures(out, rounds, art_line, draw, rng)
    temp_t = _subset(rounds, 0.3, rng)
    out.add("temp", temp_t, inject_artefacts("temp", draw("temp", temp_t), rng))
    urine_t = _subset(rounds, 0.75, rng)
    out.add("urine", urine_t, _collected_urine(urine_t, draw("urine", urine_t), rng))
    _gcs(out, rounds, traj, vent_until, rng)
    if vent_until:
        vent_t = _subset(rounds[ventilated], 0.3, rng)
        # FiO2 is set in steps of 5 % and raised when oxygenation fails.
        fio2 = 42 + 10 * traj.at("resp", vent_t) + rng.normal(0, 9, len(vent_t))
        out.add("fio2", vent_t, np.clip(np.round(fio2 / 5) * 5, 30, 100))
        out.add("mech_vent", vent_t, np.ones(len(vent_t)))
    if plan.weight_kg is not None and rng.random() < 0.65:
        w_t = _times(rng.uniform(0, 60), 16 * 60.0, end, rng)
        drift = plan.weight_kg + np.cumsum(rng.normal(0.0, 0.6, len(w_t)))
        out.add("weight", w_t, np.round(np.clip(drift, 25, 340), 1))
    _labs(out, plan, draw, vent_until, rng)
    return out.out


def _ventilation(plan: StayPlan, rng: np.random.Generator) -> int:
    """Minutes of mechanical ventilation from admission (0: never ventilated)."""
    p = {1: 0.35, 2: 0.92, 3: 0.5, 4: 0.6}[plan.icu_type] + 0.1 * plan.acuity
    if rng.random() >= p:
        return 0
    if plan.icu_type == 2 and not plan.died:
        return int(rng.uniform(4, 20) * 60)  # extubated within hours of cardiac surgery
    if plan.died and rng.random() < 0.7:
        return plan.observed_minutes + 1
    return int(rng.lognormal(np.log(36.0) + 0.3 * plan.acuity, 0.6) * 60)


def _pressures(
    out: _Builder, rounds: np.ndarray, art_line: bool, draw: _Draw, rng: np.random.Generator
) -> None:
    cuff_t = _subset(rounds, 0.4 if art_line else 0.95, rng)
    if not art_line or rng.random() < 0.85:
        sbp, dbp = draw("sbp", cuff_t), draw("dbp", cuff_t)
        dbp = np.minimum(dbp, sbp - 15)
        out.add("sbp", cuff_t, inject_artefacts("sbp", sbp, rng))
        out.add("dbp", cuff_t, dbp)
        out.add("map", cuff_t, np.round((sbp + 2 * dbp) / 3, 1))
    if art_line:
        art_t = _subset(rounds, 0.97, rng)
        sbp, dbp = draw("art_sbp", art_t), draw("art_dbp", art_t)
        dbp = np.minimum(dbp, sbp - 15)
        out.add("art_sbp", art_t, sbp)
        out.add("art_dbp", art_t, dbp)
        out.add("art_map", art_t, np.round((sbp + 2 * dbp) / 3))


def _gcs(
    out: _Builder,
    rounds: np.ndarray,
    traj: _Trajectory,
    vent_until: int,
    rng: np.random.Generator,
) -> None:
    """GCS every 3-4 h: brain dysfunction and, while ventilated, sedation lower it."""
    t = _subset(rounds, 0.28, rng)
    sedation = np.where(t < vent_until, rng.uniform(3, 9), 0.0)
    loss = 3.0 * np.maximum(traj.at("neuro", t) + 0.2, 0) + sedation + rng.normal(0, 1, len(t))
    out.add("gcs", t, np.clip(np.round(15 - np.maximum(loss, 0)), 3, 15))


def _labs(
    out: _Builder,
    plan: StayPlan,
    draw: _Draw,
    vent_until: int,
    rng: np.random.Generator,
) -> None:
    end = plan.observed_minutes
    panel_t = _times(rng.uniform(0, 180), rng.uniform(8, 20) * 60, end, rng)
    for key in (
        "hct",
        "platelets",
        "wbc",
        "bun",
        "creatinine",
        "sodium",
        "potassium",
        "hco3",
        "magnesium",
        "glucose",
    ):
        if rng.random() < 0.98:
            t = _subset(panel_t, 0.95, rng)
            out.add(key, t, draw(key, t))
    if vent_until or rng.random() < 0.35:
        gas_t = _times(
            rng.uniform(0, 120), rng.uniform(4, 10) * 60, min(end, vent_until or end), rng
        )
        with_sat = rng.random() < 0.6
        for key in ("ph", "paco2", "pao2") + (("sao2",) if with_sat else ()):
            out.add(key, gas_t, draw(key, gas_t))
    if rng.random() < 0.55 + 0.2 * max(plan.acuity, 0):
        lac_t = _times(rng.uniform(0, 240), rng.uniform(6, 16) * 60, end, rng)
        out.add("lactate", lac_t, draw("lactate", lac_t))
    if rng.random() < 0.43:
        liver_t = _times(rng.uniform(60, 600), 24 * 60.0, end, rng)
        for key in ("ast", "alt", "alp", "bilirubin") + (
            ("albumin",) if rng.random() < 0.9 else ()
        ):
            out.add(key, liver_t, draw(key, liver_t))
    cardiac = plan.icu_type == 1
    if rng.random() < (0.7 if cardiac else 0.12):
        trop = "troponin_t" if rng.random() < 0.8 else "troponin_i"
        trop_t = _times(rng.uniform(0, 120), 9 * 60.0, min(end, 36 * 60), rng)
        out.add(trop, trop_t, draw(trop, trop_t))
    if rng.random() < (0.35 if cardiac else 0.04):
        t = np.array([int(rng.uniform(60, min(end, 24 * 60)))]) if end > 60 else np.array([end])
        out.add("cholesterol", t, draw("cholesterol", t))
