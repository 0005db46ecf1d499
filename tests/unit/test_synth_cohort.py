"""The synthetic cohort: determinism, prevalence, plausibility, time rules, realism, no PHI."""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from vitalcast.clinical.codes import BY_CODE, BY_KEY, is_plausible
from vitalcast.clinical.records import RecordBatch
from vitalcast.synth import DEATH_RATE, generate_cohort
from vitalcast.synth.physiology import ARTEFACTS, MODELS, is_artefact

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def cohort() -> RecordBatch:
    return generate_cohort(n_current=150, n_historic=1500, seed=11, now=NOW)


def test_same_seed_same_batch_and_other_seed_differs() -> None:
    a = generate_cohort(n_current=4, n_historic=6, seed=5, now=NOW)
    b = generate_cohort(n_current=4, n_historic=6, seed=5, now=NOW)
    c = generate_cohort(n_current=4, n_historic=6, seed=6, now=NOW)
    assert a == b
    assert len(a.observations) > 1000
    assert [o.value for o in a.observations[:200]] != [o.value for o in c.observations[:200]]
    assert [p.mrn for p in a.patients] == [p.mrn for p in c.patients]  # MRN = stay number
    assert [p.name for p in a.patients] != [p.name for p in c.patients]


def test_death_prevalence_within_binomial_tolerance(cohort: RecordBatch) -> None:
    deaths = [o.value for o in cohort.outcomes if o.kind == "in_hospital_death"]
    n = len(deaths)
    assert n == 1500
    # The intercept is solved so that expected deaths are exactly DEATH_RATE * n; the
    # count's SD is at most the binomial SD. 4 SD: a false alarm once in ~16,000 runs.
    sd = math.sqrt(n * DEATH_RATE * (1 - DEATH_RATE))
    assert abs(sum(deaths) - DEATH_RATE * n) <= 4 * sd


def test_values_are_plausible_or_injected_artefacts(cohort: RecordBatch) -> None:
    artefacts: Counter[str] = Counter()
    per_key: Counter[str] = Counter()
    for obs in cohort.observations:
        spec = BY_CODE[obs.code]
        assert obs.value is not None
        assert obs.unit == spec.unit
        per_key[spec.key] += 1
        if is_artefact(spec.key, obs.value):
            assert not is_plausible(spec, obs.value)
            artefacts[spec.key] += 1
        else:
            assert is_plausible(spec, obs.value), (spec.key, obs.value)
    # Each artefact is injected at a fixed rate: the count is Binomial(measurements, rate).
    for key, (_, rate) in ARTEFACTS.items():
        expected = per_key[key] * rate
        assert abs(artefacts[key] - expected) <= 5 * math.sqrt(expected), key
    assert sum(artefacts.values()) > 0


def test_model_ranges_lie_inside_plausibility_and_artefacts_outside() -> None:
    for key, model in MODELS.items():
        spec = BY_KEY[key]
        assert is_plausible(spec, model.low), key
        assert is_plausible(spec, model.high), key
    for key, (bad, _) in ARTEFACTS.items():
        assert not is_plausible(BY_KEY[key], bad), key


def test_current_stays_end_by_now_and_historic_stays_are_complete(cohort: RecordBatch) -> None:
    encounters = {e.ref: e for e in cohort.encounters}
    outcomes = {o.encounter_ref: o for o in cohort.outcomes}
    last: dict[str, datetime] = {}
    for obs in cohort.observations:
        enc = encounters[obs.encounter_ref or ""]
        assert obs.effective_at >= enc.admitted_at
        assert obs.effective_at <= (enc.discharged_at or NOW)
        last[enc.ref] = max(last.get(enc.ref, obs.effective_at), obs.effective_at)
    current = [e for e in cohort.encounters if e.discharged_at is None]
    historic = [e for e in cohort.encounters if e.discharged_at is not None]
    assert (len(current), len(historic)) == (150, 1500)
    for enc in current:
        assert NOW - timedelta(hours=96) <= enc.admitted_at <= NOW - timedelta(hours=1)
        assert enc.ref not in outcomes
    for enc in historic:
        assert enc.discharged_at is not None
        assert enc.discharged_at <= NOW
        assert timedelta(hours=48) <= enc.discharged_at - enc.admitted_at <= timedelta(hours=240)
        assert outcomes[enc.ref].known_at == enc.discharged_at
    assert {e.unit for e in current} == {"MICU", "SICU", "CCU", "CSRU"}


