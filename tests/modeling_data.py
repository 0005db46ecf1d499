"""Small, seeded synthetic ICU stays for model tests (signal plus plenty of noise)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from vitalcast.features import StayInput
from vitalcast.ingest.sources.physionet import RecordText

T0 = datetime(2024, 3, 1, tzinfo=UTC)
HR, LACTATE, GCS, SBP = "8867-4", "2524-7", "9269-2", "8480-6"


def synthetic_stays(
    n: int, seed: int = 7
) -> tuple[dict[str, StayInput], dict[str, float], dict[str, str]]:
    """``n`` stays, about 20 % deaths; deaths have higher HR and lactate, lower GCS."""
    rng = np.random.default_rng(seed)
    stays: dict[str, StayInput] = {}
    labels: dict[str, float] = {}
    groups: dict[str, str] = {}
    for i in range(n):
        risk = rng.normal()
        died = int(rng.random() < 1 / (1 + np.exp(-(risk * 1.5 - 1.6))))
        obs: list[tuple[str, float, datetime]] = []
        for h in range(0, 48, 3):
            at = T0 + timedelta(hours=h, minutes=int(rng.integers(0, 60)))
            obs.append((HR, float(85 + 8 * risk + rng.normal(0, 12)), at))
            obs.append((SBP, float(120 - 6 * risk + rng.normal(0, 15)), at))
            if h % 12 == 0 and rng.random() < 0.7:
                obs.append((LACTATE, float(max(0.3, 1.8 + 0.6 * risk + rng.normal(0, 0.8))), at))
            if h % 6 == 0:
                obs.append(
                    (GCS, float(np.clip(round(13 - 1.5 * risk + rng.normal(0, 2)), 3, 15)), at)
                )
        obs.sort(key=lambda o: o[2])
        key = f"s{i}"
        stays[key] = StayInput(
            admitted_at=T0,
            age_years=float(np.clip(65 + 6 * risk + rng.normal(0, 14), 18, 95)),
            sex="male" if rng.random() < 0.55 else "female",
            unit=["CCU", "CSRU", "MICU", "SICU"][i % 4],
            height_cm=None if i % 5 == 0 else float(rng.normal(170, 10)),
            weight_kg=float(rng.normal(80, 15)),
            observations=tuple(obs),
        )
        labels[key] = float(died)
        groups[key] = f"p{i // 2}"  # two stays per patient: grouping matters
    return stays, labels, groups


def physionet_texts(n: int, seed: int = 11, first_id: int = 900000) -> tuple[list[RecordText], str]:
    """``n`` record files in the challenge format and their Outcomes file text
    (RecordIDs from ``first_id``: another range is other patients)."""
    rng = np.random.default_rng(seed)
    records: list[RecordText] = []
    outcomes = ["RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"]
    for i in range(n):
        rid = first_id + i
        risk = rng.normal()
        died = int(rng.random() < 1 / (1 + np.exp(-(risk * 1.5 - 1.6))))
        lines = [
            "Time,Parameter,Value",
            f"00:00,RecordID,{rid}",
            f"00:00,Age,{int(np.clip(65 + 8 * risk + rng.normal(0, 12), 18, 95))}",
            f"00:00,Gender,{int(rng.random() < 0.55)}",
            "00:00,Height,-1",
            f"00:00,ICUType,{1 + i % 4}",
            f"00:00,Weight,{rng.normal(80, 12):.1f}",
        ]
        for h in range(0, 48, 4):
            m = int(rng.integers(0, 60))
            lines.append(f"{h:02d}:{m:02d},HR,{85 + 8 * risk + rng.normal(0, 10):.0f}")
            if h % 12 == 0:
                lines.append(f"{h:02d}:{m:02d},Lactate,{max(0.3, 1.8 + 0.7 * risk):.1f}")
                lines.append(f"{h:02d}:{m:02d},FiO2,0.5")
        records.append(RecordText(f"set-t/{rid}.txt", "\n".join(lines) + "\n"))
        outcomes.append(f"{rid},-1,-1,{5 + i % 7},-1,{died}")
    return records, "\n".join(outcomes) + "\n"


def register_champion(session: Any, trained: Any) -> None:
    """Register a trained model (a ``TrainOutcome``) as its task's champion (the first
    version of a task is)."""
    from vitalcast.modeling.service import register_version

    register_version(
        session,
        version=trained.version,
        task=trained.task,
        path=trained.artifact_path,
        sha256=trained.sha256,
        threshold=trained.threshold,
        metrics=trained.metrics,
    )


def assert_served_factors_match_sklearn(
    estimator: Any, feature_names: list[str], rows: list[dict[str, Any]]
) -> None:
    """Serving scores and explains from the compiled array form; for every row it must say
    what the pandas + scikit-learn path says (same factors, contributions, probability)."""
    import pytest

    from vitalcast.modeling.registry import LoadedModel
    from vitalcast.serving.predictor import Predictor

    model = LoadedModel(
        version="v",
        task="icu-mortality",
        threshold=0.3,
        feature_names=feature_names,
        categorical=[],
        pipeline=estimator,
        sidecar={},
        path=Path("."),
        sha256="",
    )
    predictor = Predictor(model, model_version_id=1)
    assert predictor._explain_preps is not None, "the fast path must be the one under test"
    for row in rows:
        served = predictor.score(row, explain=True, top=5)
        reference = sorted(model.explain(row, top=5), key=lambda f: -abs(f.contribution))
        assert [f["feature"] for f in served.factors] == [f.feature for f in reference]
        for got, want in zip(served.factors, reference, strict=True):
            assert got["contribution"] == pytest.approx(round(want.contribution, 4), abs=1e-4)
            assert got["value"] == (None if want.value is None else pytest.approx(want.value))
        assert served.probability == pytest.approx(model.predict_proba_row(row), abs=1e-9)


def save_small_model(
    registry: Path,
    seed: int,
    *,
    servable: bool = True,
    threshold: float = 0.5,
    publish: bool = True,
) -> tuple[str, Path, str]:
    """A small icu-mortality model on two inputs (``a``, ``b``) saved in ``registry``
    (``publish=False``: left staged, as a registration saves it); each seed a different
    model, so a different version in the same second. ``servable=False`` leaves out the
    preprocessing step every vitalcast model has, so it loads but cannot serve."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from vitalcast.modeling.registry import save_model

    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(60, 2)), columns=["a", "b"])
    y = (X["a"] > 0).astype(int)
    model: Any = LogisticRegression()
    if servable:
        prep = ColumnTransformer([("num", StandardScaler(), ["a", "b"])])
        model = Pipeline([("prep", prep), ("model", model)])
    model.fit(X, y)
    version, path, sha, _ = save_model(
        registry,
        model,
        task="icu-mortality",
        feature_names=["a", "b"],
        categorical=[],
        threshold=threshold,
        metrics={"auroc": 0.5},
        fingerprint=f"f{seed}",
        reference={},
        publish=publish,
    )
    return version, path, sha


def register_small_model(
    session: Any,
    registry: Path,
    seed: int,
    *,
    servable: bool = True,
    threshold: float = 0.5,
    agent: Any = None,
) -> tuple[str, Path]:
    """:func:`save_small_model`, registered and committed (the task's first becomes
    champion)."""
    from vitalcast.modeling.service import register_version
    from vitalcast.security import audit

    version, path, sha = save_small_model(registry, seed, servable=servable, threshold=threshold)
    register_version(
        session,
        version=version,
        task="icu-mortality",
        path=path,
        sha256=sha,
        threshold=threshold,
        metrics={"auroc": 0.5},
        agent=agent or audit.SYSTEM,
    )
    session.commit()
    return version, path
