"""The error-rate rule's scrape of this service's /metrics, when it fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitalcast.config import load_settings
from vitalcast.monitoring import jobs


def test_a_failed_scrape_names_the_url_without_its_credentials(tmp_path: Path) -> None:
    """The reason is stored in the alert, shown by `monitor alerts` and POSTed to the
    alert webhook: a password or token in VITALCAST_METRICS_URL must not travel with it."""
    settings = load_settings(
        env="test",
        data_dir=tmp_path / "var",
        metrics_url="http://scrape:MPassw0rd@127.0.0.1:1/metrics?token=QSECRET",
    )
    extra: dict[str, Any] = {}
    assert jobs._http_counts(None, settings, "icu-mortality", extra) is None  # type: ignore[arg-type]
    error = extra["http_scrape_error"]
    assert error == "http://127.0.0.1:1/metrics: ConnectError"
    assert "MPassw0rd" not in error
    assert "QSECRET" not in error
