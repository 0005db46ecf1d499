"""``vitalcast monitor ...``: drift runs, the rule evaluation with alerting, alert handling."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from sqlalchemy.orm import Session

from vitalcast.db.session import create_db_engine, make_session_factory, session_scope
from vitalcast.modeling.cli import TASK

DEFAULT_TASK = "icu-mortality"
# Ten years: longer than any drift window worth comparing, and a bound keeps the window's
# start a date the store can hold (100000000 days ended in an OverflowError).
MAX_WINDOW_DAYS = 3650
# A century of stays to train on; with the longest holdout still a representable date.
MAX_TRAIN_DAYS = 36500


@contextmanager
def _unit_of_work(ctx: click.Context) -> Iterator[Session]:
    """One committed unit of work on an engine of its own, disposed afterwards (an
    undisposed engine would leave its pooled connections open until the process ends)."""
    from vitalcast.cli import get_settings

    engine = create_db_engine(get_settings(ctx).resolved_database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


@click.group("monitor")
def monitor() -> None:
    """Model monitoring: drift, outcome-joined performance, alerts (schedule `run`)."""


@monitor.command("drift")
@click.option("--task", type=TASK, default=DEFAULT_TASK, show_default=True)
@click.option(
    "--window-days",
    type=click.FloatRange(min=0.01, max=MAX_WINDOW_DAYS),
    default=7.0,
    show_default=True,
    help=f"Compare the stays scored in this many days before now (at most {MAX_WINDOW_DAYS}).",
)
@click.pass_context
def drift_command(ctx: click.Context, task: str, window_days: float) -> None:
    """Compare the champion's recent inputs and scores with its training reference."""
    from vitalcast.monitoring.service import run_drift

    with _unit_of_work(ctx) as session:
        run = run_drift(session, task=task, window_days=window_days, actor="cli")
        click.echo(
            f"drift run {run.id}: {run.n_recent} stays in the last {window_days:g} days,"
            f" {run.flagged} of {len(run.results)} inputs flagged (worst: {run.severity})"
        )
        for r in run.results:
            if r.severity != "none":
                reasons = "; ".join(r.details.get("reasons", []))
                click.echo(f"  {r.feature}: {r.severity} — {reasons}")


@monitor.command("run")
@click.option("--task", type=TASK, default=DEFAULT_TASK, show_default=True)
@click.option("--fail-on-alert", is_flag=True, help="Exit 1 when any rule is firing.")
@click.pass_context
def run_command(ctx: click.Context, task: str, fail_on_alert: bool) -> None:
    """Evaluate every monitoring rule for --task, update alerts and notify the webhook.

    A run resolves only the task's own alerts and the task-independent ones (data_stale,
    error_rate), so each task can be scheduled on its own. A task that has had a model
    but has no champion raises the critical no_champion alert.
    """
    from vitalcast.cli import get_settings
    from vitalcast.monitoring.alerts import webhook_notifier
    from vitalcast.monitoring.jobs import run_monitor

    settings = get_settings(ctx)
    with _unit_of_work(ctx) as session:
        report = run_monitor(
            session,
            settings=settings,
            task=task,
            notify=webhook_notifier(settings.alert_webhook_url),
        )
        for result in report.results:
            click.echo(f"{result.rule:<12} {result.status:<8} {result.note}")
        rec = report.reconciled
        click.echo(
            f"alerts: {len(rec.opened)} opened, {len(rec.escalated)} escalated,"
            f" {len(rec.repeated)} still firing, {len(rec.resolved)} resolved"
        )
        firing = report.run.firing
    if settings.audit_anchor_file is not None:
        _anchor_audit_chain(ctx, settings.audit_anchor_file)
    if fail_on_alert and firing:
        ctx.exit(1)


def _anchor_audit_chain(ctx: click.Context, path: Path) -> None:
    """Append an audit-chain anchor after the run's own events committed.

    Why here: ``monitor run`` is the job every deployment already schedules, so with
    ``VITALCAST_AUDIT_ANCHOR_FILE`` set, anchors (what makes deleting the newest audit
    events detectable) follow without another schedule. A broken chain ends the run with
    exit 1, after the monitoring work itself was stored.
    """
    from vitalcast.cli import get_settings
    from vitalcast.security.audit_anchor import anchor_now
    from vitalcast.security.audit_keys import keyring_from_settings

    keyring = keyring_from_settings(get_settings(ctx))
    with _unit_of_work(ctx) as session:
        outcome = anchor_now(session, keyring, path)
    if outcome.anchor is None:
        click.echo(f"audit anchor: {outcome.failure}; no anchor written", err=True)
        ctx.exit(1)
    else:
        click.echo(f"audit anchor: {outcome.anchor.to_json()}")


