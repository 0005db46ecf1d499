"""Versioned model artifacts on disk: a skops file plus a JSON sidecar, verified on load.

Layout: ``<registry_dir>/<version>/model.skops`` and ``model.json``. The sidecar holds the
artifact's sha256, the Python/scikit-learn/numpy versions, the task, feature list,
threshold, metrics, training-data fingerprint and the training reference distributions
that drift monitoring compares against.

A version is written into ``<registry_dir>/.incomplete-<version>/`` and moved into place
by one rename once complete. Registering it (:func:`vitalcast.modeling.service.
register_version`) moves it into place before the database row is written, and removes it
again if that transaction does not commit: a row never names a folder that is not there
(serving could not load it), and a failed registration leaves nothing. Only a process
killed between the two can leave a hidden ``.incomplete-`` folder or a version folder no
row names; neither is ever loaded (loading needs the row's hashes), and
``vitalcast models prune`` lists and removes them.

Two locks on what loading may do. :func:`load_model` checks the hashes of both files
against the caller's record (the database row: :class:`Registered`) and the library
versions before reading the artifact, and refuses anything else. The sidecar is checked
too because serving takes the operating threshold, the task, the feature list and the
categorical columns from it: an edited threshold would change every alert while the
artifact's own hash still matched. Rows registered before the sidecar's hash was recorded
(migration 0015) have their threshold and task compared with the sidecar's instead.
Evaluations are kept beside the version (``evaluations/``), never in the sidecar, so
nothing legitimately rewrites it after registration.

And the artifact is a skops file, not a pickle: skops rebuilds only the types it is told
to trust, so a file that passes the hash check (its writer also rewrote the database row)
still cannot run code; it may hold scikit-learn's and numpy's own types plus
:data:`TRUSTED_TYPES`, the few that vitalcast's models need, and anything else is refused
before a single object is built. Saving checks the same list, so a model that could not be
loaded is never registered. Versions registered before (format 1, a joblib pickle) still
load, behind the hash check alone.

Risk bands, relative to the task's operating threshold ``t`` (chosen on validation data):

=========  ==========================  ===========================================
band       probability ``p``           meaning
=========  ==========================  ===========================================
low        ``p < t/2``                 well under the alerting threshold
medium     ``t/2 <= p < t``            approaching the threshold
high       ``t <= p < c``              at or above the threshold (alert)
critical   ``p >= c``                  ``c = min(2t, (1+t)/2)``: twice the threshold
=========  ==========================  ===========================================
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import math
import platform
import shutil
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import pandas as pd
import sklearn
import skops.io as sio
from sklearn.exceptions import InconsistentVersionWarning

from vitalcast.errors import VitalcastError
from vitalcast.features import describe_feature, feature_label
from vitalcast.features.labels import count_feature
from vitalcast.modeling.explain import Explainer, top_factors

if TYPE_CHECKING:
    from vitalcast.modeling.tables import ModelVersion

logger = logging.getLogger(__name__)
ARTIFACT = "model.skops"
SIDECAR = "model.json"
# Digests of the training rows (``datasets.row_digests``), a plain uint64 .npy array whose
# sha256 the sidecar records: what ``evaluate`` checks new data against.
TRAINING_ROWS = "training_rows.npy"
FORMAT = 2
# A version's folder while it is written, before it is moved into place: hidden and named
# so that it can be neither a version nor mistaken for one. ``.staging-<time>``: the name
# used before, which an interrupted save may have left.
STAGING_PREFIX = ".incomplete-"
LEGACY_STAGING_PREFIX = ".staging-"
# Inside a version folder that a registration moved into place and whose transaction has
# not committed yet; removed just before the commit. A version folder with it and no row
# is what a killed registration left (``models prune`` removes it); one without it and no
# row in this database is another's (a registry shared by two databases, a model saved
# offline) and is never pruned.
UNCOMMITTED = ".uncommitted"
LEGACY_FORMAT = 1  # model.joblib: a pickle, loaded only behind the hash check
SKOPS_SCHEMA = "schema.json"  # a skops file's object tree; every other entry is an array

# What skops does not trust by default and vitalcast's models are made of: the calibration
# wrappers' inner parts, the trees of the forests and of the boosted models (and the numpy
# dtype of their node records), and vitalcast's own landmark calibration.
TRUSTED_TYPES = frozenset(
    {
        "numpy.dtype",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.tree._tree.Tree",
        "vitalcast.modeling.landmark_calibration.LandmarkCalibratedClassifier",
    }
)


class RegistryError(VitalcastError):
    """A model version is missing or cannot be used."""


class ArtifactIntegrityError(RegistryError):
    """The artifact's bytes do not match the recorded sha256 (altered or corrupt)."""


