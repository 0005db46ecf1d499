"""Use cases of the model registry: train and register, promote, roll back (external
evaluation: :mod:`vitalcast.modeling.external_validation`).

Functions take keyword-only arguments and never commit: the caller (CLI command, request,
job) owns the unit of work.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import event, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, SessionTransaction

from vitalcast.db.base import utcnow
from vitalcast.errors import error_kind
from vitalcast.modeling import evaluate as ev
from vitalcast.modeling.datasets import Dataset, row_digests
from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.registry import (
    LoadedModel,
    Registered,
    RegistryError,
    check_sidecar,
    discard_version,
    is_staging,
    is_uncommitted,
    load_model,
    mark_committed,
    publish_version,
    read_sidecar,
    read_sidecar_hashed,
    save_model,
    staging_dir,
)
from vitalcast.modeling.tables import ModelVersion
from vitalcast.modeling.tasks import TABULAR, Task, TaskError, get_task, is_task_file_task
from vitalcast.modeling.train import DEFAULT_SEED, CandidateSpec, fit_model
from vitalcast.security import audit

logger = logging.getLogger(__name__)

ALIASES = ("champion", "challenger")


@dataclass(frozen=True)
class TrainOutcome:
    """What ``train_and_register`` produced."""

    version: str
    task: str
    metrics: dict[str, Any]
    threshold: float
    artifact_path: Path
    sha256: str
    alias: str | None
    seconds: float


def train_and_register(
    task: str,
    *,
    session: Session | None,
    registry_dir: Path,
    data: Path | None = None,
    outcomes: Path | None = None,
    task_file: Path | None = None,
    dataset: Dataset | None = None,
    seed: int = DEFAULT_SEED,
    budget: tuple[CandidateSpec, ...] | None = None,
    n_splits: int = 5,
    n_boot: int = 200,
    agent: audit.Agent = audit.SYSTEM,
    champion_if_none: bool = True,
) -> TrainOutcome:
    """Train ``task`` (from files, a given dataset, or the store) and register the model.

    The new version becomes ``champion`` when the task has none, unless
    ``champion_if_none`` is False (governed retraining: a person or the gate promotes,
    never registration). Without ``session`` the
    artifact is written but no registry row (offline use). The registration is audited
    as done by ``agent``. ``budget`` None searches the task's own documented budget
    (:func:`vitalcast.modeling.train.search_budget`).
    """
    spec = get_task(task)
    if spec.name == TABULAR and task_file is not None:
        from vitalcast.modeling.tabular import task_of_file

        spec = task_of_file(task_file)  # a named file's task: tabular:<name>
    if dataset is None:
        dataset = load_dataset(
            spec,
            session=session,
            data=data,
            outcomes=outcomes,
            task_file=task_file,
            part="train",
        )
    if session is not None:
        check_same_outcome(session, spec, dataset)
    result = fit_model(dataset, spec, seed=seed, n_splits=n_splits, budget=budget)
    fits = dataset.training_rows(spec)
    metrics = validation_metrics(spec, dataset, result.oof_proba, result.threshold, n_boot=n_boot)
    metrics["validation"] = (
        f"{result.n_splits}-fold cross-validation grouped by patient (out-of-fold,"
        " calibration cross-fitted)"
    )
    features = result.feature_names
    version, path, sha, _sidecar = save_model(
        registry_dir,
        result.estimator,
        publish=session is None,  # registered: moved into place by register_version
        task=spec.name,
        feature_names=features,
        categorical=result.categorical,
        threshold=result.threshold,
        metrics=metrics,
        fingerprint=dataset.fingerprint,
        training_rows=np.unique(row_digests(dataset.X[features])),
        # What monitoring compares live scores against: the rows the model was fitted on
        # (its windows sample the training landmarks, not calibration-only ones).
        reference=reference_distributions(
            dataset.X.loc[fits, features],
            result.categorical,
            result.oof_proba[fits],
            meta=dataset.meta.loc[fits],
        ),
        extra={
            "model": {
                "candidate": result.candidate.name,
                "family": result.candidate.family,
                "params": result.candidate.params,
                "calibration": result.calibration,
                "seed": result.seed,
                "search": result.search,
                "train_seconds": result.seconds,
            },
            "value_names": dataset.value_names,
            "feature_words": dataset.feature_words,
            "data": data_summary(dataset, spec),
        },
    )
    alias = None
    if session is not None:
        alias = register_version(
            session,
            version=version,
            task=spec.name,
            path=path,
            sha256=sha,
            threshold=result.threshold,
            metrics=metrics,
            agent=agent,
            champion_if_none=champion_if_none,
        )
    logger.info("registered %s (%s, alias %s)", version, result.candidate.name, alias)
    return TrainOutcome(
        version, spec.name, metrics, result.threshold, path, sha, alias, result.seconds
    )


def check_same_outcome(session: Session, spec: Task, dataset: Dataset) -> None:
    """A named task file's data must define the outcome its task's models predict.

    Why: ``name: heart`` is what API clients ask for (``{"task": "tabular:heart"}``). A
    second table whose task file reuses the name with another label or other positive
    values would join the task, and a promotion or a rollback would then silently change
    the question the served risk answers. (The unnamed ``tabular`` task is any table's by
    design; its files are not compared.)

    Raises:
        TaskError: a registered version of the task recorded another outcome.
    """
    if spec.name == TABULAR or not is_task_file_task(spec) or dataset.outcome is None:
        return
    for row in list_versions(session, spec.name):
        try:
            trained = (sidecar_of(row).get("data") or {}).get("outcome")
        except RegistryError:
            continue  # a version whose files are gone says nothing about the outcome
        if trained is not None and trained != dataset.outcome:
            raise TaskError(
                f"{spec.name}: the task file's outcome is {_outcome_words(dataset.outcome)};"
                f" the task's models (such as {row.version}) predict"
                f" {_outcome_words(trained)}. A task file of another outcome needs its own"
                " `name`"
            )


def _outcome_words(outcome: dict[str, Any]) -> str:
    """``column 'num' = '3', '4'``: a task file's outcome as messages say it."""
    return f"column {outcome['column']!r} = {', '.join(map(repr, outcome['positive']))}"


