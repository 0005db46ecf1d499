"""Encounter features at discharge (readmission-30d): exact values of the diagnosis and
history features, and no look-ahead (a later encounter never changes an earlier one's
features)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from vitalcast.features.encounter import (
    CHARLSON_WEIGHTS,
    READMISSION_CATEGORICAL,
    READMISSION_NUMERIC,
    EncounterInput,
    PriorHistory,
    after_encounter,
    charlson_conditions,
    diagnoses_by_slot,
    encounter_order,
    icd9_category,
    readmission_features,
)


def _enc(
    los: float,
    diagnoses: list[str | None],
    history: PriorHistory | None = None,
    **attributes: Any,
) -> EncounterInput:
    base: dict[str, Any] = {
        "number_inpatient": 0,
        "number_emergency": 0,
        "number_outpatient": 0,
        "num_medications": 10,
        "number_diagnoses": 5,
        "discharge_disposition_id": 1,
    }
    base.update(attributes)
    return EncounterInput(
        length_of_stay_days=los,
        age_years=65.0,
        sex="female",
        attributes=base,
        diagnoses=diagnoses,
        history=history or PriorHistory(),
    )


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def eq(x: Any, y: Any) -> bool:
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        return bool(x == y)

    return a.keys() == b.keys() and all(eq(a[k], b[k]) for k in a)


def test_charlson_conditions_follow_the_icd9_coding() -> None:
    assert charlson_conditions(["428", "250.01", "585"]) == {"chf", "dm", "renal"}
    assert charlson_conditions(["250.4", "197", "V45"]) == {"dm_comp", "metastatic"}
    assert charlson_conditions(["402.91", "496", "434"]) == {"chf", "copd", "cvd"}
    assert charlson_conditions(["V4511", "E878", None, "?"]) == {"renal"}
    assert charlson_conditions([None, None, None]) == frozenset()


def test_diagnosis_features_are_exact() -> None:
    f = readmission_features(_enc(3.0, ["428", "250.4", "428.0"]))
    assert f["charlson_chf"] == 1.0
    assert f["charlson_dm_comp"] == 1.0
    assert f["charlson_dm"] == 0.0
    assert f["charlson_index"] == CHARLSON_WEIGHTS["chf"] + CHARLSON_WEIGHTS["dm_comp"]
    assert f["icd9_428"] == 2.0  # counted over the three positions
    assert f["icd9_250"] == 1.0
    assert f["icd9_401"] == 0.0
    assert icd9_category("038.9") == "038"
    assert icd9_category("?") is None


def test_features_have_the_declared_names() -> None:
    f = readmission_features(_enc(3.0, ["428", None, None]))
    assert sorted(f) == sorted([*READMISSION_NUMERIC, *READMISSION_CATEGORICAL])
    assert len(set(READMISSION_NUMERIC) | set(READMISSION_CATEGORICAL)) == len(f)


def test_first_encounter_has_no_history() -> None:
    f = readmission_features(_enc(3.0, ["428", None, None]))
    assert math.isnan(float(f["prev_length_of_stay"]))  # type: ignore[arg-type]
    assert math.isnan(float(f["prior_emergency_visits_max"]))  # type: ignore[arg-type]
    assert f["prior_length_of_stay_total"] == 0.0
    assert f["prior_inpatient_visits_total"] == 0.0
    assert f["prev_discharge_disposition_id"] is None


def test_history_folds_earlier_encounters_only() -> None:
    """Each encounter sees the ones before it; a later encounter (its values or its own
    outcome) never changes an earlier encounter's features."""
    first = _enc(4.0, ["428"], number_inpatient=1, number_emergency=3, num_medications=12)
    h1 = after_encounter(PriorHistory(), first, readmitted_30d=True)
    second = _enc(
        2.0, ["250"], h1, number_inpatient=2, number_emergency=1, discharge_disposition_id=3
    )
    h2 = after_encounter(h1, second, readmitted_30d=False)
    third = _enc(7.0, ["486"], h2)

    f1, f2, f3 = (readmission_features(e) for e in (first, second, third))
    assert f2["prev_length_of_stay"] == 4.0
    assert f2["prev_num_medications"] == 12.0
    assert f2["prev_number_inpatient"] == 1.0
    assert f2["prior_emergency_visits_max"] == 3.0
    assert f2["prior_encounters"] == 1.0
    assert f2["is_readmission_30d"] == 1.0
    assert f3["prev_length_of_stay"] == 2.0
    assert f3["prev_discharge_disposition_id"] == "3"
    assert f3["prior_length_of_stay_total"] == 6.0
    assert f3["prior_inpatient_visits_total"] == 3.0
    assert f3["prior_emergency_visits_max"] == 3.0
    assert f3["prior_readmissions_30d"] == 1.0
    assert f3["is_readmission_30d"] == 0.0

    # Change everything about the later encounters: the earlier features stay equal.
    other_third = _enc(14.0, ["197"], h2, number_inpatient=9, number_emergency=20)
    after_encounter(h2, other_third, readmitted_30d=True)
    assert _same(readmission_features(first), f1)
    assert _same(readmission_features(second), f2)
    other_second = _enc(9.0, ["585"], h1, number_inpatient=8, number_emergency=40)
    after_encounter(h1, other_second, readmitted_30d=True)
    assert _same(readmission_features(first), f1)
    assert _same(readmission_features(second), f2)


def test_history_is_a_pure_fold() -> None:
    """The same encounters in the same order give the same history (training and a
    scorer of stored encounters fold it the same way)."""
    encs = [_enc(float(i + 1), ["428"], number_emergency=i) for i in range(3)]

    def fold() -> PriorHistory:
        h = PriorHistory()
        for i, e in enumerate(encs):
            h = after_encounter(h, e, readmitted_30d=i % 2 == 0)
        return h

    assert fold() == fold()


def test_diagnoses_by_slot_keeps_positions_and_counts_a_code_once() -> None:
    """Codes go to their column's position (primary first, an empty position None); a
    code listed in two positions is one diagnosis, as the store records it; codes without
    a slot fill the empty positions, then follow."""
    slots = ["diag_1", "diag_2", "diag_3"]
    coded = [("f.csv:2 diag_3", "428"), ("f.csv:2 diag_1", "250.01")]
    assert diagnoses_by_slot(coded, slots) == ["250.01", None, "428"]
    repeated = [("f.csv:3 diag_1", "618"), ("f.csv:3 diag_2", "997"), ("f.csv:3 diag_3", "618")]
    assert diagnoses_by_slot(repeated, slots) == ["618", "997", None]
    from_fhir = [("Condition/1", "428"), ("Condition/2", "401"), ("Condition/3", "428")]
    assert diagnoses_by_slot(from_fhir, slots[:1]) == ["428", "401"]
    assert diagnoses_by_slot([], slots) == [None, None, None]


def test_encounter_order_is_time_then_the_source_number() -> None:
    """Undated exports (one admission time for all) fall back to the encounter number,
    compared as a number, not as text."""
    t0, t1 = datetime(2008, 1, 1, tzinfo=UTC), datetime(2008, 2, 1, tzinfo=UTC)
    refs = [(t0, "diabetes130:100"), (t0, "diabetes130:99"), (t1, "diabetes130:1")]
    assert sorted(refs, key=lambda r: encounter_order(*r)) == [refs[1], refs[0], refs[2]]
    assert encounter_order(t0, "fhir:abc") > encounter_order(t0, "fhir:123")