class UntrustedArtifactError(RegistryError):
    """The artifact holds types outside :data:`TRUSTED_TYPES`: it is not one of ours."""


class SidecarIntegrityError(ArtifactIntegrityError):
    """The sidecar (model.json) differs from what was registered: edited or corrupt."""


class IncompatibleArtifactError(RegistryError):
    """The artifact was saved with another scikit-learn (or format) version."""


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "joblib": joblib.__version__,
    }


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Factor:
    """One reason behind a prediction, in clinical words."""

    feature: str
    label: str  # e.g. "Lactate, highest (last 24 h)"
    value: float | str | None
    contribution: float  # log-odds added to the base risk
    direction: str  # "raises" or "lowers"
    text: str  # e.g. "Lactate, highest (last 24 h): 4.1 mmol/L"

    def to_dict(self) -> dict[str, Any]:
        value = self.value
        if isinstance(value, float) and math.isnan(value):
            value = None
        return {
            "feature": self.feature,
            "label": self.label,
            "value": value,
            "contribution": self.contribution,
            "direction": self.direction,
            "text": self.text,
        }


def band_cuts(threshold: float) -> tuple[float, float, float]:
    """Where the bands start: medium, high (the alert threshold) and critical."""
    return threshold / 2, threshold, min(2 * threshold, (1 + threshold) / 2)


def band_for(p: float, threshold: float) -> str:
    """Risk band of ``p`` (see the module docstring for the cut-points)."""
    medium, high, critical = band_cuts(threshold)
    if p >= critical:
        return "critical"
    if p >= high:
        return "high"
    if p >= medium:
        return "medium"
    return "low"