def data_summary(dataset: Dataset, spec: Task) -> dict[str, Any]:
    """The sidecar's description of the rows a model learnt from (counts, landmarks,
    notes: no identifier)."""
    fits = dataset.training_rows(spec)
    return {
        "source": dataset.source,
        "rows": int(fits.sum()),
        "patients": len(np.unique(dataset.groups[fits])),
        "events": int(dataset.y[fits].sum()),
        "event_patients": len(np.unique(dataset.groups[fits][dataset.y[fits] == 1])),
        "landmarks_h": list(spec.landmarks_h),
        "calibration_only_rows": int((~fits).sum()),
        "calibration_landmarks_h": list(spec.calibration_landmarks_h),
        "notes": dataset.notes,
        **({"outcome": dataset.outcome} if dataset.outcome is not None else {}),
        # Read from the store: up to which encounter, so that `evaluate` can read only the
        # stays stored after it (external_validation.evaluate_version).
        **(
            {"store_through_encounter_id": dataset.store_through_encounter_id}
            if dataset.store_through_encounter_id is not None
            else {}
        ),
    }


def register_version(
    session: Session,
    *,
    version: str,
    task: str,
    path: Path,
    sha256: str,
    threshold: float,
    metrics: dict[str, Any],
    agent: audit.Agent = audit.SYSTEM,
    champion_if_none: bool = True,
) -> str | None:
    """Add the registry row; make it champion when the task has none (and
    ``champion_if_none``: the first model a person trains; retraining passes False).

    The row records the sidecar's sha256 as well as the artifact's, after checking that
    the sidecar describes what is registered: serving takes the threshold and feature
    list from it, so both files are verified on every load.

    Writes a ``model.registered`` audit event in the same transaction (HIPAA 164.312(b):
    a model change is an auditable action, whoever makes it: CLI, HTTP route or job).

    A version saved unpublished (``save_model(..., publish=False)``) is moved into place
    here and removed again if the transaction does not commit, so a failed registration
    leaves no folder that no row knows.

    Raises:
        RegistryError: the files are not the ones described, or the database refused the
            row (the message names the driver's error class; nothing was registered).
    """
    folder = path.parent
    if staging_dir(folder).is_dir() and not folder.exists():
        # Saved with publish=False: move it into place before the row names it (a row
        # naming a missing folder is a champion serving cannot load), and remove it again
        # unless this transaction commits. Only a folder moved here is ever removed.
        publish_version(folder, uncommitted=True)
        _discard_unless_committed(session, folder)
    sidecar, sidecar_sha256 = read_sidecar_hashed(folder)
    check_sidecar(folder.name, sidecar, task=task, threshold=threshold)
    if sidecar.get("sha256") != sha256:
        raise RegistryError(f"{folder.name}: the sidecar names another artifact; not registered")
    try:
        holders = lock_task(session, task)  # two first registrations: one champion
        first = champion_if_none and not any(r.alias == "champion" for r in holders)
        alias = "champion" if first else None
        session.add(
            ModelVersion(
                version=version,
                task=task,
                artifact_path=str(path.resolve()),
                sha256=sha256,
                sidecar_sha256=sidecar_sha256,
                threshold=threshold,
                metrics=_headline(metrics),
                alias=alias,
                promoted_at=utcnow() if alias else None,
            )
        )
        session.flush()
        audit.record(
            session,
            agent.event(
                "model.registered",
                "C",
                resource=f"model/{version}",
                details={"task": task, "sha256": sha256, "alias": alias},
            ),
        )
    except SQLAlchemyError as exc:
        # One line naming what failed (the driver's class only: its message may quote
        # values); the caller's rollback removes the folder.
        raise RegistryError(
            f"{version} could not be recorded in the registry database ({error_kind(exc)});"
            " nothing was registered and its files are removed"
        ) from None
    return alias


