"""`vitalcast recalibrate`: a model moved to a hospital whose patients die more often at the
same scores gets its calibration refitted on that hospital's outcomes, and nothing else.

Real PostgreSQL, the real CLI, challenge-format files: a base model trained on one
synthetic site, recalibrated on a second site's stays, judged on a third set of that
second site's stays that neither step saw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result

from tests.model_cli import model_env, refused, run_cli
from tests.modeling_data import physionet_texts
from vitalcast.modeling.registry import read_sidecar

pytestmark = pytest.mark.slow


def _json(res: Result) -> dict[str, Any]:
    assert res.exit_code == 0, res.output
    out: dict[str, Any] = json.loads(res.output.strip().splitlines()[-1])
    return out


def _site(
    tmp_path: Path, name: str, n: int, seed: int, first_id: int, *, extra_deaths: bool
) -> tuple[str, ...]:
    """Challenge-format files of ``n`` stays; with ``extra_deaths`` every third survivor
    dies (a site where the same scores mean a higher risk)."""
    folder, outcomes = tmp_path / f"set-{name}", tmp_path / f"Outcomes-{name}.txt"
    folder.mkdir()
    records, text = physionet_texts(n, seed=seed, first_id=first_id)
    for rec in records:
        (folder / rec.name.split("/")[-1]).write_text(rec.text)
    lines = text.strip().splitlines()
    if extra_deaths:
        for i, line in enumerate(lines[1:], start=1):
            fields = line.split(",")
            if fields[-1] == "0" and int(fields[0]) % 3 == 0:
                lines[i] = ",".join([*fields[:-1], "1"])
    outcomes.write_text("\n".join(lines) + "\n")
    return ("--data", str(folder), "--outcomes", str(outcomes))


def _raw_scores(registry: Path, version: str, site: tuple[str, ...]) -> np.ndarray:
    """The fitted model's raw scores (before calibration) of a site's 48 h rows."""
    from vitalcast.modeling.loaders import load_dataset
    from vitalcast.modeling.recalibrate import fitted_pipeline
    from vitalcast.modeling.registry import load_model
    from vitalcast.modeling.tasks import get_task

    loaded = load_model(
        version, str(read_sidecar(version, registry)["sha256"]), registry_dir=registry
    )
    ds = load_dataset(
        get_task("icu-mortality"), session=None, data=Path(site[1]), outcomes=Path(site[3])
    )
    X = ds.X.loc[ds.rows_at(48.0), loaded.feature_names]
    return np.asarray(fitted_pipeline(loaded).decision_function(X))


def test_recalibration_fits_the_new_site_and_keeps_the_model(pg_url: str, tmp_path: Path) -> None:
    env = model_env(pg_url, tmp_path)
    registry = tmp_path / "registry"
    home = _site(tmp_path, "home", 160, seed=3, first_id=900000, extra_deaths=False)
    local = _site(tmp_path, "local", 240, seed=5, first_id=920000, extra_deaths=True)
    later = _site(tmp_path, "later", 240, seed=9, first_id=950000, extra_deaths=True)
    base = _json(
        run_cli(env, "train", "--task", "icu-mortality", *home, "--budget", "fast", "--json")
    )
    assert base["alias"] == "champion"

    out = _json(run_cli(env, "recalibrate", "--model", "champion", *local, "--json"))
    assert out["alias"] == "challenger"
    assert out["version"] != base["version"]
    assert out["metrics"]["validation"].startswith("5-fold cross-fitting grouped by patient")
    sidecar = read_sidecar(out["version"], registry)
    assert sidecar["model"]["recalibrated_from"] == base["version"]
    assert (
        sidecar["training_data_fingerprint"]
        == read_sidecar(base["version"], registry)["training_data_fingerprint"]
    )

    # The fitted model is the base model's: same raw scores, so the same ranking and the
    # same explanations; only the map from score to risk changed.
    np.testing.assert_array_equal(
        _raw_scores(registry, out["version"], later), _raw_scores(registry, base["version"], later)
    )

    # On stays neither step saw, the base model under-predicts this site's deaths; the
    # recalibrated one predicts about as many as happen.
    before = _json(run_cli(env, "evaluate", "--model", base["version"], *later, "--json"))
    after = _json(run_cli(env, "evaluate", "--model", out["version"], *later, "--json"))
    assert before["calibration_intercept"] > 0.3, before
    assert abs(after["calibration_intercept"]) < abs(before["calibration_intercept"]) / 2, after

    # Its model card says what was refitted and on what, not "trained on" the local data.
    card = run_cli(env, "report", "--model", out["version"], "--markdown")
    assert card.exit_code == 0, card.output
    assert f"Fitted model of {base['version']}, unchanged" in card.output
    assert "Calibrated on set-local + Outcomes-local.txt" in card.output

    # The champion is unchanged until a person promotes the challenger.
    listed = run_cli(env, "models", "list", "--task", "icu-mortality", "--json")
    assert listed.exit_code == 0, listed.output
    aliases = {r["version"]: r["alias"] for r in json.loads(listed.output.strip().splitlines()[-1])}
    assert aliases == {base["version"]: "champion", out["version"]: "challenger"}

    # Its recalibration stays can no longer validate it; the base model's training files
    # can recalibrate nothing.
    refused(
        run_cli(env, "evaluate", "--model", out["version"], *local, "--json"),
        "240 of the 240 patients",
    )
    refused(
        run_cli(env, "recalibrate", "--model", base["version"], *home),
        "Recalibrate it on data it never saw",
    )


def test_recalibration_needs_both_outcomes(pg_url: str, tmp_path: Path) -> None:
    env = model_env(pg_url, tmp_path)
    home = _site(tmp_path, "home", 120, seed=3, first_id=900000, extra_deaths=False)
    base = _json(
        run_cli(env, "train", "--task", "icu-mortality", *home, "--budget", "fast", "--json")
    )
    survivors = _site(tmp_path, "alive", 40, seed=5, first_id=930000, extra_deaths=False)
    Path(survivors[3]).write_text(
        "\n".join(
            ",".join([*line.split(",")[:-1], "0"]) if i else line
            for i, line in enumerate(Path(survivors[3]).read_text().strip().splitlines())
        )
        + "\n"
    )
    res = run_cli(env, "recalibrate", "--model", base["version"], *survivors)
    refused(res, "the label has one class")
    assert "needed to recalibrate a model" in res.output
    assert not [p for p in (tmp_path / "registry").iterdir() if p.name != base["version"]]