def risk_percent(p: float, threshold: float | None = None) -> str:
    """``p`` as clinicians read it: a whole percentage, with one decimal only where the
    whole number would sit on a band cut-point.

    Why: with an alert threshold of 20.74 %, "21 %" could be Medium (20.6 %) or High
    (20.9 %), and a page reading "21 % · Medium · below the alert threshold of 21 %"
    contradicts itself. More digits everywhere would claim precision a risk does not
    have; here they appear only where they decide the band.
    """
    whole = _whole_percent(p)
    if threshold is not None and any(whole == _whole_percent(c) for c in band_cuts(threshold)):
        # Half up on the exact binary value, as the browser's toFixed(1).
        tenth = Decimal(p * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
        return f"{tenth} %"
    return f"{whole} %"


def _whole_percent(p: float) -> int:
    # Half up, as the browser's Math.round (static/js/vitalcast.js VC.riskPct does the same
    # for live updates), not Python's round-half-even.
    return math.floor(p * 100 + 0.5)


@dataclass
class LoadedModel:
    """A verified model ready to score: the one object serving needs."""

    version: str
    task: str
    threshold: float
    feature_names: list[str]
    categorical: list[str]
    pipeline: Any  # sklearn estimator: predict_proba(DataFrame[feature_names])
    sidecar: dict[str, Any]
    path: Path
    sha256: str
    _explainer: Explainer | None = field(default=None, repr=False)

    def frame(self, features: Mapping[str, Any]) -> pd.DataFrame:
        """One-row frame in the model's column order; absent features are missing (NaN)."""
        row = {
            name: features.get(name, None if name in self.categorical else math.nan)
            for name in self.feature_names
        }
        return self.frame_of([row])

    def frame_of(self, rows: list[Mapping[str, Any]]) -> pd.DataFrame:
        """Rows in the model's column order: numeric inputs as floats (anything that is not
        a number is missing, NaN), categorical ones as objects with None for missing, as
        the training frames hold them; one-row and many-row frames are built alike.

        Built as one float block rather than column by column: with ~500 inputs, pandas'
        per-column conversion took ~0.3 s a row, paid by every explained prediction.
        """
        categorical = set(self.categorical)
        numeric = [c for c in self.feature_names if c not in categorical]
        block = np.array([[_as_float(r.get(c)) for c in numeric] for r in rows], dtype=float)
        df = pd.DataFrame(block.reshape(len(rows), len(numeric)), columns=numeric)
        for c in self.categorical:
            # Missing (absent, None or NaN) is None: the form the training frames hold
            # (modeling/tabular.py), so the fitted encoder sees what it was fitted on.
            df[c] = pd.Series([None if _is_missing(r.get(c)) else r[c] for r in rows], dtype=object)
        return df[self.feature_names]

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.pipeline.predict_proba(frame[self.feature_names])[:, 1])

    def predict_proba_row(self, features: Mapping[str, Any]) -> float:
        return float(self.predict_proba(self.frame(features))[0])

    def missing_inputs(self, features: Mapping[str, Any]) -> list[str]:
        """Model inputs absent or NaN in ``features`` (imputed by the pipeline)."""
        out = []
        for name in self.feature_names:
            v = features.get(name)
            if _is_missing(v):
                out.append(name)
        return out

    def band(self, p: float) -> str:
        return band_for(p, self.threshold)

    @property
    def explainer(self) -> Explainer:
        if self._explainer is None:
            self._explainer = Explainer(self.pipeline, self.feature_names)
        return self._explainer

    def explain(self, features: Mapping[str, Any], top: int = 5) -> list[Factor]:
        """The ``top`` features that moved this prediction most, in log-odds."""
        frame = self.frame(features)
        contrib = self.explainer.contributions(frame)
        return self.factors(frame.iloc[0].to_dict(), contrib.values[0], top)

    def factors(self, row: Mapping[str, Any], values: np.ndarray, top: int = 5) -> list[Factor]:
        """The ``top`` largest of one row's contributions ``values``, in clinical words.

        ``row`` holds the row's values as the model read them (numeric features as
        numbers, missing as None or NaN); they are shown beside each factor.
        """
        factors = []
        value_names: dict[str, dict[str, str]] = self.sidecar.get("value_names", {})
        words: dict[str, list[str]] = self.sidecar.get("feature_words", {})
        for name, value in top_factors(self.feature_names, values, top):
            raw = row.get(name)
            shown = None if _is_missing(raw) else raw
            if isinstance(shown, np.floating | np.integer) or (
                name not in self.categorical and isinstance(shown, int | float)
            ):
                shown = float(shown)
            # A coded category reads as its name in the text; the value stays the code.
            said = value_names.get(name, {}).get(shown, shown) if isinstance(shown, str) else shown
            factors.append(
                Factor(
                    feature=name,
                    label=feature_label(name, words),
                    value=shown,
                    contribution=value,
                    direction="raises" if value > 0 else "lowers",
                    text=describe_feature(name, said, words, count=_count_of(row, name)),
                )
            )
        return factors


