"""Fuzzing the PhysioNet 2012 parser: no crash, only clear rejections, nothing lost.

Every data row of a record file must end up as exactly one observation or one rejection
with its location (``received == observations + rejected``); a file that is not in the
format at all raises PhysionetFormatError, never anything else.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vitalcast.ingest.sources.physionet import (
    DESCRIPTORS,
    PhysionetFormatError,
    RecordText,
    parse_outcomes,
    parse_record,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Plausible pieces and hostile ones (huge hours, Unicode digits, signs, NaN, infinity).
stamps = st.one_of(
    st.sampled_from(["00:00", "00:07", "47:59", "48:00", "1:5", "99999999999:00", "²:00",
                     "-1:00", "12:60", "", "ab:cd", "12", " 03:15 "]),
    st.text(max_size=8),
)  # fmt: skip
parameters = st.one_of(
    st.sampled_from(["HR", "Temp", "MAP", "FiO2", "Glucose", "Lactate", "pH", "GCS", "Urine",
                     "RecordID", "Age", "Gender", "Height", "ICUType", "Weight", "", "hr"]),
    st.text(max_size=10),
)  # fmt: skip
values = st.one_of(
    st.sampled_from(["-1", "0", "87", "36.6", "1e308", "1e309", "nan", "inf", "-inf", "²",
                     "--5", "3,5", "", "0x10", "1_000"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=8),
)  # fmt: skip
rows = st.tuples(stamps, parameters, values).map(lambda t: ",".join(t))
junk_rows = st.text(max_size=30)


def _record(descriptor_values: list[str], body: list[str]) -> str:
    head = ["Time,Parameter,Value"]
    head += [
        f"00:00,{name},{value}" for name, value in zip(DESCRIPTORS, descriptor_values, strict=True)
    ]
    return "\n".join(head + body)


@FAST
@given(
    st.lists(values, min_size=6, max_size=6),
    st.lists(st.one_of(rows, junk_rows), max_size=25),
)
def test_record_files_never_crash_and_lose_nothing(descriptors: list[str], body: list[str]) -> None:
    text = _record(["132539", *descriptors[1:]], body)
    try:
        batch = parse_record(RecordText("132539.txt", text))
    except PhysionetFormatError as exc:
        message = str(exc)
    else:
        message = ""
    if message:
        assert "132539.txt" in message  # the error names the file
        return
    assert batch.received == len(batch.observations) + len(batch.rejected)
    for rejected in batch.rejected:
        assert rejected.location.startswith("132539.txt:")
        assert rejected.reason
    for obs in batch.observations:
        assert obs.effective_at.tzinfo is not None


@FAST
@given(st.text(max_size=300))
def test_arbitrary_text_is_a_format_error_or_a_batch(text: str) -> None:
    try:
        batch = parse_record(RecordText("x.txt", text))
    except PhysionetFormatError:
        return
    assert batch.received == len(batch.observations) + len(batch.rejected)


outcome_cells = st.one_of(
    st.sampled_from(["132539", "1", "0", "-1", "5.5", "1e308", "inf", "nan", "", "x", "²"]),
    st.text(max_size=6),
)


@FAST
@given(st.lists(st.tuples(outcome_cells, outcome_cells, outcome_cells), max_size=20))
@example([("132539", "5.5", "0")])  # a valid stay: its length of stay is not a 0/1 label
def test_outcome_files_never_crash(cells: list[tuple[str, str, str]]) -> None:
    lines = ["RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"]
    lines += [f"{rid},1,1,{los},-1,{death}" for rid, los, death in cells]
    try:
        batch = parse_outcomes("\n".join(lines))
    except PhysionetFormatError as exc:
        message = str(exc)
    else:
        message = ""
    if message:
        assert "Outcomes" in message
        return
    assert batch.received == len(batch.outcomes) + len(batch.rejected)
    for outcome in batch.outcomes:
        # Two kinds per stay: the label (0/1) and the length of stay in days.
        assert outcome.kind in ("in_hospital_death", "length_of_stay_days")
        if outcome.kind == "in_hospital_death":
            assert outcome.value in (0.0, 1.0)
        else:
            assert math.isfinite(outcome.value)
            assert outcome.value >= 0
