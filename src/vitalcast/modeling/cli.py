"""``vitalcast train | evaluate | recalibrate | models | report``: thin commands over modeling
services."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session

from vitalcast.modeling.tasks import TABULAR, TASKS, TaskError, get_task


def _settings(ctx: click.Context) -> Any:
    from vitalcast.cli import get_settings

    return get_settings(ctx)


@contextmanager
def _session(ctx: click.Context) -> Iterator[Session]:
    """One unit of work on the configured database."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import OperationalError

    from vitalcast.db import create_db_engine
    from vitalcast.db.session import make_session_factory, session_scope
    from vitalcast.errors import VitalcastError

    engine = create_db_engine(_settings(ctx).resolved_database_url)
    try:
        try:
            ready = inspect(engine).has_table("model_versions")
        except OperationalError as exc:
            raise VitalcastError(f"cannot reach the database ({exc.orig})") from None
        if not ready:
            # A fresh database: say what to run instead of failing on a missing table.
            raise VitalcastError("the database has no schema yet; run `vitalcast db upgrade`")
        with session_scope(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


@contextmanager
def _audited_failure(
    ctx: click.Context, event: str, resource: str, details: dict[str, Any]
) -> Iterator[None]:
    """Audit a refused model change: its own transaction rolled back with the change."""
    from vitalcast.errors import VitalcastError
    from vitalcast.security import audit

    try:
        yield
    except VitalcastError as exc:
        try:
            with _session(ctx) as session:
                audit.record(
                    session,
                    audit.CLI.event(
                        event,
                        "U",
                        outcome="failure",
                        resource=resource,
                        details=details | {"error": str(exc)[:300]},
                    ),
                )
        except VitalcastError:
            pass  # no database to audit into: that is the error the user sees
        raise exc from None


def _registry(ctx: click.Context, registry: Path | None) -> Path:
    return registry or Path(_settings(ctx).resolved_registry_dir)


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(_clean(obj), sort_keys=False, default=str))


_HEADLINE = (
    "n",
    "prevalence",
    "auroc",
    "auprc",
    "brier",
    "calibration_slope",
    "calibration_intercept",
    "ece",
    "hl_h",
    "hl_h_p",
    "event1",
    "threshold",
)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _print_summary(title: str, metrics: dict[str, Any]) -> None:
    """The headline metrics, one a line. A metric the rows cannot give (H of fewer than
    ten rows, a slope of one class) reads "not computable", never ``nan`` or ``inf``,
    and an interval is shown only when both its ends are numbers (``--json`` says null)."""
    click.echo(title)
    for key in _HEADLINE:
        if key in metrics:
            ci = metrics.get(f"{key}_ci")
            ci_text = f"  [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and all(_finite(c) for c in ci) else ""
            value = metrics[key]
            if isinstance(value, float) and not math.isfinite(value):
                shown = "not computable"
            else:
                shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            click.echo(f"  {key:<22} {shown}{ci_text}")


def _print_registered(out: Any, as_json: bool) -> None:
    """What ``train`` and ``recalibrate`` print: the new version, its alias and metrics."""
    if as_json:
        _print_json(
            {
                "version": out.version,
                "task": out.task,
                "alias": out.alias,
                "threshold": out.threshold,
                "metrics": out.metrics,
            }
        )
        return
    _print_summary(f"registered {out.version} ({out.alias or 'no alias'})", out.metrics)


class TaskName(click.ParamType[str]):
    """A task: a built-in one, or ``tabular:NAME``, the task of a task file named NAME.

    Why not ``click.Choice``: named tabular tasks are the data team's own, so the list
    of tasks is open; the message still lists the built-in ones."""

    name = "task"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"[{'|'.join(TASKS)}|{TABULAR}:NAME]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return get_task(str(value)).name
        except TaskError as exc:
            self.fail(str(exc), param, ctx)


TASK = TaskName()

