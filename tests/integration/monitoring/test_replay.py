"""Issue 8's end-to-end replay: a synthetic stream with a drift, from alert to promotion,
and a worse challenger refused.

Everything runs through the product's own code on real PostgreSQL: cohorts stored by the
ingestion service, patients scored by serving's rescoring path (champion, and challenger
in shadow), ``run_monitor`` and ``retrain`` as ``vitalcast monitor run`` and ``vitalcast
retrain`` call them, alerts POSTed to a real HTTP server, and the last two steps through
the installed ``vitalcast`` command itself. The clock is replayed: each step runs "as of"
its time in the stream, and the final window ends at the real present, so the final
``vitalcast monitor run`` (which reads the wall clock) judges it.

The drift: from day D the laboratory reports lactate in mg/dL (values x 9.01) under the
same code, and the high values that now exceed the plausible mmol/L range are
quarantined. The change is lasting (the analyser stays), so per docs/maintenance-plan.md
the model is retrained on the period since the change and promoted only through the gate
(its default criteria less the two calibration ones, see POLICY), after a person's
review (``vitalcast models promote``). A second retraining whose recipe is a single
decision stump is then refused by the gate for its discrimination, and the champion stays.

Sized to run in about three minutes (docs/maintenance-plan.md, "End-to-end replay"): a
sicker synthetic cohort gives the gate's holdout enough events from a few hundred stays,
the history is only as long as training and holdout need, and the windows hold 150 stays.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from tests.integration.monitoring.conftest import Receiver
from tests.services import TEST_AUDIT_KEY
from vitalcast.clinical.codes import BY_KEY
from vitalcast.clinical.records import RecordBatch
from vitalcast.clinical.tables import Encounter
from vitalcast.config import Settings
from vitalcast.db import session_scope
from vitalcast.db.session import make_session_factory
from vitalcast.modeling.service import get_champion, promote
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.modeling.train import SEARCH_BUDGET, CandidateSpec
from vitalcast.monitoring.alerts import webhook_notifier
from vitalcast.monitoring.gate import Criterion, GatePolicy
from vitalcast.monitoring.jobs import MonitorReport, run_monitor
from vitalcast.monitoring.retrain import retrain
from vitalcast.monitoring.tables import DriftRun, MonitorAlert
from vitalcast.security import audit
from vitalcast.security.audit import verify_chain
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.models import refresh_models
from vitalcast.serving.rescoring import rescore_encounters
from vitalcast.serving.state import AppState
from vitalcast.synth import generate_cohort, store_cohort

VITALCAST = str(Path(sys.executable).with_name("vitalcast"))
TASK = "icu-mortality"
LACTATE = BY_KEY["lactate"].code
MG_PER_DL = 9.01  # mg/dL per mmol/L of lactate
LANDMARKS_H = (6.0, 12.0, 24.0, 48.0)
# Stays per monitoring window: the measured false-alarm rate per feature is 0-3 % at 100
# stays and ~0 % from 300 (docs/maintenance-plan.md); the model has about 500 inputs, and at
# 100 stays the final window had 11 chance flags (correlated respiratory-rate inputs).
WINDOW_STAYS = 150
# The first candidate of the production search budget (a regularised logistic regression)
# alone, three folds, no bootstrap: the cheapest recipe that the gate judges as it would
# the production one.
RECIPE = {"budget": SEARCH_BUDGET[:1], "n_splits": 3, "n_boot": 0}
# A sicker cohort than PhysioNet's 14 %: the gate needs >= 50 deaths among the holdout's
# stays, and every stay stored costs time (about 600 observations each).
DEATH_RATE = 0.3
HISTORY_STAYS = 400  # before the change: the first champion's data
POST_DRIFT_STAYS = 1400  # discharged over the 150 days before the retraining
HOLDOUT_DAYS = 50.0
TRAIN_DAYS = 130.0
# The change-control plan's acceptance criteria (monitoring/gate.py defaults) without the
# two calibration criteria, which a holdout of this size cannot judge: the same recipe on
# three other seeds of this cohort (~600 holdout stays, ~180 events each) gave holdout
# calibration slopes of 1.33, 0.85 and 0.80 and intercepts of +0.05, +0.19 and -0.17
# against bands of 0.9-1.1 and +-0.2, so a good challenger passes or fails them by the draw
# (docs/maintenance-plan.md, "Note on power" and "End-to-end replay"). They are tested on
# 20,000-stay holdouts in tests/unit/monitoring/test_gate.py. The holdout size, AUROC and
# subgroup criteria keep their defaults; the worse challenger below must fail AUROC.
POLICY = replace(GatePolicy(), slope_range=(-math.inf, math.inf), max_abs_intercept=math.inf)
# A recipe that cannot be as good as the champion: a single split on a single input.
STUMP = (CandidateSpec("stump", "hgb", {"max_iter": 1, "max_depth": 1}),)

pytestmark = pytest.mark.slow


class Stream:
    """The replayed deployment: a store, the serving state, and the next free record id."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.sessions: sessionmaker[Session] = make_session_factory(engine)
        self.cipher = cipher_from_settings(settings)
        self.state = AppState(
            settings=settings, engine=engine, sessions=self.sessions, cipher=self.cipher
        )
        self.next_record = 200_001

    def store(
        self,
        *,
        now: datetime,
        current: int = 0,
        historic: int = 0,
        history_days: float = 730.0,
        drift_from: datetime | None = None,
        seed: int,
    ) -> RecordBatch:
        batch = generate_cohort(
            n_current=current,
            n_historic=historic,
            seed=seed,
            now=now,
            first_record_id=self.next_record,
            history_days=history_days,
            death_rate=DEATH_RATE,
        )
        self.next_record += current + historic
        if drift_from is not None:
            batch.observations = [
                replace(o, value=round(o.value * MG_PER_DL, 1))
                if o.code == LACTATE and o.value is not None and o.effective_at >= drift_from
                else o
                for o in batch.observations
            ]
        with self.sessions() as session:
            store_cohort(session=session, batch=batch, cipher=self.cipher, now=now)
        return batch

    def score_open_stays(self, *, admitted_after: datetime, now: datetime) -> int:
        """Rescore each open stay admitted since ``admitted_after`` at each landmark it
        reached by ``now`` (champion; challenger in shadow), as serving would have among
        its rescorings on new data (the rest change nothing that monitoring reads)."""
        refresh_models(self.state, TASK)
        with self.sessions() as session:
            stays = session.execute(
                select(Encounter.id, Encounter.admitted_at).where(
                    Encounter.discharged_at.is_(None), Encounter.admitted_at >= admitted_after
                )
            ).all()
        with session_scope(self.sessions) as session:
            for enc_id, admitted_at in stays:
                times = [admitted_at + timedelta(hours=h) for h in LANDMARKS_H]
                for at in (t for t in times if t <= now):
                    rescore_encounters(session, self.state, [enc_id], as_of=at)
        return len(stays)

    def monitor(self, receiver: Receiver, now: datetime) -> MonitorReport:
        with session_scope(self.sessions) as session:
            return run_monitor(
                session,
                settings=self.settings,
                task=TASK,
                notify=webhook_notifier(receiver.url),
                now=now,
            )


