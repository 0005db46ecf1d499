"""`vitalcast evaluate` validates only on data the model never saw, and bad input ends
with one clear line and exit code 2 (never NaN metrics, an internal error or a saved
resubstitution that the model card would call validation on unseen data).

Real PostgreSQL, the real CLI (click's CliRunner), the real heart-disease table for the
`tabular` task and challenge-format files ingested into the store for icu-mortality.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from tests.model_cli import model_env, refused, run_cli
from tests.modeling_data import physionet_texts
from tests.tabular_data import TASK_YAML, heart_task_files
from vitalcast.clinical.records import RecordBatch
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.sources.physionet import parse_outcomes, parse_record
from vitalcast.security.crypto import FieldCipher

pytestmark = pytest.mark.slow


def _store(session: Session, cipher: FieldCipher, n: int, first_id: int, seed: int) -> None:
    records, outcomes = physionet_texts(n, seed=seed, first_id=first_id)
    batch = RecordBatch()
    for rec in records:
        batch.extend(parse_record(rec))
    batch.extend(parse_outcomes(outcomes))
    store_batch(session, batch, source="physionet2012", location="t", cipher=cipher)
    session.commit()


def _evaluations(registry: Path, version: str) -> list[Path]:
    return sorted((registry / version / "evaluations").glob("*.json"))


def test_store_evaluation_reads_only_stays_stored_after_training(
    pg_url: str, db_session: Session, cipher: FieldCipher, tmp_path: Path
) -> None:
    env = model_env(pg_url, tmp_path)
    _store(db_session, cipher, 120, first_id=900000, seed=3)
    res = run_cli(env, "train", "--task", "icu-mortality", "--budget", "fast", "--json")
    assert res.exit_code == 0, res.output
    version = json.loads(res.output.strip().splitlines()[-1])["version"]

    # The store holds only what the model was trained on: nothing to validate on. (Before:
    # the training stays were scored again and saved as an external validation.)
    res = run_cli(env, "evaluate", "--model", version)
    refused(res, "the store holds no labelled stay the model has not seen")
    assert _evaluations(tmp_path / "registry", version) == []

    for bad in ("-5", "0", "nan", "inf"):
        res = run_cli(env, "evaluate", "--model", version, "--landmark", bad)
        refused(res, "--landmark must be a finite number of hours after admission above 0")

    # New patients' stays arrive: those, and only those, are evaluated.
    _store(db_session, cipher, 60, first_id=910000, seed=5)
    res = run_cli(env, "evaluate", "--model", version, "--json")
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output.strip().splitlines()[-1])
    assert ev["n"] == 60
    assert ev["validation"].startswith("temporal: one prediction per stay at 48 h")
    assert 0.0 < ev["auroc"] < 1.0
    res = run_cli(env, "evaluate", "--model", version, "--landmark", "24", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["n"] == 60

    res = run_cli(env, "report", "--model", version, "--markdown")
    assert res.exit_code == 0, res.output
    assert "Validation on unseen data: temporal" in res.output
    assert "Resubstitution" not in res.output

    # A stored evaluation damaged on disk (a disk full mid-write): one clear line naming
    # the record, never an internal error or a card without its figures on unseen data.
    record = _evaluations(tmp_path / "registry", version)[0]
    record.write_text(record.read_text()[:40])
    for args in (("--markdown",), ("--out", str(tmp_path / "card.html"))):
        res = run_cli(env, "report", "--model", version, *args)
        refused(res, f"stored evaluation evaluations/{record.name} of {version} cannot be read")
    assert not (tmp_path / "card.html").exists()
    record.write_text("[]")
    refused(run_cli(env, "report", "--model", version, "--markdown"), "is not a JSON object")


def test_training_files_and_landmark_arerefused(
    pg_url: str, db_session: Session, tmp_path: Path
) -> None:
    env = model_env(pg_url, tmp_path)
    folder, outcomes = tmp_path / "set-t", tmp_path / "Outcomes-t.txt"
    folder.mkdir()
    records, text = physionet_texts(120, seed=3)
    for rec in records:
        (folder / rec.name.split("/")[-1]).write_text(rec.text)
    outcomes.write_text(text)
    res = run_cli(
        env,
        *("train", "--task", "icu-mortality", "--data", str(folder), "--outcomes", str(outcomes)),
        *("--budget", "fast", "--json"),
    )
    assert res.exit_code == 0, res.output
    version = json.loads(res.output.strip().splitlines()[-1])["version"]
    files = ("--data", str(folder), "--outcomes", str(outcomes))
    # The training files, at the task's landmarks or at one of them or another hour.
    for extra in ((), ("--landmark", "48"), ("--landmark", "30")):
        res = run_cli(env, "evaluate", "--model", version, *files, *extra)
        refused(res, "is the data model")
        assert "resubstitution, not validation" in res.output
    res = run_cli(env, "evaluate", "--model", version, *files, "--landmark", "nan")
    refused(res, "--landmark must be a finite number of hours after admission above 0")
    assert _evaluations(tmp_path / "registry", version) == []

    # The training stays with new patients' stays added: not the training data (another
    # fingerprint), but two thirds of it is. (Before, it was evaluated and saved.)
    new_records, new_text = physionet_texts(60, seed=5, first_id=910000)
    fresh, fresh_outcomes = tmp_path / "set-new", tmp_path / "Outcomes-new.txt"
    fresh.mkdir()
    for rec in new_records:
        name = rec.name.split("/")[-1]
        (folder / name).write_text(rec.text)  # the training folder, now with 60 more
        (fresh / name).write_text(rec.text)
    fresh_outcomes.write_text(new_text)
    outcomes.write_text(text + "\n" + "\n".join(new_text.splitlines()[1:]) + "\n")
    res = run_cli(env, "evaluate", "--model", version, *files)
    refused(res, "120 of the 180 patients in set-t + Outcomes-t.txt have rows model")
    assert "would not be validation" in res.output
    assert _evaluations(tmp_path / "registry", version) == []

    # The new patients alone are validation; none of them holds a training row.
    new_files = ("--data", str(fresh), "--outcomes", str(fresh_outcomes))
    res = run_cli(env, "evaluate", "--model", version, *new_files, "--json")
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output.strip().splitlines()[-1])
    assert (ev["n"], ev["training_overlap_patients"]) == (60, 0)

    # The training rows' digests are checked like the artifact: one byte changed refuses.
    digests = tmp_path / "registry" / version / "training_rows.npy"
    data = bytearray(digests.read_bytes())
    data[-1] ^= 0x01
    digests.write_bytes(bytes(data))
    res = run_cli(env, "evaluate", "--model", version, *new_files)
    refused(res, "training_rows.npy does not match the sha256 its sidecar records")


@pytest.mark.shared_data
def test_tabular_task_file_and_evaluation_errors(
    pg_url: str, db_session: Session, shared_data: Path, tmp_path: Path
) -> None:
    env = model_env(pg_url, tmp_path)
    task_file, full = heart_task_files(shared_data, tmp_path)
    header, *rows = full.read_text().splitlines()
    # Half the patients train, the other half validate.
    csv, unseen = tmp_path / "train.csv", tmp_path / "unseen.csv"
    csv.write_text("\n".join([header, *rows[::2]]) + "\n")
    unseen.write_text("\n".join([header, *rows[1::2]]) + "\n")
    train = ("train", "--task", "tabular", "--data", str(csv), "--budget", "fast")

    # Task files that would leak the label, store patient ids, or mean two things.
    for features, message in (
        ("[patient, age, trestbps]", "the id_column 'patient' is listed as a feature"),
        ("[num, age, trestbps]", "the label column 'num' is listed as a feature"),
        ("[age, trestbps, cp]", "'cp' listed as both numeric and categorical"),
        ("[age, trestbps, age]", "'age' listed twice"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(TASK_YAML.replace(NUMERIC, features).split("labels:")[0])
        refused(run_cli(env, *train, "--task-file", str(bad)), message)

    res = run_cli(env, *train, "--task-file", str(task_file), "--json")
    assert res.exit_code == 0, res.output
    version = json.loads(res.output.strip().splitlines()[-1])["version"]
    evaluate = ("evaluate", "--model", version)

    # The training table itself, also through a task file listing the features in
    # another order.
    refused(
        run_cli(env, *evaluate, "--task-file", str(task_file), "--data", str(csv)),
        "is the data model",
    )
    reordered = tmp_path / "reordered.yaml"
    reordered.write_text(TASK_YAML.replace(NUMERIC, "[ca, oldpeak, age, trestbps, chol, thalach]"))
    refused(
        run_cli(env, *evaluate, "--task-file", str(reordered), "--data", str(csv)),
        "is the data model",
    )

    # A table whose task file names a feature the model does not have.
    other_csv = tmp_path / "other.csv"
    other_csv.write_text(
        "\n".join([header.replace("oldpeak", "st_depression"), *rows[1::2]]) + "\n"
    )
    other_yaml = tmp_path / "other.yaml"
    other_yaml.write_text(TASK_YAML.replace("oldpeak", "st_depression"))
    refused(
        run_cli(env, *evaluate, "--task-file", str(other_yaml), "--data", str(other_csv)),
        f"other.csv lacks 1 of the 13 features of model {version}: oldpeak",
    )

    # Patients without disease only: no AUROC, no calibration to report.
    healthy = tmp_path / "healthy.csv"
    healthy.write_text("\n".join([header, *(r for r in rows[1::2] if r.endswith(",0"))]) + "\n")
    refused(
        run_cli(env, *evaluate, "--task-file", str(task_file), "--data", str(healthy)),
        "the label has one class",
    )
    refused(
        run_cli(
            env,
            *evaluate,
            *("--task-file", str(task_file), "--data", str(unseen), "--landmark", "6"),
        ),
        "--landmark applies to time-series tasks",
    )
    assert _evaluations(tmp_path / "registry", version) == []

    # The patients the model never saw are evaluated, stored, and reported as such.
    res = run_cli(env, *evaluate, "--task-file", str(task_file), "--data", str(unseen), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["n"] == len(rows[1::2])
    assert len(_evaluations(tmp_path / "registry", version)) == 1
    res = run_cli(env, "report", "--model", version, "--markdown")
    assert "Validation on unseen data: unseen.csv" in res.output
    # The HTML model card shows it too, with its own plots (the decision curve included).
    card = tmp_path / "card.html"
    res = run_cli(env, "report", "--model", version, "--out", str(card))
    assert res.exit_code == 0, res.output
    page = card.read_text()
    assert "<h2>Validation on unseen data: unseen.csv</h2>" in page
    assert page.count("decision-curve plots") == 2
    assert 'aria-label="Performance (Validation on unseen data: unseen.csv)"' in page


NUMERIC = "[age, trestbps, chol, thalach, oldpeak, ca]"
