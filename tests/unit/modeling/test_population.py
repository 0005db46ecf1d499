"""Task populations: whom a model may score.

The SQL form of the rule (``serving.scoring.in_population``) is tested against
PostgreSQL in tests/integration/test_stay_population.py; these check the rule itself and
that it leaves in every stay the model was trained on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vitalcast.ingest.sources.physionet import iter_records, parse_record
from vitalcast.modeling.tasks import TASKS, Population

ICU = TASKS["icu-mortality"].population
READMISSION = TASKS["readmission-30d"].population


@pytest.mark.parametrize(
    ("kind", "age", "why"),
    [
        ("icu", 64.0, None),
        ("inpatient", 15.0, None),  # the youngest age of the training data is inside
        ("icu", None, None),  # unknown age: scored, with age among the imputed inputs
        ("icu", 14.9, "a patient aged 14"),
        ("inpatient", 0.5, "a patient aged 0"),
        ("outpatient", 64.0, "an outpatient visit"),
        ("emergency", 64.0, "an emergency department visit"),
        ("hospice", 64.0, "an encounter of kind 'hospice'"),
    ],
)
def test_icu_mortality_scores_adult_icu_and_hospital_stays_only(
    kind: str, age: float | None, why: str | None
) -> None:
    assert ICU is not None
    assert ICU.exclusion(kind, age) == why


def test_readmission_scores_hospital_stays_of_any_age() -> None:
    assert READMISSION is not None
    assert READMISSION.exclusion("inpatient", 4.0) is None
    # An ICU stay inside a hospital stay is not a discharge of its own.
    assert READMISSION.exclusion("icu", 60.0) == "an ICU stay"


def test_without_an_age_bound_age_never_excludes() -> None:
    assert Population(frozenset({"icu"})).exclusion("icu", 1.0) is None


def test_every_training_stay_is_inside_the_icu_population(shared_data: Path) -> None:
    """The rule must not exclude patients like those the model learnt from: every stay
    of PhysioNet set A, as the ingestion adapter reads it, is inside."""
    assert ICU is not None
    outside, seen = [], 0
    for record in iter_records(shared_data / "physionet2012" / "set-a.tar.gz"):
        encounter = parse_record(record).encounters[0]
        seen += 1
        if ICU.exclusion(encounter.kind, encounter.age_years) is not None:
            outside.append((encounter.kind, encounter.age_years))
    assert seen == 4000
    assert outside == []


def test_named_units_restrict_the_population_and_say_so() -> None:
    assert ICU is not None
    assert ICU.on_units([]) is ICU
    icu_units = ICU.on_units(["SICU", "MICU"])
    assert icu_units.label.endswith("patients aged 15 or over on units MICU, SICU")
    assert icu_units.exclusion("inpatient", 60.0, "MICU") is None
    assert icu_units.exclusion("inpatient", 60.0, "4 West") == "a stay on unit 4 West"
    assert icu_units.exclusion("icu", 60.0, None) == "a stay without a unit"
    # The kind and the age are still checked first.
    assert icu_units.exclusion("outpatient", 60.0, "MICU") == "an outpatient visit"
    assert icu_units.exclusion("icu", 3.0, "MICU") == "a patient aged 3"
