"""The ward page's read model: each in-progress stay with its risk trend, data age and gaps.

Built on :func:`vitalcast.serving.patients.list_ward` (the same ordering the API serves)
plus two set-based queries for the whole page — 24 h risk history and the newest vital
sign per stay — so the page costs a fixed number of queries whatever the ward size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Integer, cast, extract, func, select
from sqlalchemy.orm import Session

from vitalcast.clinical.codes import BY_KEY, VARIABLES
from vitalcast.clinical.tables import Encounter, Observation
from vitalcast.modeling.tables import Prediction
from vitalcast.modeling.tasks import STAY_POPULATION, STAY_TASK, Population, early_in_stay
from vitalcast.security.crypto import FieldCipher
from vitalcast.serving.patients import WardRow, list_ward

SPARK_WINDOW = timedelta(hours=24)
# A change of at least 5 percentage points over the sparkline window counts as a trend;
# smaller moves are within the noise of hourly rescoring and are shown as "steady".
TREND_MIN_CHANGE = 0.05

VITAL_CODES = tuple(v.code for v in VARIABLES if v.kind == "vital")

# Inputs whose absence a clinician should know about before trusting a score: the
# physiology of the early-warning scores (NEWS2, SAPS) plus the labs that drive ICU
# mortality models. A group is missing only when every variable in it is missing (a
# cuff or an arterial-line pressure both count as "blood pressure").
KEY_INPUTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Heart rate", ("hr",)),
    ("Blood pressure", ("sbp", "map", "art_sbp", "art_map")),
    ("Respiratory rate", ("resp_rate",)),
    ("Temperature", ("temp",)),
    ("GCS", ("gcs",)),
    (BY_KEY["creatinine"].label, ("creatinine",)),
    (BY_KEY["lactate"].label, ("lactate",)),
    (BY_KEY["wbc"].label, ("wbc",)),
)


@dataclass(frozen=True)
class WardEntry:
    """A ward row plus what the page shows about it beyond the current score."""

    row: WardRow
    spark: list[tuple[int, float]] = field(default_factory=list)  # (epoch seconds, score)
    trend: str = "none"  # "up", "down", "steady" or "none" (fewer than two scores)
    change: float | None = None  # latest minus first score of the window
    newest_vital_at: datetime | None = None
    stale: bool = True
    missing_key: list[str] = field(default_factory=list)
    spark_attr: str = ""  # "epoch:score,..." for the browser to draw
    early: dict[str, float] | None = None  # see early_in_stay

    @property
    def name(self) -> str | None:
        ids = self.row.identifiers or {}
        return ids.get("name")


@dataclass(frozen=True)
class WardPage:
    entries: list[WardEntry]
    total: int
    high_risk: int
    stale_count: int


# Statistics that have a value (0) when a variable was never measured, so they are never
# imputed and say nothing about whether the variable is missing.
_TALLIES = ("count_", "sum_")


def _tally(feature: str, keys: Sequence[str]) -> bool:
    key = _variable_of(feature, keys)
    return key is not None and feature[len(key) + 1 :].startswith(_TALLIES)


def _variable_of(feature: str, keys: Sequence[str]) -> str | None:
    for key in keys:
        if feature == key or feature.startswith(key + "_"):
            return key
    return None


def missing_key_inputs(missing: Sequence[str], feature_names: Sequence[str] | None) -> list[str]:
    """Labels of the key input groups with no usable value in a score's inputs.

    ``missing`` lists the model features that were missing (imputed). With the model's
    ``feature_names`` a variable counts as missing only when all its value features are (a
    stay with one heart rate lacks a heart-rate trend, not a heart rate); its counts and
    sums are 0, never missing, so they do not count. Without them, any missing feature of
    the variable counts.
    """
    missing_set = set(missing)
    result = []
    for label, keys in KEY_INPUTS:
        if feature_names is not None:
            feats = [f for f in feature_names if _variable_of(f, keys) and not _tally(f, keys)]
            if feats and all(f in missing_set for f in feats):
                result.append(label)
        elif all(any(_variable_of(m, (key,)) for m in missing_set) for key in keys):
            result.append(label)
    return result


def trend_of(points: Sequence[tuple[object, float]]) -> tuple[str, float | None]:
    """Direction and size of the change over the window (see TREND_MIN_CHANGE)."""
    if len(points) < 2:
        return "none", None
    # Rounded so that a change displayed as "+5 pts" is a trend (0.15 - 0.10 < 0.05 in floats).
    change = round(points[-1][1] - points[0][1], 9)
    if change >= TREND_MIN_CHANGE:
        return "up", change
    if change <= -TREND_MIN_CHANGE:
        return "down", change
    return "steady", change


def _histories(
    session: Session, encounter_public_ids: Sequence[str], since: datetime
) -> dict[str, list[tuple[int, float]]]:
    """Each listed stay's hourly champion risk since ``since`` as (epoch seconds, score),
    oldest first, in one query.

    A stay is rescored on every new observation, which with bedside monitors streaming
    is every minute or so; a sparkline needs one point per hour. So the database keeps the
    newest score of each stay-hour and returns at most ~25 rows per stay, whatever the
    rescoring rate. Times come back as whole epoch seconds (what the page's sparkline
    draws) instead of timestamps to be made timezone-aware row by row.
    """
    if not encounter_public_ids:
        return {}
    epoch = cast(extract("epoch", Prediction.as_of), Integer)
    hourly = (
        select(func.max(Prediction.id).label("id"))
        .join(Encounter, Prediction.encounter_id == Encounter.id)
        .where(
            Encounter.public_id.in_(encounter_public_ids),
            Prediction.role == "champion",
            Prediction.task == STAY_TASK,
            Prediction.as_of >= since,
        )
        # Integer division on both PostgreSQL and SQLite: the hour since the epoch.
        .group_by(Prediction.encounter_id, epoch // 3600)
        .subquery()
    )
    rows = session.execute(
        select(Encounter.public_id, epoch, Prediction.score)
        .join(hourly, hourly.c.id == Prediction.id)
        .join(Encounter, Prediction.encounter_id == Encounter.id)
        .order_by(Prediction.encounter_id, Prediction.as_of, Prediction.id)
    ).all()
    result: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for enc, at, score in rows:
        result[enc].append((at, score))
    return result


def _newest_vitals(session: Session, encounter_public_ids: Sequence[str]) -> dict[str, datetime]:
    if not encounter_public_ids:
        return {}
    # One backward index scan per stay on (encounter_id, effective_at) that stops at the
    # first vital sign, instead of aggregating every observation of the ward.
    newest = (
        select(Observation.effective_at)
        .where(Observation.encounter_id == Encounter.id, Observation.code.in_(VITAL_CODES))
        .order_by(Observation.effective_at.desc())
        .limit(1)
        .correlate(Encounter)
        .scalar_subquery()
    )
    rows = session.execute(
        select(Encounter.public_id, newest).where(Encounter.public_id.in_(encounter_public_ids))
    ).all()
    return {enc: at for enc, at in rows if at is not None}


def newest_vital_at(session: Session, encounter_public_id: str) -> datetime | None:
    """When the stay's newest vital sign was taken (the ward's and the patient page's
    rule for stale data: labs are hours apart by design, vital signs are not)."""
    return _newest_vitals(session, [encounter_public_id]).get(encounter_public_id)


def build_ward(
    session: Session,
    *,
    now: datetime,
    stale_after: timedelta,
    unit: str | None = None,
    limit: int = 500,
    cipher: FieldCipher | None = None,
    mrn_hmac: str | None = None,
    patient_public_id: str | None = None,
    name_query: str | None = None,
    feature_names: Sequence[str] | None = None,
    units: Collection[str] = (),
    population: Population | None = STAY_POPULATION,
) -> WardPage:
    """The ward page: rows sorted by risk, each with its 24 h history, trend and data age.

    ``name_query`` filters by a case-insensitive substring of the decrypted name, and can
    only do so within the ``limit`` stays fetched: names are encrypted at rest, so there
    is no index to search them across the whole store (MRNs have the keyed hash instead).
    ``units`` are the caller's units, ``population`` whom the stay model scores (see
    :func:`list_ward`).
    """
    rows, total = list_ward(
        session,
        unit=unit,
        limit=limit,
        cipher=cipher,
        mrn_hmac=mrn_hmac,
        patient_public_id=patient_public_id,
        units=units,
        population=population,
    )
    if name_query and cipher is not None:
        needle = name_query.casefold().strip()
        rows = [r for r in rows if needle in (r.identifiers or {}).get("name", "").casefold()]
        total = len(rows)
    ids = [r.encounter_id for r in rows]
    # Stays outside the stay model's population show no risk, so no history either.
    scored_ids = [r.encounter_id for r in rows if r.outside_population is None]
    histories = _histories(session, scored_ids, now - SPARK_WINDOW)
    vitals = _newest_vitals(session, ids)
    entries = []
    for r in rows:
        points = histories.get(r.encounter_id, [])
        trend, change = trend_of(points)
        newest = vitals.get(r.encounter_id)
        entries.append(
            WardEntry(
                row=r,
                spark=points,
                trend=trend,
                change=change,
                newest_vital_at=newest,
                # Staleness qualifies a risk: a stay outside the model's population has
                # none, so it neither shows the badge nor counts among the stale.
                stale=r.outside_population is None
                and (newest is None or now - newest > stale_after),
                spark_attr=",".join([f"{at}:{s:.4f}" for at, s in points]),
                missing_key=missing_key_inputs(r.missing_inputs, feature_names)
                if r.score is not None
                else [],
                early=early_in_stay(r.task, r.admitted_at, r.scored_at),
            )
        )
    return WardPage(
        entries=entries,
        total=total,
        high_risk=sum(1 for e in entries if e.row.band in ("high", "critical")),
        stale_count=sum(1 for e in entries if e.stale),
    )