@monitor.command("alerts")
@click.option("--all", "include_resolved", is_flag=True, help="Include resolved alerts.")
@click.pass_context
def alerts_command(ctx: click.Context, include_resolved: bool) -> None:
    """List monitoring alerts (live ones unless --all)."""
    from vitalcast.monitoring.alerts import list_alerts

    with _unit_of_work(ctx) as session:
        rows = list_alerts(session, include_resolved=include_resolved)
        for a in rows:
            click.echo(
                f"{a.id:>5} {a.state:<12} {a.severity:<8} {a.rule:<12}"
                f" last {a.last_seen_at:%Y-%m-%d %H:%M} ×{a.occurrences}  {a.summary}"
            )
        if not rows:
            click.echo("no alerts")


@monitor.command("ack")
@click.argument("alert_id", type=int)
@click.option("--by", "actor", required=True, help="Who is handling the alert.")
@click.pass_context
def ack_command(ctx: click.Context, alert_id: int, actor: str) -> None:
    """Acknowledge an alert (audited); it resolves itself when its condition clears."""
    from vitalcast.monitoring.alerts import acknowledge_alert

    with _unit_of_work(ctx) as session:
        alert = acknowledge_alert(session, alert_id=alert_id, actor=actor)
        click.echo(f"alert {alert.id} acknowledged by {actor}")


@click.command("retrain")
@click.option("--task", type=TASK, default=DEFAULT_TASK, show_default=True)
@click.option(
    "--holdout-days",
    type=click.FloatRange(min=1, max=MAX_WINDOW_DAYS),
    default=90.0,
    show_default=True,
    help=f"The most recent period, held out to judge the challenger (at most {MAX_WINDOW_DAYS}).",
)
@click.option(
    "--train-days",
    type=click.FloatRange(min=1, max=MAX_TRAIN_DAYS),
    default=None,
    help="Train only on stays admitted in this many days before the holdout (default: all);"
    " after a lasting change in the data, the period since the change"
    f" (at most {MAX_TRAIN_DAYS}).",
)
@click.option(
    "--auto-promote",
    is_flag=True,
    help="Promote the challenger if (and only if) the gate passes against the current champion"
    " (a task without one needs a person: `vitalcast models promote`).",
)
@click.pass_context
def retrain_command(
    ctx: click.Context,
    task: str,
    holdout_days: float,
    train_days: float | None,
    auto_promote: bool,
) -> None:
    """Train a challenger on the store with a temporal holdout and apply the promotion gate.

    The new model is registered as challenger, never as champion, even for a task without
    one: with --auto-promote it becomes champion only if the gate passes against the
    current champion (a task with none needs a person: `vitalcast models promote VERSION`).
    Exit code 1 when --auto-promote was asked for and the challenger was not promoted.
    """
    from vitalcast.cli import get_settings
    from vitalcast.modeling.cli import rescore_stays
    from vitalcast.monitoring.retrain import retrain
    from vitalcast.security import audit

    settings = get_settings(ctx)
    with _unit_of_work(ctx) as session:
        report = retrain(
            session,
            settings=settings,
            task=task,
            holdout_days=holdout_days,
            train_days=train_days,
            auto_promote=auto_promote,
        )
        click.echo(
            f"{report.version}: trained on {report.train_stays} stays, judged on"
            f" {report.holdout_stays} held-out stays of the last {holdout_days:g} days"
        )
        for c in report.gate.criteria:
            click.echo(f"  {'pass' if c.passed else 'FAIL'}  {c.detail}")
        verdict = "passes" if report.gate.passed else "fails"
        click.echo(f"gate {verdict}; alias now: {report.alias or 'none'}")
        if report.champion_before is None and not auto_promote:
            click.echo(
                f"{task} has no champion: nothing scores its patients until a person reviews"
                f" this report and promotes one (`vitalcast models promote {report.version}`)"
            )
    if report.promoted:
        rescore_stays(ctx, task, audit.CLI)
    if report.not_promoted is not None:
        click.echo(f"not promoted: {report.not_promoted}", err=True)
        ctx.exit(1)
