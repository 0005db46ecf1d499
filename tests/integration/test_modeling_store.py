"""Training from the clinical store on PostgreSQL, the registry aliases, and the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.modeling_data import physionet_texts
from vitalcast.cli import main
from vitalcast.clinical.records import ObservationRecord, RecordBatch
from vitalcast.clinical.tables import Encounter
from vitalcast.features import stay_features
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.sources.physionet import parse_outcomes, parse_record
from vitalcast.ingest.validate import Invalid, check_observation
from vitalcast.modeling.datasets import load_physionet, load_stays_from_db
from vitalcast.modeling.registry import RegistryError
from vitalcast.modeling.service import (
    get_champion,
    get_version_or_raise,
    load_champion,
    promote,
    rollback,
    train_and_register,
)
from vitalcast.modeling.train import FAST_BUDGET
from vitalcast.security.crypto import FieldCipher

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _store(session: Session, cipher: FieldCipher, n: int) -> tuple[list, str]:
    records, outcomes = physionet_texts(n)
    batch = RecordBatch()
    for rec in records:
        batch.extend(parse_record(rec))
    batch.extend(parse_outcomes(outcomes))
    store_batch(session, batch, source="physionet2012", location="t", cipher=cipher, now=NOW)
    session.commit()
    return records, outcomes


def test_store_features_equal_file_features(
    db_session: Session, cipher: FieldCipher, tmp_path: Path
) -> None:
    records, outcomes = _store(db_session, cipher, 8)
    folder = tmp_path / "set-t"
    folder.mkdir()
    for rec in records:
        (folder / rec.name.split("/")[-1]).write_text(rec.text)
    (tmp_path / "Outcomes-t.txt").write_text(outcomes)
    files, labels_f, _g, _n = load_physionet(folder, tmp_path / "Outcomes-t.txt")
    store, labels_s, _g2, _e = load_stays_from_db(db_session, "in_hospital_death")
    assert len(store) == len(files) == 8
    refs = {i: r for i, r in db_session.execute(select(Encounter.id, Encounter.source_ref))}
    # The same encounter read from files (offline) and from the store (online) gives the
    # same features at the same time.
    for key, stay in store.items():
        twin = files[refs[int(key)]]
        assert len(twin.observations) == len(stay.observations)
        at = stay.admitted_at + timedelta(hours=13)
        a, b = stay_features(stay, at), stay_features(twin, at)
        assert all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)
    assert sorted(labels_f.values()) == sorted(labels_s.values())


def test_a_withdrawn_stay_neither_trains_nor_validates(
    db_session: Session, cipher: FieldCipher
) -> None:
    """A stay its source withdrew (entered in error, a cancelled admission) is no stay:
    training and evaluation from the store used to read it with its outcome."""
    _store(db_session, cipher, 6)
    withdrawn = db_session.scalars(select(Encounter).order_by(Encounter.id)).first()
    assert withdrawn is not None
    withdrawn.withdrawn_at, withdrawn.withdrawn_reason = NOW, "entered-in-error"
    db_session.commit()
    stays, labels, _groups, _ends = load_stays_from_db(db_session, "in_hospital_death")
    assert len(stays) == len(labels) == 5
    assert str(withdrawn.id) not in stays


@pytest.mark.slow
def test_train_from_store_champion_promote_rollback(
    db_session: Session, cipher: FieldCipher, tmp_path: Path
) -> None:
    _store(db_session, cipher, 120)
    first = train_and_register(
        "icu-mortality",
        session=db_session,
        registry_dir=tmp_path,
        budget=FAST_BUDGET,
        n_splits=3,
        n_boot=10,
    )
    db_session.commit()
    assert first.alias == "champion"
    second = train_and_register(
        "icu-mortality",
        session=db_session,
        registry_dir=tmp_path,
        budget=FAST_BUDGET,
        n_splits=3,
        n_boot=10,
        seed=1,
    )
    db_session.commit()
    assert second.alias is None
    champion = get_champion(db_session, "icu-mortality")
    assert champion is not None
    assert champion.version == first.version
    promote(db_session, version=second.version)
    assert get_champion(db_session, "icu-mortality").version == second.version  # type: ignore[union-attr]
    rollback(db_session, task="icu-mortality")
    assert get_champion(db_session, "icu-mortality").version == first.version  # type: ignore[union-attr]
    loaded = load_champion(db_session, "icu-mortality")
    assert loaded is not None
    assert loaded.version == first.version
    # The model rolled back from is withdrawn: a second rollback has nothing earlier to
    # restore, where it used to bring the withdrawn model back as champion.
    assert get_version_or_raise(db_session, second.version).alias == "withdrawn"
    with pytest.raises(RegistryError, match="no earlier champion to roll back to"):
        rollback(db_session, task="icu-mortality")
    assert get_champion(db_session, "icu-mortality").version == first.version  # type: ignore[union-attr]
    # A person can still promote it by name; the champion it replaces is then retired.
    promote(db_session, version=second.version)
    assert get_version_or_raise(db_session, first.version).alias == "retired"


@pytest.mark.slow
def test_cli_train_evaluate_and_errors(
    pg_url: str, db_session: Session, cipher: FieldCipher, tmp_path: Path
) -> None:
    records, outcomes = physionet_texts(120, seed=3)
    folder = tmp_path / "set-t"
    folder.mkdir()
    for rec in records:
        (folder / rec.name.split("/")[-1]).write_text(rec.text)
    (tmp_path / "Outcomes-t.txt").write_text(outcomes)
    # Other patients to validate on: `evaluate` refuses the training files.
    unseen_records, unseen_outcomes = physionet_texts(60, seed=4, first_id=910000)
    unseen = tmp_path / "set-u"
    unseen.mkdir()
    for rec in unseen_records:
        (unseen / rec.name.split("/")[-1]).write_text(rec.text)
    (tmp_path / "Outcomes-u.txt").write_text(unseen_outcomes)
    env = {
        "VITALCAST_DATABASE_URL": pg_url,
        "VITALCAST_DATA_DIR": str(tmp_path / "var"),
        "VITALCAST_ENV": "test",
    }
    runner = CliRunner()
    reg = str(tmp_path / "reg")
    res = runner.invoke(
        main,
        [
            "train",
            "--task",
            "icu-mortality",
            "--data",
            str(folder),
            "--outcomes",
            str(tmp_path / "Outcomes-t.txt"),
            "--registry",
            reg,
            "--budget",
            "fast",
            "--json",
        ],
        env=env,
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["task"] == "icu-mortality"
    assert out["alias"] == "champion"
    assert 0 <= out["metrics"]["auroc"] <= 1
    res = runner.invoke(
        main,
        [
            "evaluate",
            "--model",
            "champion",
            "--task",
            "icu-mortality",
            "--data",
            str(unseen),
            "--outcomes",
            str(tmp_path / "Outcomes-u.txt"),
            "--json",
        ],
        env=env,
    )
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output.strip().splitlines()[-1])
    assert ev["n"] == 60
    for key in (
        "n",
        "prevalence",
        "auroc",
        "auprc",
        "brier",
        "calibration_slope",
        "calibration_intercept",
        "hl_h",
        "event1",
        "threshold",
        "auroc_ci",
    ):
        assert key in ev
    res = runner.invoke(main, ["models", "list", "--json"], env=env)
    assert json.loads(res.output)[0]["version"] == out["version"]
    # Bad inputs end with one clear line and exit code 2, never a traceback.
    bad = tmp_path / "bad.txt"
    bad.write_text("not a record\n")
    res = runner.invoke(
        main,
        ["train", "--task", "icu-mortality", "--data", str(bad), "--outcomes", str(bad)],
        env=env,
    )
    assert res.exit_code == 2
    assert "not PhysioNet 2012 data" in res.output
    artifact = Path(reg) / out["version"] / "model.skops"
    data = bytearray(artifact.read_bytes())
    data[100] ^= 0xFF
    artifact.write_bytes(bytes(data))
    res = runner.invoke(
        main,
        [
            "evaluate",
            "--model",
            out["version"],
            "--data",
            str(folder),
            "--outcomes",
            str(tmp_path / "Outcomes-t.txt"),
        ],
        env=env,
    )
    assert res.exit_code == 2
    assert "does not match the registered" in res.output
    res = runner.invoke(main, ["train", "--task", "nope"], env=env)
    assert res.exit_code == 2
    assert "unknown task 'nope'; choose one of icu-mortality" in res.output  # and the rest
    assert "icu-mortality" in res.output


def test_a_stay_ingested_as_fhir_scores_like_the_same_stay_with_descriptors(
    pg_url: str, cipher: FieldCipher, tmp_path: Path
) -> None:
    """FHIR charts height and admission weight as observations, where PhysioNet (and so
    training) has them as the stay's descriptors. Stored through the FHIR adapter, the
    stay's features are the ones computed from its records with descriptors: height,
    admission weight and BMI included (they were missing), and the admission weight not
    counted twice in the weight series."""
    from dataclasses import replace

    from vitalcast.db.session import create_db_engine, make_session_factory
    from vitalcast.features import StayInput
    from vitalcast.ingest.sources.fhir import SOURCE as FHIR_SOURCE
    from vitalcast.ingest.sources.fhir import iter_units
    from vitalcast.ingest.units import ingest_units
    from vitalcast.serving.scoring import admission_descriptors, stay_input
    from vitalcast.synth import generate_cohort
    from vitalcast.synth.fhir import write_fhir_ndjson

    now = datetime.now(UTC)
    batch = generate_cohort(n_current=2, n_historic=0, seed=31, now=now)
    batch.encounters = [
        replace(e, height_cm=160.0 + 10 * i, weight_kg=70.0 + 5 * i)
        for i, e in enumerate(batch.encounters)
    ]
    write_fhir_ndjson(batch, tmp_path / "fhir")
    engine = create_db_engine(pg_url)
    try:
        sessions = make_session_factory(engine)
        report = ingest_units(
            sessions,
            iter_units([tmp_path / "fhir"]),
            source=FHIR_SOURCE,
            location="t",
            cipher=cipher,
        )
        assert report is not None
        sex = {p.ref: p.sex for p in batch.patients}
        with sessions() as session:
            stored = {e.admitted_at: e for e in session.scalars(select(Encounter))}
            assert len(stored) == 2
            for enc in batch.encounters:
                row = stored[enc.admitted_at]
                assert (row.height_cm, row.weight_kg) == (None, None)  # FHIR has no descriptors
                twin = StayInput(
                    admitted_at=enc.admitted_at,
                    age_years=row.age_years,
                    sex=sex[enc.patient_ref],
                    unit=enc.unit,
                    height_cm=enc.height_cm,
                    weight_kg=enc.weight_kg,
                    observations=tuple(
                        (o.code, o.value, o.effective_at)
                        for o in _clean(batch.observations, now)
                        if o.encounter_ref == enc.ref and o.value is not None
                    ),
                )
                at = min(now, enc.admitted_at + timedelta(hours=6))
                a, b = stay_features(stay_input(session, row, at), at), stay_features(twin, at)
                assert (a["height_cm"], a["weight_kg"]) == (enc.height_cm, enc.weight_kg)
                # What the patient page shows is what the model read.
                assert admission_descriptors(session, row) == (enc.height_cm, enc.weight_kg)
                assert a["bmi"] == a["bmi"]  # measured, not missing
                differ = {
                    k
                    for k in a
                    if not ((a[k] != a[k] and b[k] != b[k]) or a[k] == pytest.approx(b[k]))
                }
                assert differ == set(), sorted(differ)
    finally:
        engine.dispose()


def _clean(records: list[ObservationRecord], now: datetime) -> list[ObservationRecord]:
    """The records that pass the ingestion rules, as training's file readers keep them."""
    kept = []
    for rec in records:
        try:
            kept.append(check_observation(rec, now=now))
        except Invalid:
            continue
    return kept
