"""FHIR corpora on real PostgreSQL: every Observation stored or quarantined, counts add up.

Expectations are derived from the files themselves (a plain JSON walk, independent of the
adapter) and from each corpus's MANIFEST.tsv.
"""

from __future__ import annotations

import csv
import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from vitalcast.clinical.tables import Condition, Encounter, Observation, Patient
from vitalcast.db.session import make_session_factory
from vitalcast.ingest.sources.fhir import SOURCE, iter_units
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.ingest.units import ingest_units
from vitalcast.security.crypto import FieldCipher

pytestmark = pytest.mark.shared_data


def _walk(res: dict[str, Any], prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(FHIR path, resource) of every resource inside a data document."""
    if res.get("resourceType") == "Bundle":
        if res.get("type") not in ("transaction", "batch", "collection", "searchset"):
            return
        for i, entry in enumerate(res.get("entry") or []):
            if "resource" in entry:
                inner = entry["resource"]
                path = (
                    f"{prefix}Bundle.entry[{i}].resource"
                    if not prefix
                    else f"{prefix}.entry[{i}].resource"
                )
                if inner.get("resourceType") == "Bundle":
                    yield from _walk(inner, f"{path}(Bundle/{inner.get('id', '')})")
                else:
                    yield path, inner
    else:
        yield "resource", res


def _expected_items(obs: dict[str, Any]) -> int:
    """One item per value: the Observation's own value (or its absence), and each component."""
    own = any(k.startswith("value") for k in obs) or "dataAbsentReason" in obs
    comps = len(obs.get("component") or [])
    return comps + (1 if own or not comps else 0)


def _accounted(engine: Engine) -> set[str]:
    """Observation resource paths found in stored source refs or quarantine locations."""
    with make_session_factory(engine)() as s:
        refs = list(s.scalars(select(Observation.source_ref)))
        refs += list(s.scalars(select(QuarantineItem.location)))
    return {r.split(")", 1)[0] + ")" for r in refs if "(Observation/" in r}


def test_hl7_r4_examples_every_observation_accounted(
    shared_data: Path, pg_engine: Engine, cipher: FieldCipher
) -> None:
    root = shared_data / "hl7-fhir-r4-examples"
    package = root / "package"
    with (root / "MANIFEST.tsv").open() as fh:
        manifest = list(csv.DictReader(fh, delimiter="\t"))
    expected_paths: set[str] = set()
    expected_items = 0
    for row in manifest:
        if not row["file"].endswith(".json") or row["file"].endswith("package.json"):
            continue
        doc = json.loads((root / row["file"]).read_text())
        assert doc["resourceType"] == row["resourceType"]
        for path, res in _walk(doc, ""):
            if res["resourceType"] == "Observation":
                expected_paths.add(f"{row['file']}#{path}(Observation/{res['id']})")
                expected_items += _expected_items(res)
    listed = sum(1 for r in manifest if r["resourceType"] == "Observation")
    assert listed == 11  # PROVENANCE.md: 11 Observation files, plus those inside Bundles
    assert len(expected_paths) > listed

    factory = make_session_factory(pg_engine)
    result = ingest_units(
        factory, iter_units([package]), source=SOURCE, location="examples", cipher=cipher
    )
    report = result.report
    assert report.balanced()
    obs = report.kinds["observation"]
    assert obs.received == expected_items
    assert obs.stored + obs.quarantined == expected_items
    assert _accounted(pg_engine) == expected_paths
    # The transaction-response Bundle is a server reply: a clear error, nothing stored.
    assert result.errors == [
        "package/Bundle-bundle-response.json: Bundle.type 'transaction-response' is not"
        " ingested; send a transaction, batch, collection or searchset Bundle"
    ]
    # Day-precision vitals are quarantined rather than given an invented time of day.
    assert report.reasons["imprecise_time"] > 0
    # Bundle 101's results take the time of the DiagnosticReport listing them; its
    # Patient/pat2 is not in the corpus, so they are quarantined as unknown_patient.
    unknown = Counter(
        r["location"].split(".entry")[0]
        for r in report.rejects
        if r["reason_code"] == "unknown_patient" and r["kind"] == "observation"
    )
    assert unknown["package/Bundle-101.json#Bundle"] == 17
    assert "not_modelled:RiskAssessment" in report.skipped

    with factory() as s:
        stored = {(o.code, o.unit, round(o.value or 0, 3)) for o in s.scalars(select(Observation))}
    # SpO2 example: codes 2708-6 and 59408-5, the first one in our vocabulary is kept.
    assert ("2708-6", "%", 95.0) in stored
    assert obs.stored == len(stored)

    again = ingest_units(
        factory, iter_units([package]), source=SOURCE, location="examples", cipher=cipher
    ).report
    assert again.kinds["observation"].stored == 0
    assert again.kinds["observation"].duplicates == obs.stored
    assert again.kinds["patient"].stored == 0


@pytest.mark.slow
def test_synthea_bundles_counts_add_up(
    shared_data: Path, pg_engine: Engine, cipher: FieldCipher
) -> None:
    root = shared_data / "synthea-fhir-r4-hiv-sample"
    with (root / "MANIFEST.tsv").open() as fh:
        manifest = {r["file"]: r for r in csv.DictReader(fh, delimiter="\t")}
    archive = root / "sample_data.tar.gz"
    expected_items = 0
    entries = 0
    types: Counter[str] = Counter()
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.name.endswith(".json"):
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            doc = json.load(fh)
            assert len(doc["entry"]) == int(manifest[member.name]["entries"])
            entries += len(doc["entry"])
            for _path, res in _walk(doc, ""):
                types[res["resourceType"]] += 1
                if res["resourceType"] == "Observation":
                    expected_items += _expected_items(res)
    for kind in ("Patient", "Encounter", "Observation", "Condition"):
        assert types[kind] == sum(int(r[kind] or 0) for r in manifest.values())

    factory = make_session_factory(pg_engine)
    result = ingest_units(
        factory, iter_units([archive]), source=SOURCE, location="synthea", cipher=cipher
    )
    report = result.report
    assert result.errors == []
    assert report.balanced()
    # Every bundle entry is accounted for: modelled items plus skipped ones.
    assert report.received + sum(report.skipped.values()) == entries
    assert report.kinds["observation"].received == expected_items
    assert report.kinds["patient"].stored == types["Patient"]
    assert report.kinds["encounter"].stored == types["Encounter"]
    cond = report.kinds["condition"]
    # 75 Tuberculosis conditions carry a 36-character OpenMRS concept id (under the SNOMED
    # system URL). Codes of up to 64 characters are stored whole (migration 0009); before,
    # they were quarantined as too_long.
    assert cond.quarantined == 0
    assert "too_long" not in report.reasons
    assert cond.stored + cond.duplicates == types["Condition"]
    # The HIV module's codes are OpenMRS concept ids under the LOINC system URL; none is in
    # our vocabulary, so they are reported, not stored. Observations without a value are
    # quarantined as no_value.
    assert report.reasons["unknown_code"] + report.reasons["no_value"] == expected_items
    assert report.skipped["not_modelled:Claim"] == types["Claim"]
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Patient)) == types["Patient"]
        assert s.scalar(select(func.count()).select_from(Encounter)) == types["Encounter"]
        assert s.scalar(select(func.count()).select_from(Condition)) == cond.stored
        uuid_codes = select(func.count()).where(func.length(Condition.code) == 36)
        assert s.scalar(uuid_codes.select_from(Condition)) == 75
        q = s.scalar(
            select(func.count()).select_from(QuarantineItem).where(QuarantineItem.source == "fhir")
        )
        assert q == report.quarantined