def _count_of(row: Mapping[str, Any], name: str) -> float | None:
    """The row's number of measurements behind a total (None: not a total, or unknown)."""
    counted = count_feature(name)
    value = row.get(counted) if counted is not None else None
    return None if _is_missing(value) else _as_float(value)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_float(value: Any) -> float:
    """``pd.to_numeric(errors="coerce")`` for one value: a number or numeric text, else NaN."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _read_skops(name: str, artifact: Path) -> Any:
    """The estimator in a skops file, refused whole if it holds a type not trusted."""
    try:
        untrusted = sio.get_untrusted_types(file=artifact)
        foreign = set(untrusted) - TRUSTED_TYPES
        if foreign:
            raise UntrustedArtifactError(
                f"{name}: the artifact holds types vitalcast does not load"
                f" ({', '.join(sorted(foreign))}); it will not be loaded"
            )
        return sio.load(artifact, trusted=untrusted)
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise RegistryError(f"{name}: the artifact cannot be read ({exc})") from None


def new_version(task: str, sha256: str, at: datetime | None = None) -> str:
    """``<task>-<UTC time>-<sha256 prefix>``; a named task file's ``tabular:sepsis`` is
    written ``tabular-sepsis`` (a folder name and a URL segment, where ':' is not
    portable)."""
    at = at or datetime.now(UTC)
    return f"{task.replace(':', '-')}-{at:%Y%m%d-%H%M%S}-{sha256[:8]}"


def save_model(
    registry_dir: Path,
    estimator: Any,
    *,
    task: str,
    feature_names: list[str],
    categorical: list[str],
    threshold: float,
    metrics: Mapping[str, Any],
    fingerprint: str,
    reference: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    training_rows: np.ndarray | None = None,
    publish: bool = True,
) -> tuple[str, Path, str, dict[str, Any]]:
    """Write the artifact and sidecar (and the training rows' digests, when given);
    returns (version, artifact path, sha256, sidecar).

    The files are written into the version's staging folder (:func:`staging_dir`), removed
    if writing fails, and then moved into place in one rename (``publish``), so that a
    version folder is complete or absent. ``publish=False`` leaves them staged:
    :func:`vitalcast.modeling.service.register_version` moves them into place and ties
    them to its transaction, so that a registration that does not commit leaves no
    folder behind.
    """
    data = _skops_bytes(estimator)
    foreign = set(sio.get_untrusted_types(data=data)) - TRUSTED_TYPES
    if foreign:
        raise RegistryError(
            f"the model holds types vitalcast does not load ({', '.join(sorted(foreign))});"
            " nothing was registered"
        )
    registry_dir.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(data).hexdigest()
    version = new_version(task, sha)
    target = registry_dir / version
    staging = staging_dir(target)
    try:
        staging.mkdir()
    except FileExistsError:
        raise RegistryError(
            f"{staging.name} already exists in the registry (another registration of the same"
            " model, or one interrupted: see `vitalcast models prune`); nothing was registered"
        ) from None
    try:  # a version folder is complete or absent: what fails to write is removed
        (staging / ARTIFACT).write_bytes(data)
        rows: dict[str, Any] = {}
        if training_rows is not None:
            np.save(staging / TRAINING_ROWS, np.asarray(training_rows, dtype=np.uint64))
            rows["training_rows"] = {
                "file": TRAINING_ROWS,
                "sha256": sha256_file(staging / TRAINING_ROWS),
                "n": len(training_rows),
            }
        sidecar: dict[str, Any] = {
            "format": FORMAT,
            "version": version,
            "task": task,
            "artifact": ARTIFACT,
            "sha256": sha,
            "created_at": datetime.now(UTC).isoformat(),
            "versions": library_versions(),
            "feature_names": list(feature_names),
            "categorical": list(categorical),
            "threshold": threshold,
            "metrics": jsonable(dict(metrics)),
            "training_data_fingerprint": fingerprint,
            "reference": jsonable(dict(reference)),
            **rows,
            **jsonable(dict(extra or {})),
        }
        (staging / SIDECAR).write_text(json.dumps(sidecar, indent=2, sort_keys=True))
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise RegistryError(
                f"cannot write the model to the registry ({exc.strerror or exc});"
                " nothing was registered"
            ) from None
        raise
    if publish:
        publish_version(target)
    return version, target / ARTIFACT, sha, sidecar


def staging_dir(folder: Path) -> Path:
    """Where ``folder``'s files are written before the version is published: a hidden
    sibling (same filesystem, so publishing is one atomic rename) that no version name
    can take and that ``vitalcast models prune`` recognises."""
    return folder.parent / f"{STAGING_PREFIX}{folder.name}"


def is_staging(name: str) -> bool:
    """A registry entry that is a version being written, or one a crash left behind."""
    return name.startswith((STAGING_PREFIX, LEGACY_STAGING_PREFIX))


def publish_version(folder: Path, *, uncommitted: bool = False) -> None:
    """Move a staged version into place (one rename: the folder is complete or absent).

    ``uncommitted``: mark it as a registration whose transaction has not committed
    (:data:`UNCOMMITTED`, removed by :func:`mark_committed`), so that, should the process
    die before the commit, ``models prune`` can tell it from another database's version.

    Raises:
        RegistryError: a folder of that name is already there (it is left alone and the
            staged copy removed).
    """
    staged = staging_dir(folder)
    try:
        if uncommitted:
            (staged / UNCOMMITTED).touch()
        if folder.exists() or folder.is_symlink():  # rename() would replace an empty one
            raise FileExistsError(errno.EEXIST, "a folder of that name is already there")
        staged.rename(folder)
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        raise RegistryError(
            f"{folder.name} cannot be moved into place in the registry"
            f" ({exc.strerror or exc}); nothing was registered"
        ) from None


def mark_committed(folder: Path) -> None:
    """Remove ``folder``'s :data:`UNCOMMITTED` mark: its registration is committing.

    Raises:
        RegistryError: the mark cannot be removed (the commit must not go ahead: the
            version would look like a killed registration to another database's prune).
    """
    try:
        (folder / UNCOMMITTED).unlink(missing_ok=True)
    except OSError as exc:
        raise RegistryError(
            f"{folder.name}: cannot finish the registration in the registry"
            f" ({exc.strerror or exc}); nothing was registered"
        ) from None


def is_uncommitted(folder: Path) -> bool:
    """Whether ``folder`` is a version moved into place by a registration that never
    committed (it still holds :data:`UNCOMMITTED`)."""
    return (folder / UNCOMMITTED).is_file()


def discard_version(folder: Path) -> None:
    """Remove a version folder whose registration did not commit.

    Renamed back to its staging name first, so that the version name disappears at once
    and a removal cut short leaves a folder ``models prune`` recognises, never a
    half-deleted version.
    """
    staged = staging_dir(folder)
    try:
        folder.rename(staged)
    except FileNotFoundError:
        pass  # never published, or already removed
    except OSError as exc:
        logger.warning(
            "could not remove the unregistered model folder %s (%s); see `vitalcast models prune`",
            folder.name,
            exc.strerror,
        )
        return
    shutil.rmtree(staged, ignore_errors=True)


def _skops_bytes(estimator: Any) -> bytes:
    """The estimator as a skops file whose bytes depend on the model only.

    skops names each array's file and numbers each object by its ``id()``, and stamps each
    zip entry with the time of writing. Files and numbers are renumbered in the order the
    schema first names them and the times fixed, so that the same fit gives the same
    sha256 (and version id) whenever it is saved.
    """
    written = zipfile.ZipFile(io.BytesIO(sio.dumps(estimator)))
    arrays = set(written.namelist()) - {SKOPS_SCHEMA}
    schema = json.loads(written.read(SKOPS_SCHEMA))
    files: dict[str, str] = {}
    ids: dict[int, int] = {}

    def renumber(node: Any) -> Any:
        if isinstance(node, list):
            return [renumber(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "__id__" and isinstance(value, int):
                value = ids.setdefault(value, len(ids))
            elif key == "file" and isinstance(value, str) and value in arrays:
                value = files.setdefault(value, f"{len(files)}{Path(value).suffix}")
            out[key] = renumber(value)
        return out

    schema = renumber(schema)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        entries = [(SKOPS_SCHEMA, json.dumps(schema, indent=2).encode("utf-8"))]
        entries += [(new, written.read(old)) for old, new in files.items()]
        for name, payload in entries:
            fixed = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(fixed, payload)
    return out.getvalue()


def jsonable(obj: Any) -> Any:
    """NaN/inf become null (JSON has neither); numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def resolve(path_or_version: str | Path, registry_dir: Path | None = None) -> Path:
    """The version directory for a path (directory or artifact file) or a version name."""
    p = Path(path_or_version)
    if p.is_file():
        return p.parent
    if p.is_dir():
        return p
    name = str(path_or_version)
    if registry_dir is not None and not is_staging(name) and (registry_dir / name).is_dir():
        return registry_dir / str(path_or_version)
    raise RegistryError(f"model {str(path_or_version)!r} not found in the registry")


@dataclass(frozen=True, slots=True)
class Registered:
    """What the registry row records about a version, checked against its files on load.

    ``sidecar_sha256`` is None for versions registered before migration 0015 recorded it;
    their threshold and task are compared with the sidecar's instead.
    """

    sha256: str
    sidecar_sha256: str | None
    task: str
    threshold: float

    @classmethod
    def of(cls, row: ModelVersion) -> Registered:
        return cls(row.sha256, row.sidecar_sha256, row.task, float(row.threshold))


def check_sidecar(name: str, sidecar: Mapping[str, Any], *, task: str, threshold: float) -> None:
    """Refuse a sidecar whose task or threshold is not the registered one.

    Raises:
        SidecarIntegrityError: either differs (the sidecar was edited after registration).
    """
    theirs = _as_float(sidecar.get("threshold"))  # NaN when absent or not a number
    if sidecar.get("task") != task or not math.isclose(theirs, threshold, rel_tol=1e-12):
        raise SidecarIntegrityError(
            f"{name}: {SIDECAR} says task {sidecar.get('task')!r}, threshold"
            f" {sidecar.get('threshold')!r}; the registry row says task {task!r}, threshold"
            f" {threshold!r}. The sidecar was altered after registration; restore it or"
            " retrain; it will not be loaded"
        )


def read_sidecar(path_or_version: str | Path, registry_dir: Path | None = None) -> dict[str, Any]:
    return read_sidecar_hashed(resolve(path_or_version, registry_dir))[0]


def read_sidecar_hashed(folder: Path) -> tuple[dict[str, Any], str]:
    """The sidecar and the sha256 of the very bytes it was parsed from (read once: a file
    rewritten between hashing and parsing must not pass)."""
    try:
        raw = (folder / SIDECAR).read_bytes()
        data: dict[str, Any] = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{folder.name}: sidecar {SIDECAR} unreadable ({exc})") from None
    return data, hashlib.sha256(raw).hexdigest()


def read_training_rows(folder: Path, sidecar: Mapping[str, Any]) -> np.ndarray | None:
    """The digests of a version's training rows, checked against the sha256 its sidecar
    records; None for a version registered before they were kept.

    Raises:
        RegistryError: the file is missing, altered, or not the array it should be.
    """
    record = sidecar.get("training_rows")
    if not isinstance(record, Mapping):
        return None
    path = folder / TRAINING_ROWS  # never a path the sidecar names: only this file
    if not path.is_file():
        raise RegistryError(f"{folder.name}: {TRAINING_ROWS} is missing")
    if sha256_file(path) != record.get("sha256"):
        raise RegistryError(
            f"{folder.name}: {TRAINING_ROWS} does not match the sha256 its sidecar records;"
            " it was altered after registration"
        )
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{folder.name}: {TRAINING_ROWS} unreadable ({exc})") from None
    return np.asarray(rows, dtype=np.uint64)


@dataclass(frozen=True, slots=True)
class VerifiedFiles:
    """A version's files, checked against the registry row but not yet deserialised."""

    folder: Path
    sidecar: dict[str, Any]
    artifact: Path
    sha256: str
    form: Any


def verify_model(
    path_or_version: str | Path, expected: str | Registered, *, registry_dir: Path | None = None
) -> VerifiedFiles:
    """Every check :func:`load_model` makes before it reads the artifact: the sidecar's and
    the artifact's hashes against the registry row, and the library and format versions.

    Cheap (two file hashes, no deserialisation), so monitoring can ask hourly whether the
    champion could be served at all: a champion that fails here is one serving refuses
    (503), which no other rule would notice.

    Raises:
        RegistryError: no such version, or an unreadable sidecar.
        ArtifactIntegrityError: the artifact's sha256 differs from the expected one.
        SidecarIntegrityError: the sidecar differs from the registered one.
        IncompatibleArtifactError: saved with another scikit-learn or format version.
    """
    folder = resolve(path_or_version, registry_dir)
    sidecar, seen = read_sidecar_hashed(folder)
    expected_sha256 = expected if isinstance(expected, str) else expected.sha256
    if isinstance(expected, Registered):
        if expected.sidecar_sha256 is not None and seen != expected.sidecar_sha256:
            raise SidecarIntegrityError(
                f"{folder.name}: {SIDECAR} sha256 {seen[:12]}… does not match the"
                f" registered {expected.sidecar_sha256[:12]}…; the threshold, task and"
                " feature list it holds were altered after registration. Restore it or"
                " retrain; it will not be loaded"
            )
        check_sidecar(folder.name, sidecar, task=expected.task, threshold=expected.threshold)
    artifact = folder / str(sidecar.get("artifact", ARTIFACT))
    if not artifact.is_file():
        raise RegistryError(f"{folder.name}: artifact {artifact.name} is missing")
    actual = sha256_file(artifact)
    if actual != expected_sha256 or sidecar.get("sha256") != expected_sha256:
        raise ArtifactIntegrityError(
            f"{folder.name}: artifact sha256 {actual[:12]}… does not match the registered"
            f" {expected_sha256[:12]}…; it was altered or corrupted. Retrain or restore it;"
            " it will not be loaded"
        )
    saved = sidecar.get("versions", {}).get("sklearn")
    form = sidecar.get("format")
    if saved != sklearn.__version__ or form not in (FORMAT, LEGACY_FORMAT):
        raise IncompatibleArtifactError(
            f"{folder.name}: saved with scikit-learn {saved} (format {form}),"
            f" this is scikit-learn {sklearn.__version__}; retrain the model with this version"
        )
    return VerifiedFiles(folder, sidecar, artifact, actual, form)


def load_model(
    path_or_version: str | Path, expected: str | Registered, *, registry_dir: Path | None = None
) -> LoadedModel:
    """Load a registered artifact after verifying its hashes and library versions
    (:func:`verify_model`).

    ``expected`` is the registry row (:class:`Registered`: artifact and sidecar hashes,
    task, threshold), or only the artifact's sha256 where there is no row (a version
    directory evaluated offline, checked against its own sidecar).

    Raises:
        RegistryError: no such version, or an unreadable sidecar.
        ArtifactIntegrityError: the artifact's sha256 differs from the expected one.
        SidecarIntegrityError: the sidecar differs from the registered one.
        IncompatibleArtifactError: saved with another scikit-learn or format version.
    """
    files = verify_model(path_or_version, expected, registry_dir=registry_dir)
    name, artifact, sidecar = files.folder.name, files.artifact, files.sidecar
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        try:
            pipeline = (
                _read_skops(name, artifact) if files.form == FORMAT else joblib.load(artifact)
            )
        except InconsistentVersionWarning as exc:
            raise IncompatibleArtifactError(f"{name}: {exc}") from None
    return LoadedModel(
        version=str(sidecar["version"]),
        task=str(sidecar["task"]),
        threshold=float(sidecar["threshold"]),
        feature_names=list(sidecar["feature_names"]),
        categorical=list(sidecar.get("categorical", [])),
        pipeline=pipeline,
        sidecar=sidecar,
        path=artifact,
        sha256=files.sha256,
    )