def test_identifiers_are_synthetic_and_consistent_with_age(cohort: RecordBatch) -> None:
    encounters = {e.patient_ref: e for e in cohort.encounters}
    mrns = [p.mrn for p in cohort.patients]
    assert len(set(mrns)) == len(mrns)
    for p in cohort.patients:
        enc = encounters[p.ref]
        assert p.name
        assert p.birth_date
        assert p.mrn
        admitted = enc.admitted_at.date()
        age = admitted.year - p.birth_date.year
        if (admitted.month, admitted.day) < (p.birth_date.month, p.birth_date.day):
            age -= 1
        assert age == enc.age_years
        assert 18 <= age <= 90
        assert p.email is None or p.email.endswith("@example.org")
        assert p.phone is None or "-555-01" in p.phone
    assert any(p.address for p in cohort.patients)
    assert any(p.phone is None for p in cohort.patients)


def _last_values(cohort: RecordBatch, key: str) -> dict[str, float]:
    code = BY_KEY[key].code
    last: dict[str, float] = {}
    for obs in cohort.observations:  # generated in time order per variable
        if obs.code == code and obs.value is not None and not is_artefact(key, obs.value):
            last[obs.encounter_ref or ""] = obs.value
    return last


@pytest.mark.parametrize(
    ("key", "worse"),
    [("lactate", 1), ("creatinine", 1), ("hr", 1), ("gcs", -1), ("art_map", -1), ("urine", -1)],
)
def test_deaths_deteriorate(cohort: RecordBatch, key: str, worse: int) -> None:
    """Last values before discharge differ between deaths and survivors in the clinical
    direction (rising lactate, creatinine and HR; falling GCS, MAP and urine output)."""
    died = {o.encounter_ref: o.value == 1.0 for o in cohort.outcomes}
    groups: dict[bool, list[float]] = defaultdict(list)
    for ref, value in _last_values(cohort, key).items():
        if ref in died:
            groups[died[ref]].append(value)
    diff = float(np.median(groups[True]) - np.median(groups[False]))
    assert worse * diff > 0, (key, diff)


def test_no_identifiers_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        batch = generate_cohort(n_current=3, n_historic=3, seed=2, now=NOW)
    assert caplog.records  # the generator does log (counts only)
    text = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    for p in batch.patients:
        for secret in p.identifiers().values():
            assert secret not in text


def test_rejects_naive_now_and_negative_counts() -> None:
    with pytest.raises(ValueError, match="timezone"):
        generate_cohort(n_current=1, n_historic=0, seed=1, now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="negative"):
        generate_cohort(n_current=-1, n_historic=0, seed=1, now=NOW)


def test_urine_volumes_hold_what_was_made_since_the_last_collection() -> None:
    """Rounds thin to two- and four-hourly after 48 h; each collection holds the urine made
    since the one before, so a settled patient's output per kg and hour stays where it was
    (it used to fall by half and by three quarters, as if every patient turned oliguric)."""
    now = datetime(2026, 11, 29, tzinfo=UTC)
    batch = generate_cohort(n_current=0, n_historic=200, seed=3, now=now)
    stays = {e.ref: e for e in batch.encounters}
    urine: dict[str, list[tuple[float, float]]] = {}
    for o in batch.observations:
        if o.code == BY_KEY["urine"].code and o.encounter_ref is not None:
            stay = stays[o.encounter_ref]
            hour = (o.effective_at - stay.admitted_at).total_seconds() / 3600
            urine.setdefault(o.encounter_ref, []).append((hour, float(o.value or 0.0)))

    def median_rate(until_h: float) -> float:
        """Median over stays of the last 24 h's output before ``until_h``, mL/kg/h."""
        rates = []
        for ref, rows in urine.items():
            stay = stays[ref]
            if (
                stay.discharged_at is not None
                and (stay.discharged_at - stay.admitted_at).total_seconds() / 3600 < until_h
            ):
                continue
            volumes = [v for h, v in rows if until_h - 24 < h <= until_h]
            if len(volumes) >= 3:
                rates.append(sum(volumes) / (stay.weight_kg or 80.0) / 24)
        assert len(rates) >= 30
        return float(np.median(rates))

    first_day, fourth_day = median_rate(24), median_rate(96)
    assert 0.5 < first_day < 2.0  # typical ICU output, mL/kg/h
    assert fourth_day == pytest.approx(first_day, rel=0.25)