_UNCOMMITTED = "vitalcast.registry.uncommitted"


@dataclass
class _Pending:
    """A folder moved into place for a row not yet committed, and the transaction (the
    outermost one, or the savepoint) that row was written in."""

    folder: Path
    owner: SessionTransaction


def _innermost(session: Session) -> SessionTransaction:
    transaction = session.get_nested_transaction() or session.get_transaction()
    assert transaction is not None  # the caller began one
    return transaction


def _discard_unless_committed(session: Session, folder: Path) -> None:
    """Remove ``folder`` when the session's transaction ends without committing.

    Service functions never commit (their caller does, or rolls back, or dies), so the
    folder's fate is tied to the transaction itself: on a rollback, a failed commit or a
    session closed without committing, the folder goes; on the commit it stays. A row
    written inside a savepoint follows the savepoint: rolled back to, the folder goes
    (even if the outer transaction commits); released, the outer transaction decides. Its
    :data:`~vitalcast.modeling.registry.UNCOMMITTED` mark is removed just before the
    commit, so that a process killed in between leaves a folder that ``models prune``
    lists but never removes (the safe side: it may be registered), never a registered
    version that another database's ``prune`` would take for a killed registration.
    """
    pending: list[_Pending] | None = session.info.get(_UNCOMMITTED)
    if pending is None:
        pending = session.info[_UNCOMMITTED] = []
        event.listen(session, "before_commit", _committing)
        event.listen(session, "after_commit", _kept)
        event.listen(session, "after_transaction_end", _discarded)
    if not session.in_transaction():
        session.begin()  # so that its end, commit or not, is an event even before any query
    pending.append(_Pending(folder, _innermost(session)))


def _committing(session: Session) -> None:
    # Fired for a savepoint's release too: only the outermost commit makes the row durable.
    # Should the commit then fail, _discarded still removes the folders.
    if not session.in_nested_transaction():
        for entry in session.info.get(_UNCOMMITTED, []):
            mark_committed(entry.folder)


def _kept(session: Session) -> None:
    committed = _innermost(session)  # still the current one while after_commit runs
    pending: list[_Pending] = session.info.get(_UNCOMMITTED, [])
    if committed.parent is None:
        pending.clear()
        return
    for entry in pending:  # a savepoint released: its rows are now the outer transaction's
        if entry.owner is committed:
            entry.owner = committed.parent


