"""Fuzzing the FHIR, HL7 v2 and payload parsers: no crash, only clear rejections."""

from __future__ import annotations

import hashlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hl7_samples import ORU_R01
from vitalcast.errors import IngestError, InvalidInput
from vitalcast.ingest.payloads import parse_observations_payload
from vitalcast.ingest.sources.fhir import parse_bytes
from vitalcast.ingest.sources.hl7v2 import Hl7FormatError, parse_message

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
fhir_keys = st.sampled_from(
    [
        "resourceType",
        "id",
        "status",
        "code",
        "subject",
        "effectiveDateTime",
        "valueQuantity",
        "component",
        "entry",
        "type",
        "resource",
        "fullUrl",
        "period",
        "birthDate",
        "gender",
    ]
)
fhirish = st.recursive(
    st.sampled_from(
        [
            "Observation",
            "Bundle",
            "Patient",
            "Encounter",
            "collection",
            "final",
            "Patient/1",
            "urn:uuid:1",
            "2025-01-01T00:00:00Z",
            "2025",
            "8867-4",
        ]
    )
    | st.integers()
    | st.none(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(fhir_keys, inner, max_size=6),
    max_leaves=30,
)


def _fhir_ok(data: bytes) -> None:
    try:
        unit = parse_bytes(data, "fuzz.json")
    except IngestError as exc:
        error = str(exc)
    else:
        error = ""
    if error:
        assert error.startswith("fuzz.json")
        return
    assert unit.batch.received == len(unit.batch.observations) + len(unit.batch.patients) + len(
        unit.batch.encounters
    ) + len(unit.batch.conditions) + len(unit.batch.imaging_studies) + len(unit.batch.rejected)


@FAST
@given(st.binary(max_size=300))
def test_fhir_random_bytes(data: bytes) -> None:
    _fhir_ok(data)


@FAST
@given(fhirish)
def test_fhir_structured_noise(doc: object) -> None:
    _fhir_ok(json.dumps(doc).encode())


@FAST
@given(json_values)
def test_payload_noise(doc: object) -> None:
    details: list[dict[str, object]] | None = None
    try:
        parse_observations_payload(json.dumps(doc).encode())
    except InvalidInput as exc:
        details = exc.details
    if details is not None:
        assert details
        assert all({"loc", "msg"} <= set(d) for d in details)


def _pseudonym(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@FAST
@given(st.text(max_size=300))
def test_hl7_random_text(text: str) -> None:
    error = ""
    try:
        parse_message(text, origin="fuzz", pseudonym=_pseudonym)
    except Hl7FormatError as exc:
        error = str(exc)
    assert not error or error.startswith("fuzz")


@FAST
@given(st.data())
def test_hl7_mutated_fields(data: st.DataObject) -> None:
    """Replace one field of a valid ORU^R01 with arbitrary text (delimiters included)."""
    segments = ORU_R01.split("\r")
    s = data.draw(st.integers(1, len(segments) - 1))
    fields = segments[s].split("|")
    f = data.draw(st.integers(1, len(fields) - 1))
    fields[f] = data.draw(st.text(alphabet=st.characters(codec="utf-8"), max_size=30))
    segments[s] = "|".join(fields)
    try:
        msg = parse_message("\r".join(segments), origin="fuzz", pseudonym=_pseudonym)
    except Hl7FormatError as exc:
        error = str(exc)
    else:
        error = ""
    if error:
        assert error.startswith("fuzz")
        return
    batch = msg.unit.batch
    assert batch.received >= len(batch.observations) + len(batch.rejected)
