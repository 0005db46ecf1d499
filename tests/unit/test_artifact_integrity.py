"""Model artifacts load only when their bytes match the registered sha256, and only as
the types vitalcast's models are made of.

The hash check comes first: a swapped artifact carrying a payload is refused without the
payload ever running. Behind it, the artifact is a skops file, which builds only trusted
types: one whose writer also rewrote the registered hash is still refused before any of
its objects is built. Versions saved before (joblib pickles) still load behind the hash.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from vitalcast.modeling.registry import (
    LEGACY_FORMAT,
    ArtifactIntegrityError,
    RegistryError,
    UntrustedArtifactError,
    load_model,
    save_model,
    sha256_file,
)


def _saved(tmp_path: Path) -> tuple[Path, str]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = (X[:, 0] > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    _, artifact, sha, _ = save_model(
        tmp_path / "registry",
        model,
        task="test_task",
        feature_names=["a", "b"],
        categorical=[],
        threshold=0.5,
        metrics={},
        fingerprint="f",
        reference={},
    )
    return artifact, sha


def test_untouched_artifact_loads(tmp_path: Path) -> None:
    artifact, sha = _saved(tmp_path)
    loaded = load_model(artifact.parent, sha)
    assert loaded.sha256 == sha


def test_flipped_byte_is_refused(tmp_path: Path) -> None:
    artifact, sha = _saved(tmp_path)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="altered or corrupted"):
        load_model(artifact.parent, sha)


class _Payload:
    """Unpickling this writes a marker file: what an attacker's artifact would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (self.marker.write_text, ("pwned",))


def test_swapped_artifact_never_runs(tmp_path: Path) -> None:
    artifact, sha = _saved(tmp_path)
    marker = tmp_path / "marker"
    joblib.dump(_Payload(marker), artifact)
    control = tmp_path / "control.joblib"
    joblib.dump(_Payload(marker), control)
    joblib.load(control)  # the payload is real: loading it unchecked runs it
    assert marker.read_text() == "pwned"
    marker.unlink()
    with pytest.raises(ArtifactIntegrityError):
        load_model(artifact.parent, sha)
    assert not marker.exists()
    # The sidecar's own hash is checked too: rewriting it to the new bytes does not help
    # when the caller passes the registry row's hash.
    with pytest.raises(ArtifactIntegrityError):
        load_model(artifact.parent, "0" * 64)
    assert not marker.exists()


class _Probe:
    """Building this from a file writes a marker: code an attacker's class would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __setstate__(self, state: dict[str, str]) -> None:
        Path(state["marker"]).write_text("ran")
        self.__dict__.update(state)


def _rehash(artifact: Path) -> str:
    """Rewrite the sidecar's hash to the artifact's bytes, as a writer of both would."""
    sidecar_path = artifact.parent / "model.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["sha256"] = sha256_file(artifact)
    sidecar_path.write_text(json.dumps(sidecar))
    return str(sidecar["sha256"])


def test_foreign_types_are_refused_even_with_a_matching_hash(tmp_path: Path) -> None:
    artifact, _ = _saved(tmp_path)
    marker = tmp_path / "marker"
    control = tmp_path / "control.skops"
    sio.dump(_Probe(marker), control)
    sio.load(control, trusted=sio.get_untrusted_types(file=control))
    assert marker.read_text() == "ran"  # the probe is real: trusting it runs its code
    marker.unlink()
    sio.dump(_Probe(marker), artifact)
    sha = _rehash(artifact)  # the hash check passes: it is the second lock that holds
    with pytest.raises(UntrustedArtifactError, match=r"_Probe\); it will not be loaded"):
        load_model(artifact.parent, sha)
    assert not marker.exists()


def test_a_model_that_could_not_be_loaded_is_never_saved(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    with pytest.raises(RegistryError, match="_Probe"):
        save_model(
            registry,
            _Probe(tmp_path / "marker"),
            task="test_task",
            feature_names=["a"],
            categorical=[],
            threshold=0.5,
            metrics={},
            fingerprint="f",
            reference={},
        )
    assert not registry.exists()  # checked before anything is written: no version, no staging


def test_the_same_model_saves_to_the_same_bytes(tmp_path: Path) -> None:
    first, sha = _saved(tmp_path / "one")
    time.sleep(1.1)  # zip entries would otherwise carry the second they were written
    _, again = _saved(tmp_path / "two")
    assert first.name == "model.skops"
    assert sha == again


def test_versions_saved_as_joblib_still_load_behind_the_hash(tmp_path: Path) -> None:
    artifact, _ = _saved(tmp_path)
    model = sio.load(artifact, trusted=sio.get_untrusted_types(file=artifact))
    legacy = artifact.parent / "model.joblib"
    joblib.dump(model, legacy)
    artifact.unlink()
    sidecar_path = artifact.parent / "model.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar |= {"format": LEGACY_FORMAT, "artifact": legacy.name, "sha256": sha256_file(legacy)}
    sidecar_path.write_text(json.dumps(sidecar))
    loaded = load_model(artifact.parent, sidecar["sha256"])
    assert loaded.pipeline.predict_proba(np.array([[1.0, 0.0]]))[0, 1] > 0.5