task_option = click.option("--task", "task_name", type=TASK, help="Prediction task.")
data_option = click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True),
    help="Data file or folder (PhysioNet set, CSV); default: the store.",
)
outcomes_option = click.option(
    "--outcomes",
    type=click.Path(path_type=Path, exists=True),
    help="PhysioNet Outcomes file (icu-mortality from files).",
)
task_file_option = click.option(
    "--task-file",
    type=click.Path(path_type=Path, exists=True),
    help="YAML task file (task tabular; a `name: NAME` in it makes the task tabular:NAME).",
)
registry_option = click.option(
    "--registry",
    type=click.Path(path_type=Path),
    help="Registry directory (default VITALCAST_REGISTRY_DIR).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
model_option = click.option(
    "--model",
    "model_ref",
    required=True,
    help="Version name, `champion` or `challenger` (with --task).",
)


@click.command()
@click.option("--task", "task_name", type=TASK, required=True, help="Prediction task.")
@data_option
@outcomes_option
@task_file_option
@registry_option
@click.option("--seed", type=int, default=None, help="Random seed (default: fixed).")
@click.option(
    "--budget",
    type=click.Choice(["full", "fast"]),
    default="full",
    help="Search budget: full (the task's documented default) or fast (demo, tests).",
)
@json_option
@click.pass_context
def train(
    ctx: click.Context,
    task_name: str,
    data: Path | None,
    outcomes: Path | None,
    task_file: Path | None,
    registry: Path | None,
    seed: int | None,
    budget: str,
    as_json: bool,
) -> None:
    """Train, validate, calibrate and register a model for a task."""
    from vitalcast.modeling.service import train_and_register
    from vitalcast.modeling.train import DEFAULT_SEED, FAST_BUDGET
    from vitalcast.security import audit

    with _session(ctx) as session:
        out = train_and_register(
            task_name,
            session=session,
            registry_dir=_registry(ctx, registry),
            data=data,
            outcomes=outcomes,
            task_file=task_file,
            seed=DEFAULT_SEED if seed is None else seed,
            budget=FAST_BUDGET if budget == "fast" else None,
            agent=audit.CLI,
        )
    _print_registered(out, as_json)


@click.command()
@model_option
@task_option
@data_option
@outcomes_option
@task_file_option
@registry_option
@click.option(
    "--landmark",
    type=float,
    default=None,
    help="Landmark to score at, in hours after admission (> 0; time-series tasks; default"
    " the task's).",
)
@json_option
@click.pass_context
def evaluate(
    ctx: click.Context,
    model_ref: str,
    task_name: str | None,
    data: Path | None,
    outcomes: Path | None,
    task_file: Path | None,
    registry: Path | None,
    landmark: float | None,
    as_json: bool,
) -> None:
    """Evaluate a registered model on labelled data it has not seen.

    Without --data (time-series tasks), the store's stays stored after the model's
    training data was read, of patients it never saw. The data the model was trained on,
    data more than 1 % of whose patients hold a training row, data without its features
    and a label of one class are refused.
    """
    from vitalcast.modeling.external_validation import evaluate_version

    with _session(ctx) as session:
        metrics = evaluate_version(
            session=session,
            model=model_ref,
            task=task_name,
            registry_dir=_registry(ctx, registry),
            data=data,
            outcomes=outcomes,
            task_file=task_file,
            landmark_h=landmark,
        )
    if as_json:
        _print_json(metrics)
        return
    _print_summary(f"{metrics['model']} on {metrics['data']}", metrics)


@click.command()
@model_option
@task_option
@data_option
@outcomes_option
@task_file_option
@registry_option
@json_option
@click.pass_context
def recalibrate(
    ctx: click.Context,
    model_ref: str,
    task_name: str | None,
    data: Path | None,
    outcomes: Path | None,
    task_file: Path | None,
    registry: Path | None,
    as_json: bool,
) -> None:
    """Refit a model's calibration and threshold on local outcomes; register a challenger.

    Keeps the fitted model (its ranking and explanations) and re-chooses only how its
    scores map to risks, on labelled data it never saw, read and refused as `evaluate`
    reads and refuses it. The new version becomes `challenger`, never champion: review
    it, then `vitalcast models promote VERSION`.
    """
    from vitalcast.modeling.recalibrate import recalibrate_version
    from vitalcast.security import audit

    with _session(ctx) as session:
        out = recalibrate_version(
            session=session,
            model=model_ref,
            task=task_name,
            registry_dir=_registry(ctx, registry),
            data=data,
            outcomes=outcomes,
            task_file=task_file,
            agent=audit.CLI,
        )
    _print_registered(out, as_json)


@click.group()
def models() -> None:
    """List, inspect, promote and roll back registered models; prune what interrupted
    registrations left."""


@models.command("list")
@click.option("--task", "task_name", type=TASK, default=None, help="Only this task.")
@json_option
@click.pass_context
def models_list(ctx: click.Context, task_name: str | None, as_json: bool) -> None:
    """Registered versions, newest first."""
    from vitalcast.modeling.service import list_versions

    with _session(ctx) as session:
        rows = [
            {
                "version": r.version,
                "task": r.task,
                "alias": r.alias,
                "auroc": r.metrics.get("auroc"),
                "threshold": r.threshold,
                "created_at": r.created_at.isoformat(),
            }
            for r in list_versions(session, task_name)
        ]
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        auroc = f"{r['auroc']:.3f}" if isinstance(r["auroc"], float) else "-"
        click.echo(
            f"{r['version']:<48} {r['task']:<20} {r['alias'] or '':<10} AUROC {auroc}"
            f"  {r['created_at']}"
        )


@models.command("show")
@click.argument("version")
@click.option(
    "--task",
    "task_name",
    type=TASK,
    default=None,
    help="Task, when VERSION is an alias.",
)
@click.pass_context
def models_show(ctx: click.Context, version: str, task_name: str | None) -> None:
    """The sidecar of VERSION (or of a task's champion/challenger), as JSON."""
    from vitalcast.modeling.service import get_version_or_raise, sidecar_of

    with _session(ctx) as session:
        row = get_version_or_raise(session, version, task_name)
        sidecar = sidecar_of(row)
        sidecar.pop("reference", None)
        sidecar["alias"] = row.alias
    _print_json(sidecar)


@models.command("prune")
@registry_option
@click.option("--delete", is_flag=True, help="Remove them (default: only list them).")
@click.option(
    "--older-than",
    "older_than",
    type=click.IntRange(min=0),
    default=60,
    show_default=True,
    help="Minutes; newer folders may be a registration in progress and are left alone.",
)
@click.pass_context
def models_prune(ctx: click.Context, registry: Path | None, delete: bool, older_than: int) -> None:
    """List (or remove) registry folders no registered version owns.

    A registration that fails removes its files itself; only a process killed while
    registering leaves a hidden `.incomplete-VERSION` folder, or a version folder with no
    database row. Neither is ever loaded. They take space, and an unregistered one can be
    evaluated by name as if it were a model. A version folder that no registration of
    this database left ("foreign": another database sharing this registry directory, or
    a model saved offline) is listed but never removed. Exit code 1 when a folder could
    not be removed.
    """
    import shutil

    from vitalcast.modeling.service import stray_folders

    folder = _registry(ctx, registry)
    with _session(ctx) as session:
        strays = stray_folders(session, folder)
    old = [s for s in strays if s.prunable and s.age_s >= older_than * 60]
    for s in strays:
        if not s.prunable:
            note = "  (no row in this database; another's, or saved offline: left alone)"
        elif s not in old:
            note = f"  (changed in the last {older_than} min: left alone)"
        else:
            note = ""
        click.echo(f"{s.kind:<13} {s.path.name}  {s.size / 1e6:.1f} MB{note}")
    total = sum(s.size for s in old) / 1e6
    if not old:
        click.echo(f"nothing to prune in {folder}")
    elif delete:
        # Each failure said, and exit 1: "removed" must mean gone (a folder owned by
        # another user, a read-only mount), or a cron job would report space it never freed.
        unremoved = []
        for s in old:
            errors: list[str] = []
            shutil.rmtree(s.path, onerror=_rmtree_errors(errors))
            if s.path.exists():  # gone is gone, even if another prune got there first
                unremoved.append(s)
                reason = errors[0] if errors else "still there"
                click.echo(f"could not remove {s.path.name} ({reason})", err=True)
        done = len(old) - len(unremoved)
        freed = total - sum(s.size for s in unremoved) / 1e6
        click.echo(f"removed {done} folders ({freed:.1f} MB)")
        if unremoved:
            click.echo(f"{len(unremoved)} folders could not be removed", err=True)
            ctx.exit(1)
    else:
        click.echo(f"{len(old)} folders ({total:.1f} MB) to remove: run again with --delete")


def _rmtree_errors(errors: list[str]) -> Any:
    """An ``onerror`` for :func:`shutil.rmtree` that appends each failure's reason (no
    path: a folder name is said once, by the caller) to ``errors``."""

    def record(_func: Any, _path: str, info: Any) -> None:
        errors.append(getattr(info[1], "strerror", None) or type(info[1]).__name__)

    return record


def rescore_stays(ctx: click.Context, task: str, agent: Any) -> None:
    """After a champion change: score the stays in progress with the new champion and say
    how many, so that no ward shows the retired model's risks until each stay's next
    observation (``--no-rescore`` leaves them to that)."""
    from vitalcast.serving.rescoring import rescore_after_champion_change
    from vitalcast.serving.scoring import served_population

    settings = _settings(ctx)
    done = rescore_after_champion_change(
        settings.resolved_database_url,
        settings.redis_url,
        task,
        agent,
        population=served_population(settings),
    )
    if done is not None and done.superseded:
        click.echo(
            f"rescored {done.stays} stays in progress with {done.version}, then stopped:"
            " another champion was promoted meanwhile (its own command rescores the stays"
            " unless it was given --no-rescore)"
        )
    elif done is not None:
        click.echo(f"rescored {done.stays} stays in progress with {done.version}")


_RESCORE = click.option(
    "--rescore/--no-rescore",
    default=True,
    show_default=True,
    help="Score the stays in progress with the new champion at once.",
)


@models.command("promote")
@click.argument("version")
@click.option("--alias", type=click.Choice(["champion", "challenger"]), default="champion")
@_RESCORE
@click.pass_context
def models_promote(ctx: click.Context, version: str, alias: str, rescore: bool) -> None:
    """Make VERSION the task's champion (or challenger).

    The champion itself cannot be made challenger: promote another version to champion,
    or roll back, so that the task never has none.
    """
    from vitalcast.modeling.service import get_version_or_raise, load_registered, promote
    from vitalcast.security import audit
    from vitalcast.serving.predictor import servable

    with (
        _audited_failure(ctx, "model.promoted", f"model/{version}", {"alias": alias}),
        _session(ctx) as session,
    ):
        # Refuse to promote an artifact that would not load, or would load and not serve.
        # Checked first: promote() takes the audit chain's lock, which every audited
        # write waits for until this commits, and loading takes seconds.
        candidate = get_version_or_raise(session, version)
        servable(load_registered(session, candidate), model_version_id=candidate.id)
        row = promote(session, version=version, alias=alias, agent=audit.CLI)
        task = row.task
    click.echo(f"{version} is now {alias} of {task}")
    if alias == "champion" and rescore:
        rescore_stays(ctx, task, audit.CLI)


@models.command("rollback")
@click.option("--task", "task_name", type=TASK, required=True)
@_RESCORE
@click.pass_context
def models_rollback(ctx: click.Context, task_name: str, rescore: bool) -> None:
    """Make the previous champion of a task champion again."""
    from vitalcast.modeling.service import load_registered, rollback, rollback_target
    from vitalcast.security import audit
    from vitalcast.serving.predictor import servable

    with (
        _audited_failure(ctx, "model.rolled_back", f"task/{task_name}", {"task": task_name}),
        _session(ctx) as session,
    ):
        target = rollback_target(session, task_name)  # checked before the lock, as promote
        servable(load_registered(session, target), model_version_id=target.id)
        row = rollback(session, task=task_name, agent=audit.CLI)
        version = row.version
    click.echo(f"{version} is champion of {task_name} again")
    if rescore:
        rescore_stays(ctx, task_name, audit.CLI)


@click.command()
@click.option("--model", "model_ref", required=True, help="Version, or champion with --task.")
@click.option(
    "--task",
    "task_name",
    type=TASK,
    default=None,
    help="Task, when --model is an alias.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the HTML here (default: model-report-VERSION.html).",
)
@click.option("--markdown", is_flag=True, help="Print the Markdown summary instead.")
@click.pass_context
def report(
    ctx: click.Context, model_ref: str, task_name: str | None, out: Path | None, markdown: bool
) -> None:
    """Write the HTML model card (model card + TRIPOD+AI items, plots, subgroups), with
    every stored evaluation on unseen data."""
    from vitalcast.modeling.external_validation import evaluations_of
    from vitalcast.modeling.report import render_html, render_markdown
    from vitalcast.modeling.service import get_version_or_raise, sidecar_of

    with _session(ctx) as session:
        row = get_version_or_raise(session, model_ref, task_name)
        sidecar = sidecar_of(row)
    evaluations = evaluations_of(Path(row.artifact_path).parent)
    if markdown:
        click.echo(render_markdown(sidecar, evaluations))
        return
    from vitalcast.errors import VitalcastError

    target = out or Path(f"model-report-{sidecar['version']}.html")
    try:
        target.write_text(render_html(sidecar, evaluations), encoding="utf-8")
    except OSError as exc:  # a missing folder, a directory, no permission: the user's to fix
        raise VitalcastError(f"--out {target}: cannot write the report ({exc.strerror})") from None
    click.echo(str(target))


COMMANDS = (train, evaluate, recalibrate, models, report)
