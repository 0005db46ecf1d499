"""One stay, one set of features: the stored-patient path and the CDS Hooks path agree."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select

from vitalcast.clinical.codes import BY_KEY
from vitalcast.clinical.records import (
    EncounterRecord,
    ObservationRecord,
    PatientRecord,
    RecordBatch,
)
from vitalcast.clinical.tables import Encounter
from vitalcast.clinical.times import age_at
from vitalcast.config import Settings
from vitalcast.db.session import create_db_engine, make_session_factory
from vitalcast.features import stay_features
from vitalcast.ingest.service import store_batch
from vitalcast.security.crypto import FieldCipher
from vitalcast.serving.cds_cards import card_notes
from vitalcast.serving.cds_stay import stay_from_records
from vitalcast.serving.scoring import (
    admission_descriptors,
    stay_input,
    stay_outside_population,
)


def _same(a: dict[str, float], b: dict[str, float]) -> set[str]:
    """The names whose values differ (NaN equals NaN)."""
    return {k for k in a if not ((math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k])}


def test_a_value_from_before_admission_counts_on_no_path(pg_url: str, cipher: FieldCipher) -> None:
    """A lactate taken two hours before the ICU admission but sent with the stay's
    reference (an emergency-department sample, or an admission time corrected later) is
    stored with the stay. The CDS Hooks card leaves it out ("a value from an earlier stay
    must not count"); the ward and the patient page, scoring the stored stay, counted it
    as "this stay" with a negative hour, so one patient had two risks. Training's stays
    (PhysioNet) start at 00:00 and hold no such value: neither path may count it."""
    now = datetime.now(UTC).replace(microsecond=0)
    admitted = now - timedelta(hours=10)
    lactate, hr = BY_KEY["lactate"].code, BY_KEY["hr"].code
    born = date(admitted.year - 71, 6, 15)
    patient = PatientRecord(ref="t:p1", sex="female", birth_date=born)
    age = age_at(born, admitted)  # the age both paths read
    encounter = EncounterRecord(
        ref="t:e1", patient_ref="t:p1", admitted_at=admitted, unit="MICU", age_years=age
    )
    observations = [
        ObservationRecord("t:p1", lactate, admitted - timedelta(hours=2), 6.0, "mmol/L", None,
                          "t:e1", identity="o1"),
        ObservationRecord("t:p1", lactate, admitted + timedelta(hours=3), 2.0, "mmol/L", None,
                          "t:e1", identity="o2"),
        ObservationRecord("t:p1", hr, admitted + timedelta(hours=1), 95.0, "/min", None,
                          "t:e1", identity="o3"),
        ObservationRecord("t:p1", BY_KEY["height"].code, admitted - timedelta(days=30), 170.0,
                          "cm", None, "t:e1", identity="o4"),
    ]  # fmt: skip
    engine = create_db_engine(pg_url)
    try:
        sessions = make_session_factory(engine)
        with sessions() as session:
            batch = RecordBatch(
                patients=[patient], encounters=[encounter], observations=observations
            )
            store_batch(session, batch, source="test", location="t", cipher=cipher, now=now)
            session.commit()
        as_of = admitted + timedelta(hours=6)
        with sessions() as session:
            row = session.scalars(select(Encounter)).one()
            stored = stay_features(stay_input(session, row, as_of), as_of)
            shown = admission_descriptors(session, row)  # beside the risk: what it read
        card = stay_features(
            stay_from_records(patient, encounter, observations, now, Counter()), as_of
        )
    finally:
        engine.dispose()
    assert card["lactate_count_all"] == 1
    assert card["lactate_max_all"] == 2.0
    assert shown == (None, None)
    assert math.isnan(stored["height_cm"])
    assert _same(stored, card) == set(), [
        (k, stored[k], card[k]) for k in sorted(_same(stored, card))
    ]


def test_a_stay_without_an_age_is_aged_from_the_birth_date(
    pg_url: str, cipher: FieldCipher, settings: Settings
) -> None:
    """FHIR and HL7 v2 give a patient's birth date, never an encounter's age. Stored
    without one, every such stay was scored with its age imputed (an input the model
    weighs among its strongest) and a child's stay passed the population's age rule as
    "age unknown"; the CDS Hooks card computed the age from the same birth date. The
    store now holds the age at admission, in completed years, as training's stays do; a
    birth date stored in an earlier batch counts too."""
    now = datetime.now(UTC).replace(microsecond=0)
    admitted = now - timedelta(hours=8)
    born = date(admitted.year - 71, 6, 15)
    child_born = date(admitted.year - 9, 6, 15)
    patients = [
        PatientRecord(ref="t:p1", sex="male", birth_date=born),
        PatientRecord(ref="t:p2", sex="female", birth_date=child_born),
    ]
    encounters = [
        EncounterRecord(ref="t:e1", patient_ref="t:p1", admitted_at=admitted, unit="MICU"),
        EncounterRecord(ref="t:e2", patient_ref="t:p2", admitted_at=admitted, unit="MICU"),
    ]
    engine = create_db_engine(pg_url)
    try:
        sessions = make_session_factory(engine)
        with sessions() as session:  # the patients first, their stays in a later batch
            store_batch(
                session, RecordBatch(patients=patients), source="t", location="t", cipher=cipher
            )
            session.commit()
        with sessions() as session:
            store_batch(
                session,
                RecordBatch(encounters=encounters),
                source="t",
                location="t",
                cipher=cipher,
                now=now,
            )
            session.commit()
        with sessions() as session:
            rows = {e.source_ref: e for e in session.scalars(select(Encounter))}
            stored = stay_features(stay_input(session, rows["t:e1"], now), now)
            child = stay_outside_population(settings, rows["t:e2"])
    finally:
        engine.dispose()
    card = stay_features(stay_from_records(patients[0], encounters[0], [], now), now)
    assert stored["age_years"] == card["age_years"] == age_at(born, admitted)
    assert child is not None
    assert "outside what the model scores" in child


def test_an_age_beyond_the_plausible_range_reaches_no_path(
    pg_url: str, cipher: FieldCipher
) -> None:
    """A placeholder birth date (1800-01-01, an "unknown" some EHRs send) gives an age of
    two centuries. The store drops it (quarantined as a descriptor, the stay scored
    without an age); the CDS Hooks card gave the model the 226 years, so one stay had
    two risks. Both paths now score it without an age, and the card says so."""
    now = datetime.now(UTC).replace(microsecond=0)
    admitted = now - timedelta(hours=8)
    patient = PatientRecord(ref="t:p1", sex="male", birth_date=date(1800, 1, 1))
    encounter = EncounterRecord(ref="t:e1", patient_ref="t:p1", admitted_at=admitted, unit="MICU")
    engine = create_db_engine(pg_url)
    try:
        sessions = make_session_factory(engine)
        with sessions() as session:
            batch = RecordBatch(patients=[patient], encounters=[encounter])
            store_batch(session, batch, source="t", location="t", cipher=cipher, now=now)
            session.commit()
        with sessions() as session:
            row = session.scalars(select(Encounter)).one()
            stored = stay_features(stay_input(session, row, now), now)
    finally:
        engine.dispose()
    left_out: Counter[str] = Counter()
    card = stay_features(stay_from_records(patient, encounter, [], now, left_out), now)
    assert math.isnan(stored["age_years"])
    assert math.isnan(card["age_years"]), card["age_years"]
    assert _same(stored, card) == set()
    assert "Age unknown" in " ".join(card_notes(left_out, patient))
