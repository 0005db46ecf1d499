"""Model artifacts load only when their bytes match the registered sha256.

joblib unpickles, which runs code, so the hash check must come first: a swapped artifact
carrying a payload is refused without the payload ever running.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from vitalcast.modeling.registry import ArtifactIntegrityError, load_model, save_model


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
