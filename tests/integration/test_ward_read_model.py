"""The ward's read model on PostgreSQL: the current score, and one sparkline point per hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.web.ward import build_ward

NOW = datetime(2026, 6, 1, 12, 30, tzinfo=UTC)


def _stay(session: Session, ref: str, admitted_hours_ago: float) -> Encounter:
    patient = Patient(source="test", source_ref=ref, sex="female")
    session.add(patient)
    session.flush()
    encounter = Encounter(
        patient_id=patient.id,
        source="test",
        source_ref=ref,
        unit="MICU",
        admitted_at=NOW - timedelta(hours=admitted_hours_ago),
    )
    session.add(encounter)
    session.flush()
    return encounter


def test_sparkline_keeps_the_newest_score_of_each_hour_and_the_row_the_newest_score(
    db_session: Session,
) -> None:
    model = ModelVersion(
        version="ward-test",
        task="icu-mortality",
        artifact_path="-",
        sha256="0" * 64,
        threshold=0.3,
        metrics={},
        alias="champion",
    )
    db_session.add(model)
    db_session.flush()
    streamed = _stay(db_session, "streamed", 30)
    quiet = _stay(db_session, "quiet", 30)
    n = 0

    def score(enc: Encounter, at: datetime, value: float, role: str = "champion") -> None:
        nonlocal n
        n += 1
        db_session.add(
            Prediction(
                public_id=f"p{n}",
                patient_id=enc.patient_id,
                encounter_id=enc.id,
                model_version_id=model.id,
                task="icu-mortality",
                role=role,
                score=value,
                band="high" if value >= 0.3 else "low",
                as_of=at,
                features_digest="0" * 64,
                created_at=at,
            )
        )

    # A stay rescored every minute for the last three hours (a streaming monitor): 180
    # scores, rising by 0.001 a minute; the sparkline wants the last one of each hour.
    start = NOW - timedelta(hours=3)
    for minute in range(180):
        score(streamed, start + timedelta(minutes=minute), 0.2 + minute / 1000)
        score(streamed, start + timedelta(minutes=minute), 0.9, role="challenger")
    score(streamed, start - timedelta(hours=30), 0.5)  # outside the 24 h window
    for hour in range(3):
        score(quiet, NOW - timedelta(hours=3 - hour), 0.1)
    db_session.flush()

    page = build_ward(db_session, now=NOW, stale_after=timedelta(hours=4))
    by_stay = {e.row.encounter_id: e for e in page.entries}
    spark = by_stay[streamed.public_id].spark
    # Minutes 0-29 fall in the hour of 09:00, 30-89 in 10:00, 90-149 in 11:00, 150-179 in 12:00.
    assert [round(s, 3) for _, s in spark] == [0.229, 0.289, 0.349, 0.379]
    assert [at for at, _ in spark] == sorted(at for at, _ in spark)
    assert spark[-1][0] == int((start + timedelta(minutes=179)).timestamp())
    assert by_stay[streamed.public_id].trend == "up"
    assert by_stay[streamed.public_id].row.score == 0.2 + 179 / 1000  # newest champion score
    assert [e.row.encounter_id for e in page.entries] == [streamed.public_id, quiet.public_id]
    assert len(by_stay[quiet.public_id].spark) == 3
    assert by_stay[quiet.public_id].trend == "steady"