def _discarded(session: Session, transaction: SessionTransaction) -> None:
    pending: list[_Pending] = session.info.get(_UNCOMMITTED, [])
    ended = [e for e in pending if e.owner is transaction or transaction.parent is None]
    for entry in ended:  # left here only by a transaction that ended without committing
        discard_version(entry.folder)
        logger.warning(
            "registration of %s did not commit; its folder was removed", entry.folder.name
        )
    pending[:] = [e for e in pending if e not in ended]


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The row keeps flat headline metrics; the sidecar keeps everything."""
    return {k: v for k, v in metrics.items() if not isinstance(v, dict) and k != "curves"}


# Subgroup tables, where the data has the column: sex, age band, ICU type
# (icu-mortality) and admission type (readmission-30d).
SUBGROUP_COLUMNS: tuple[str, ...] = ("sex", "age_band", "unit", "admission_type")


def validation_metrics(
    task: Task, ds: Dataset, proba: np.ndarray, threshold: float, *, n_boot: int = 200
) -> dict[str, Any]:
    """Headline metrics at the primary landmark, plus by landmark, subgroup and baseline."""
    rows = ds.rows_at(task.primary_landmark_h)
    y, p = ds.y[rows], proba[rows]
    out: dict[str, Any] = ev.evaluate(y, p, threshold, groups=ds.groups[rows], n_boot=n_boot)
    if task.primary_landmark_h is not None:
        out["landmark_h"] = task.primary_landmark_h
        # Landmarking claims validity at every landmark: discrimination *and* calibration.
        out["by_landmark"] = {
            f"{h:g}": {
                "n": int(ds.rows_at(h).sum()),
                "auroc": ev.auroc(ds.y[ds.rows_at(h)], proba[ds.rows_at(h)]),
                "brier": ev.brier(ds.y[ds.rows_at(h)], proba[ds.rows_at(h)]),
                "calibration_slope": ev.calibration_slope(
                    ds.y[ds.rows_at(h)], proba[ds.rows_at(h)]
                ),
                "calibration_intercept": ev.calibration_intercept(
                    ds.y[ds.rows_at(h)], proba[ds.rows_at(h)]
                ),
            }
            for h in task.all_landmarks_h
            if ds.rows_at(h).any()
        }
    out["curves"] = ev.curves(y, p)
    meta = ds.meta.loc[rows]
    out["subgroups"] = {
        col: ev.subgroup_metrics(y, p, meta[col].to_numpy(), threshold)
        for col in SUBGROUP_COLUMNS
        if col in meta
    }
    baseline = baseline_scores(task, ds.X.loc[rows])
    if baseline is not None:
        name, scores = baseline
        out["baseline"] = {"name": name, "auroc": ev.auroc(y, scores)}
    return out


def baseline_scores(task: Task, X: pd.DataFrame) -> tuple[str, np.ndarray] | None:
    """A simple clinical score on the same rows, so the model's added value shows."""
    if task.name == "icu-mortality":
        from vitalcast.modeling.baseline import news2_scores

        return "NEWS2 (latest vitals)", news2_scores(X)
    return None


def reference_distributions(
    X: pd.DataFrame,
    categorical: list[str],
    scores: np.ndarray,
    *,
    meta: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Training distributions drift monitoring compares live data against.

    One :func:`vitalcast.monitoring.drift.reference_profile` per feature and for the
    out-of-fold scores (bin counts, percentile grid, missing rate; aggregates only), over
    one row per stay when ``meta`` gives each row's stay and landmark
    (:func:`vitalcast.monitoring.drift.reference_rows`: a stay's landmark rows are not
    independent samples); ``n`` is the number of rows profiled.
    """
    from vitalcast.monitoring.drift import reference_profile, reference_rows

    if meta is not None and {"stay_id", "landmark_h"} <= set(meta.columns):
        keep = reference_rows(
            [str(s) for s in meta["stay_id"]], [float(h) for h in meta["landmark_h"]]
        )
        rows = np.flatnonzero(keep)
        X = X.iloc[rows]
        scores = np.asarray(scores)[rows]
    features: dict[str, Any] = {}
    for col in X.columns:
        s = X[col]
        if col in categorical:
            features[col] = reference_profile(None if pd.isna(v) else str(v) for v in s)
        else:
            features[col] = reference_profile(s.to_numpy(dtype=float).tolist())
    return {
        "n": len(X),
        "features": features,
        "score": reference_profile(np.asarray(scores, dtype=float).tolist()),
    }


# --- registry queries and aliases ---------------------------------------------------


def get_champion(session: Session, task: str) -> ModelVersion | None:
    """The task's champion row, or None."""
    return session.scalar(
        select(ModelVersion).where(ModelVersion.task == task, ModelVersion.alias == "champion")
    )


def get_version(session: Session, version: str) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.version == version))