@contextmanager
def _stage(name: str) -> Iterator[None]:
    """Print how long a step took (shown with ``pytest -s``): the test must stay fast."""
    started = time.perf_counter()
    yield
    print(f"replay: {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)


def _show_gate(name: str, criteria: list[Criterion]) -> None:
    """Print the gate's verdict on each criterion (shown with ``pytest -s``)."""
    for c in criteria:
        print(f"replay: {name}: {'pass' if c.passed else 'FAIL'} {c.detail}", file=sys.stderr)


def _cli(args: list[str], settings: Settings, receiver: Receiver) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAST_")}
    env |= {
        "VITALCAST_ENV": "test",
        "VITALCAST_DATA_DIR": str(settings.data_dir),
        "VITALCAST_DATABASE_URL": settings.resolved_database_url,
        "VITALCAST_ALERT_WEBHOOK_URL": receiver.url,
        "VITALCAST_AUDIT_KEY": TEST_AUDIT_KEY,  # the chain verified below is one key's
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [VITALCAST, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _drift_keys(report: MonitorReport) -> set[str]:
    return {f.dedup_key for r in report.results if r.rule == "drift" for f in r.findings}


def _lactate(keys: set[str]) -> set[str]:
    return {k for k in keys if k.startswith(f"drift:{TASK}:lactate_")}


def _chance_flags_allowed(report: MonitorReport) -> int:
    """Inputs that may be flagged by chance on an unchanged window: the documented bound
    of 2 % per input (two tests at alpha 0.01), at least one."""
    assert report.drift_run is not None
    return max(1, round(0.02 * len(report.drift_run.results)))


@pytest.fixture
def stream(settings: Settings, pg_engine: Engine) -> Stream:
    return Stream(settings, pg_engine)


def test_drift_alert_retrain_gate_promotion_clearance_and_refusal(
    stream: Stream, webhook: Receiver, settings: Settings
) -> None:
    present = datetime.now(UTC).replace(second=0, microsecond=0)
    day = timedelta(days=1)
    drift_day = present - 210 * day

    # --- before the stream: months of history, and the first champion
    history_end = present - 220 * day
    with _stage("history stored"):
        stream.store(now=history_end, historic=HISTORY_STAYS, history_days=150, seed=1)
    with _stage("first champion trained"), session_scope(stream.sessions) as session:
        first = retrain(
            session,
            settings=settings,
            task=TASK,
            holdout_days=30,
            now=history_end + day,
            **RECIPE,  # type: ignore[arg-type]
        )
        # Retraining never installs a champion: a person promotes the task's first model.
        assert first.alias == "challenger"
        promote(session, version=first.version, agent=audit.Agent("user:reviewer"))

    # --- a baseline week, scored by the champion: lactate unflagged, at most chance flags
    t0 = present - 215 * day
    with _stage("baseline week stored"):
        stream.store(now=t0, current=WINDOW_STAYS, seed=2)
    with _stage("baseline week scored"):
        assert stream.score_open_stays(admitted_after=t0 - 5 * day, now=t0) == WINDOW_STAYS
    with _stage("baseline week monitored"):
        baseline = stream.monitor(webhook, t0)
    assert baseline.drift_run is not None
    assert baseline.drift_run.n_recent >= 0.8 * WINDOW_STAYS
    chance = _drift_keys(baseline)
    assert not _lactate(chance), chance
    assert len(chance) <= _chance_flags_allowed(baseline), chance
    assert sorted(m["alert"]["dedup_key"] for m in webhook.received) == sorted(chance)

    # --- lactate in mg/dL from the drift day: the next run raises the alert, once
    t1 = present - 205 * day
    with _stage("week after the change"):
        stream.store(now=t1, current=WINDOW_STAYS, drift_from=drift_day, seed=3)
        stream.score_open_stays(admitted_after=t1 - 5 * day, now=t1)
        sent_before = len(webhook.received)
        alarm = stream.monitor(webhook, t1)
    keys = _lactate(_drift_keys(alarm))
    assert keys, _drift_keys(alarm)
    assert keys <= {a.dedup_key for a in alarm.reconciled.opened}
    opened = [
        m["alert"]["dedup_key"] for m in webhook.received[sent_before:] if m["event"] == "opened"
    ]
    assert sorted(opened) == sorted(a.dedup_key for a in alarm.reconciled.opened)
    again = stream.monitor(webhook, t1 + timedelta(hours=1))
    assert not keys & {a.dedup_key for a in again.reconciled.opened}  # deduplicated
    lactate_sent = [m for m in webhook.received if m["alert"]["dedup_key"] in keys]
    assert [m["event"] for m in lactate_sent] == ["opened"] * len(keys)
    with stream.sessions() as session:
        live = session.scalars(select(MonitorAlert).where(MonitorAlert.dedup_key.in_(keys))).all()
        assert {a.state for a in live} == {"open"}
        assert {(a.occurrences, a.delivery) for a in live} == {(2, "sent")}

    # --- months of care with the new analyser; a governed retrain on the period since
    with _stage("months after the change stored"):
        stream.store(
            now=present - 10 * day,
            historic=POST_DRIFT_STAYS,
            history_days=150,
            drift_from=drift_day,
            seed=4,
        )
    retrain_at = present - 9 * day
    with _stage("challenger trained and gated"), session_scope(stream.sessions) as session:
        report = retrain(
            session,
            settings=settings,
            task=TASK,
            holdout_days=HOLDOUT_DAYS,
            train_days=TRAIN_DAYS,
            now=retrain_at,
            policy=POLICY,
            **RECIPE,  # type: ignore[arg-type]
        )
    _show_gate("challenger", report.gate.criteria)
    assert report.gate.passed, "; ".join(report.gate.reasons)
    assert {c.name for c in report.gate.criteria} >= {
        "holdout_size",
        "auroc",
        "calibration_slope",
        "calibration_in_the_large",
    }
    assert report.alias == "challenger"  # in shadow until a person promotes it
    assert report.champion_before == first.version

    # --- the present week: the challenger is scored in shadow beside the champion
    with _stage("present week"):
        stream.store(now=present, current=WINDOW_STAYS, drift_from=drift_day, seed=5)
        stream.score_open_stays(admitted_after=present - 5 * day, now=present)
    with stream.sessions() as session:
        champion = get_champion(session, TASK)
        assert champion is not None
        assert champion.version == first.version
        shadow = session.scalars(
            select(Prediction.role)
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(ModelVersion.version == report.version)
        ).all()
        assert shadow
        assert set(shadow) == {"challenger"}

    # --- promotion after review, then the next run in real time clears the lactate alerts
    # The window after promotion holds the new champion's scores of this week (made in
    # shadow, by the same model on the same data), judged against its own reference.
    with _stage("promotion and monitor run (CLI)"):
        _cli(["models", "promote", report.version], settings, webhook)
        out = _cli(["monitor", "run", "--task", TASK], settings, webhook)
    assert "drift " in out, out
    resolved = [m["alert"]["dedup_key"] for m in webhook.received if m["event"] == "resolved"]
    assert keys <= set(resolved)
    with stream.sessions() as session:
        alerts = session.scalars(select(MonitorAlert).where(MonitorAlert.dedup_key.in_(keys)))
        assert {a.state for a in alerts} == {"resolved"}
        live_keys = session.scalars(
            select(MonitorAlert.dedup_key).where(
                MonitorAlert.state != "resolved", MonitorAlert.rule == "drift"
            )
        ).all()
        # What may remain are chance flags of the new window, within the documented rate.
        assert not _lactate(set(live_keys)), live_keys
        final = session.scalars(select(DriftRun).order_by(DriftRun.id.desc())).first()
        assert final is not None
        assert len(live_keys) <= max(1, round(0.02 * len(final.results))), live_keys

    # --- a worse challenger: the same governed retraining with a one-split tree as its
    # recipe. The gate refuses it for its discrimination, even when asked to auto-promote.
    with _stage("worse challenger refused"), session_scope(stream.sessions) as session:
        worse = retrain(
            session,
            settings=settings,
            task=TASK,
            holdout_days=HOLDOUT_DAYS,
            train_days=TRAIN_DAYS,
            auto_promote=True,
            now=retrain_at,
            policy=POLICY,
            budget=STUMP,
            n_splits=5,
            n_boot=0,
        )
    _show_gate("worse challenger", worse.gate.criteria)
    assert not worse.gate.passed
    assert not worse.promoted
    assert worse.alias == "challenger"
    assert worse.champion_before == report.version
    failed = {c.name for c in worse.gate.criteria if not c.passed}
    assert "auroc" in failed, worse.gate.reasons
    drop = worse.gate.champion["auroc"] - worse.gate.challenger["auroc"]
    assert drop > POLICY.max_auroc_drop, worse.gate.to_dict()

    with stream.sessions() as session:
        champion = get_champion(session, TASK)
        assert champion is not None
        assert champion.version == report.version
        audited = list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
        events = [e.event for e in audited]
        opened_ids = session.scalars(select(MonitorAlert.id)).all()
        assert events.count("monitoring.alert.opened") == len(opened_ids)
        assert events.count("monitoring.alert.resolved") >= len(keys)
        model_events = [
            (e.event, e.resource, (e.details or {}).get("alias"))
            for e in audited
            if e.event in ("model.retrained", "model.promoted")
        ]
        assert model_events == [
            ("model.promoted", f"model/{first.version}", "challenger"),
            ("model.retrained", f"model/{first.version}", None),
            ("model.promoted", f"model/{first.version}", "champion"),  # by a person
            ("model.promoted", f"model/{report.version}", "challenger"),
            ("model.retrained", f"model/{report.version}", None),
            ("model.promoted", f"model/{report.version}", "champion"),  # by a person
            ("model.promoted", f"model/{worse.version}", "challenger"),
            ("model.retrained", f"model/{worse.version}", None),
        ]
        assert verify_chain(session).ok
