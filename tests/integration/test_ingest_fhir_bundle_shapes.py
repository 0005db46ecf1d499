"""Random JSON shapes as Bundle entries, next to a valid Patient and stay, into PostgreSQL.

The FHIR reader either refuses the whole document with its documented error (a
:class:`~vitalcast.ingest.sources.fhir.FhirFormatError` naming the file) or accounts for
every entry: a record, a quarantined item at a path inside the file, or a skip by reason.
The valid Patient and stay are stored whatever the other entries hold, and the store's
report balances (received = stored + duplicates + quarantined). Before, a ``request``
that was a string or a DiagnosticReport ``effectivePeriod`` that was not an object lost
the whole file as an internal error.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from vitalcast.ingest.sources.fhir import SOURCE, FhirFormatError, parse_bytes
from vitalcast.ingest.units import store_unit
from vitalcast.security.crypto import FieldCipher

PATIENT = {"resourceType": "Patient", "id": "fz-pat"}
STAY = {
    "resourceType": "Encounter",
    "id": "fz-stay",
    "status": "in-progress",
    "class": {"code": "IMP"},
    "subject": {"reference": "Patient/fz-pat"},
    "period": {"start": "2026-11-20T10:00:00Z"},
}
# The keys the reader looks at, with values of every JSON type.
KEYS = [
    "resource",
    "request",
    "method",
    "fullUrl",
    "resourceType",
    "id",
    "type",
    "entry",
    "status",
    "subject",
    "reference",
    "effectivePeriod",
    "effectiveDateTime",
    "issued",
    "result",
    "period",
    "start",
    "end",
    "name",
    "given",
    "code",
]
LEAVES = (
    st.sampled_from(
        [
            "Bundle",
            "DiagnosticReport",
            "Observation",
            "Encounter",
            "Patient",
            "collection",
            "final",
            "finished",
            "POST",
            "Patient/fz-pat",
            "urn:uuid:1",
            "2026-11-21T10:00:00Z",
            "2026-11-21",
        ]
    )
    | st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
)
SHAPES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=20,
)
SHAPED = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _is_bundle(entry: Any) -> bool:
    """An entry holding a nested Bundle: its items are its own entries (maybe none)."""
    res = entry.get("resource") if isinstance(entry, dict) else None
    return isinstance(res, dict) and res.get("resourceType") == "Bundle"


@SHAPED
@given(others=st.lists(SHAPES, max_size=4))
def test_every_entry_is_stored_quarantined_or_skipped(
    pg_engine: Engine, cipher: FieldCipher, others: list[Any]
) -> None:
    entries = [{"resource": PATIENT}, {"resource": STAY}, *others]
    data = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})
    try:
        unit = parse_bytes(data.encode(), "shapes.json")
    except FhirFormatError as exc:  # only whole-document problems, named by file
        raise AssertionError(f"a valid Bundle was refused whole: {exc}") from None
    batch = unit.batch
    records = (
        batch.patients
        + batch.encounters
        + batch.observations
        + batch.conditions
        + batch.imaging_studies
    )
    assert batch.received == len(records) + len(batch.rejected)
    assert unit.items >= sum(1 for e in entries if not _is_bundle(e))
    assert all(r.location.startswith("shapes.json#Bundle.entry[") for r in batch.rejected)
    assert "Patient/fz-pat" in [p.ref for p in batch.patients]
    assert "Encounter/fz-stay" in [e.ref for e in batch.encounters]
    with Session(pg_engine) as session:
        report = store_unit(session, unit, source=SOURCE, cipher=cipher)
        session.rollback()
    assert report.balanced()
    assert report.received == batch.received
    assert report.count("patient").stored >= 1
    assert report.count("encounter").stored >= 1