def get_version_or_raise(session: Session, version: str, task: str | None = None) -> ModelVersion:
    """A version by name, or ``champion``/``challenger`` of ``task``."""
    if version in ALIASES:
        if task is None:
            raise RegistryError(f"--model {version} needs --task to say which task's {version}")
        row = session.scalar(
            select(ModelVersion).where(ModelVersion.task == task, ModelVersion.alias == version)
        )
        if row is None:
            # Not "model 'champion' is not registered": the task has versions, or none.
            raise RegistryError(
                f"{task} has no {version}; see `vitalcast models list --task {task}`"
            )
    else:
        row = get_version(session, version)
    if row is None:
        raise RegistryError(f"model {version!r} is not registered; see `vitalcast models list`")
    return row


def list_versions(session: Session, task: str | None = None) -> list[ModelVersion]:
    q = select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    if task:
        q = q.where(ModelVersion.task == task)
    return list(session.scalars(q))


@dataclass(frozen=True)
class StrayFolder:
    """A registry folder no registered version owns (:func:`stray_folders`)."""

    path: Path
    # "incomplete" (a staging folder), "unregistered" (a version moved into place by a
    # registration that never committed) or "foreign" (a version no row of this database
    # names that no registration of any left: another database's, or one saved offline)
    kind: str
    size: int  # bytes
    age_s: float  # since its last change

    @property
    def prunable(self) -> bool:
        """Whether ``models prune --delete`` may remove it: never a foreign version, which
        may be another database's champion."""
        return self.kind != "foreign"


def stray_folders(session: Session, registry_dir: Path) -> list[StrayFolder]:
    """What interrupted registrations left in ``registry_dir``: staging folders, and
    version folders that no row names, told apart by their
    :data:`~vitalcast.modeling.registry.UNCOMMITTED` mark (a process killed between
    moving a version into place and committing its row) from versions registered
    elsewhere (a registry directory shared by two databases). Matched by name (the row's
    version, and its artifact's folder), not path, so that a registry restored to another
    directory is not taken for strays. A folder that disappears while it is read (a
    registration in progress removing its own) is skipped.
    """
    if not registry_dir.is_dir():
        return []
    known = set(session.scalars(select(ModelVersion.version)))
    known |= {Path(p).parent.name for p in session.scalars(select(ModelVersion.artifact_path))}
    now = time.time()
    out = []
    for entry in sorted(registry_dir.iterdir()):
        try:
            if not entry.is_dir() or entry.is_symlink():
                continue
            if is_staging(entry.name):
                kind = "incomplete"
            elif entry.name.startswith(".") or entry.name in known:
                continue
            else:
                kind = "unregistered" if is_uncommitted(entry) else "foreign"
            stats = [entry.stat()] + [f.stat() for f in entry.rglob("*") if f.is_file()]
        except FileNotFoundError:
            continue
        size = sum(st.st_size for st in stats[1:])
        out.append(StrayFolder(entry, kind, size, now - max(st.st_mtime for st in stats)))
    return out


class ChampionChangedError(RegistryError):
    """The champion a promotion was judged against is no longer the champion."""


def lock_task(session: Session, task: str) -> list[ModelVersion]:
    """Lock ``task``'s registry rows for this transaction and return them as committed now.

    Takes the audit chain's lock first (the documented lock order; every alias change is
    audited, so it holds that lock anyway), then ``SELECT ... FOR UPDATE`` of the task's
    rows in id order. Two promotions of a task therefore run one after the other, the
    second seeing the first's result, instead of both replacing the same old champion
    and leaving two. The rows are re-read (``populate_existing``): a promotion must judge
    what is committed, not what this session read before it waited.
    """
    audit.lock_chain(session)
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.task == task)
            .order_by(ModelVersion.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )


def promote(
    session: Session,
    *,
    version: str,
    alias: str = "champion",
    agent: audit.Agent = audit.SYSTEM,
    details: dict[str, Any] | None = None,
    expected_champion: str | None = None,
) -> ModelVersion:
    """Give ``version`` the alias; the previous holder is retired (champion) or cleared.

    ``expected_champion``: refuse (:class:`ChampionChangedError`) unless that version is
    still the champion when the task's rows are locked; the gate judged the candidate
    against it, and a verdict against another model says nothing about this one.
    Writes a ``model.promoted`` audit event (with ``details`` added) in the same
    transaction.

    Raises:
        RegistryError: ``version`` is the champion and ``alias`` is not: a task is never
            left without a champion (serving would stop scoring it, and rollback would
            find nothing to restore).
    """
    promoted = _promote(session, version=version, alias=alias, expected_champion=expected_champion)
    _audit_alias(session, "model.promoted", promoted, agent, details)
    return promoted[0]


