"""The Prometheus multiprocess directory that `vitalcast serve` recreates at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitalcast.errors import ConfigError
from vitalcast.monitoring.multiproc import MULTIPROC_ENV, prepare_multiprocess_dir


def test_an_unwritable_metrics_directory_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a read-only root filesystem (the Kubernetes pods) the directory cannot be made;
    that used to end `vitalcast serve` as an "internal error ... this is a bug" instead of
    one line naming the setting to change."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = blocker / "metrics"  # cannot be created, even by root
    monkeypatch.setenv(MULTIPROC_ENV, str(target))
    with pytest.raises(ConfigError, match=r"^VITALCAST_METRICS_DIR: cannot recreate "):
        prepare_multiprocess_dir(target)


def test_the_directory_is_emptied_and_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "metrics"
    target.mkdir()
    (target / "counter_1.db").write_text("stale")
    monkeypatch.setenv(MULTIPROC_ENV, str(target))
    assert prepare_multiprocess_dir(target) == target
    assert list(target.iterdir()) == []
