"""Ward data for UI tests: a synthetic cohort through the real ingestion path, plus scores.

``store_synthetic_ward`` stores stays exactly as ``vitalcast synth`` does (store_batch,
encryption, quarantine). ``record_risk_history`` writes stored prediction rows under a
registered, non-serving model version: the pages only *read* predictions, so their tests
need rows of the real shape, not a trained model. The end-to-end tests use a trained
champion instead, as soon as the modeling capability provides one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.db.types import new_public_id
from vitalcast.features.labels import describe_feature, feature_label
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.security.crypto import FieldCipher
from vitalcast.synth.cohort import generate_cohort
from vitalcast.synth.service import store_cohort

BANDS = ((0.5, "critical"), (0.3, "high"), (0.1, "medium"), (0.0, "low"))


def band_of(score: float) -> str:
    return next(name for low, name in BANDS if score >= low)


def store_synthetic_ward(
    session: Session, cipher: FieldCipher, *, n_current: int, now: datetime, seed: int = 7
) -> None:
    batch = generate_cohort(n_current=n_current, n_historic=0, seed=seed, now=now)
    store_cohort(session=session, batch=batch, cipher=cipher, now=now, location="ui-test")


def register_version(session: Session, version: str = "test-0001", alias: str | None = None) -> int:
    row = ModelVersion(
        version=version,
        task="icu-mortality",
        artifact_path="/nonexistent/not-served.joblib",
        sha256="0" * 64,
        threshold=0.3,
        metrics={"auroc": 0.81, "auprc": 0.42, "brier": 0.09, "calibration": {"slope": 0.97}},
        alias=alias,
    )
    session.add(row)
    session.flush()
    return row.id


@dataclass(frozen=True)
class Scored:
    encounter_id: int
    patient_public_id: str
    scores: list[float]


def record_risk_history(
    session: Session, *, version_id: int, now: datetime, hours: int = 24, step_hours: int = 4
) -> list[Scored]:
    """Store a deterministic score history for every open stay (oldest first).

    The score depends on the stay's id so that rows differ; a third of the stays rise,
    a third fall, a third stay level, which exercises every trend arrow.
    """
    encounters = session.scalars(
        select(Encounter).where(Encounter.discharged_at.is_(None)).order_by(Encounter.id)
    ).all()
    out = []
    for enc in encounters:
        base = 0.04 + 0.6 * ((enc.id * 37) % 100) / 100
        slope = (enc.id % 3 - 1) * 0.012  # -, 0 or + per hour
        newest = session.scalar(
            select(Observation.effective_at)
            .where(Observation.encounter_id == enc.id)
            .order_by(Observation.effective_at.desc())
            .limit(1)
        )
        scores = []
        for h in range(hours, -1, -step_hours):
            at = now - timedelta(hours=h)
            if at < enc.admitted_at:
                continue
            score = min(0.97, max(0.01, base + slope * (hours - h) - slope * hours / 2))
            scores.append(score)
            missing = ["lactate_last_all", "lactate_max_24h"] if enc.id % 4 == 0 else []
            session.add(
                Prediction(
                    public_id=new_public_id(),
                    patient_id=enc.patient_id,
                    encounter_id=enc.id,
                    model_version_id=version_id,
                    task="icu-mortality",
                    role="champion",
                    score=score,
                    band=band_of(score),
                    as_of=at,
                    data_freshness_at=min(newest, at) if newest else None,
                    features_digest="0" * 64,
                    explanation=[
                        {
                            "feature": "gcs_min_all",
                            "label": feature_label("gcs_min_all"),
                            "value": 9.0,
                            "contribution": round(0.8 * math.log1p(score * 4), 4),
                            "direction": "up",
                            "text": describe_feature("gcs_min_all", 9.0),
                        },
                        {
                            "feature": "age",
                            "label": "Age",
                            "value": enc.age_years,
                            "contribution": 0.31,
                            "direction": "up",
                        },
                        {
                            "feature": "map_mean",
                            "label": "Mean arterial pressure (mean)",
                            "value": 78.0,
                            "contribution": -0.22,
                            "direction": "down",
                        },
                    ],
                    missing_inputs=missing,
                )
            )
        public_id = session.scalar(select(Patient.public_id).where(Patient.id == enc.patient_id))
        assert public_id is not None
        out.append(Scored(enc.id, public_id, scores))
    session.flush()
    return out