def _promote(
    session: Session,
    *,
    version: str,
    alias: str,
    expected_champion: str | None = None,
    demote_to: str = "retired",
) -> tuple[ModelVersion, str | None]:
    """Give ``version`` the alias; a replaced champion becomes ``demote_to`` (``retired``,
    a candidate for rollback, or ``withdrawn`` when a rollback takes it out), a replaced
    challenger nothing."""
    if alias not in ALIASES:
        raise RegistryError(f"alias must be one of {', '.join(ALIASES)}")
    row = get_version_or_raise(session, version)
    rows = lock_task(session, row.task)  # refreshes ``row`` too: same identity
    champion = next((r.version for r in rows if r.alias == "champion"), None)
    if expected_champion is not None and champion != expected_champion:
        now = champion or "none"
        raise ChampionChangedError(
            f"{row.task}: the champion changed from {expected_champion} to {now} after"
            f" {version} was judged against it; {version} was not promoted. Judge it again"
            " (`vitalcast retrain`) or promote it in person"
        )
    if row.alias == "champion" and alias != "champion":
        raise RegistryError(
            f"{version} is the champion of {row.task}; making it {alias} would leave the task"
            " without a champion (nothing would score its patients). Promote another version"
            f" to champion (`vitalcast models promote VERSION`) or roll back"
            f" (`vitalcast models rollback --task {row.task}`) instead"
        )
    replaced = None
    for current in rows:
        if current.alias == alias and current.id != row.id:
            current.alias = demote_to if alias == "champion" else None
            replaced = current.version
    # Flushed before the new holder's update: the unique index on (task) per alias is
    # checked row by row, and the unit of work would otherwise order updates by id.
    session.flush()
    row.alias = alias
    row.promoted_at = utcnow()
    session.flush()
    return row, replaced


def _audit_alias(
    session: Session,
    event: str,
    promoted: tuple[ModelVersion, str | None],
    agent: audit.Agent,
    details: dict[str, Any] | None,
) -> None:
    row, replaced = promoted
    audit.record(
        session,
        agent.event(
            event,
            "U",
            resource=f"model/{row.version}",
            details={"task": row.task, "alias": row.alias, "replaced": replaced} | (details or {}),
        ),
    )


def rollback(session: Session, *, task: str, agent: audit.Agent = audit.SYSTEM) -> ModelVersion:
    """Make the previously promoted champion of ``task`` champion again (audited as
    ``model.rolled_back`` in the same transaction). The task's rows are locked before the
    target is chosen, so a concurrent promotion is seen, not overwritten.

    The champion rolled back from becomes ``withdrawn``, not ``retired``: a second
    rollback goes on to the champion before, instead of bringing back the model just
    taken out (which a person can still promote by name).
    """
    lock_task(session, task)
    previous = rollback_target(session, task)
    promoted = _promote(session, version=previous.version, alias="champion", demote_to="withdrawn")
    _audit_alias(session, "model.rolled_back", promoted, agent, None)
    return promoted[0]


def rollback_target(session: Session, task: str) -> ModelVersion:
    """The champion a :func:`rollback` of ``task`` would restore.

    Raises:
        RegistryError: there is no earlier champion.
    """
    previous = session.scalar(
        select(ModelVersion)
        .where(
            ModelVersion.task == task,
            ModelVersion.alias == "retired",
            ModelVersion.promoted_at.is_not(None),
        )
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
    )
    if previous is None:
        raise RegistryError(f"{task}: no earlier champion to roll back to")
    return previous


def load_registered(session: Session, row: ModelVersion) -> LoadedModel:
    """Load a registry row's artifact, verified against what the row records (both files'
    sha256, threshold and task)."""
    return load_model(row.artifact_path, Registered.of(row))


def load_champion(session: Session, task: str) -> LoadedModel | None:
    """The task's champion, verified and ready to score; None when there is none."""
    row = get_champion(session, task)
    return None if row is None else load_registered(session, row)


def sidecar_of(row: ModelVersion) -> dict[str, Any]:
    return read_sidecar(Path(row.artifact_path))
