"""Each worker's share of a rate limit without Redis: the workers' sum never exceeds it."""

from __future__ import annotations

from pathlib import Path

import pytest
from limits import parse_many

from vitalcast.config import load_settings
from vitalcast.errors import ConfigError
from vitalcast.security.rate_limits import (
    UnsplittableLimitError,
    effective_limits,
    worker_share,
)


@pytest.mark.parametrize(
    ("limit", "workers", "share"),
    [
        ("10/minute", 1, "10 per 1 minute"),
        ("10/minute", 2, "5 per 1 minute"),
        ("10/minute", 3, "3 per 1 minute"),  # rounded down: 9 in all, ceil would allow 12
        ("3000/minute", 4, "750 per 1 minute"),
        ("10/minute;100 per 2 hours", 4, "2 per 1 minute;25 per 2 hour"),
        ("7/second", 7, "1 per 1 second"),
    ],
)
def test_share(limit: str, workers: int, share: str) -> None:
    assert worker_share(limit, workers) == share


@pytest.mark.parametrize("workers", range(1, 17))
@pytest.mark.parametrize("amount", [1, 2, 5, 10, 17, 3000, 6000])
def test_the_shares_never_add_up_to_more_than_the_limit(amount: int, workers: int) -> None:
    if amount < workers:
        with pytest.raises(UnsplittableLimitError):
            worker_share(f"{amount}/minute", workers)
        return
    (item,) = parse_many(worker_share(f"{amount}/minute", workers))
    assert 1 <= item.amount * workers <= amount
    assert item.amount * workers > amount - workers  # no more than needed is given up


def test_no_limit_at_all_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="'lots' is no rate limit"):
        worker_share("lots", 2)


def test_effective_limits_split_only_without_redis(tmp_path: Path) -> None:
    base = {"env": "test", "data_dir": tmp_path, "rate_limit_login": "10/minute"}
    alone = effective_limits(load_settings(**base), 2)
    assert alone == {
        "VITALCAST_RATE_LIMIT_PER_CALLER": "1500 per 1 minute",
        "VITALCAST_RATE_LIMIT_PER_ADDRESS": "3000 per 1 minute",
        "VITALCAST_RATE_LIMIT_LOGIN": "5 per 1 minute",
    }
    shared = effective_limits(load_settings(**base, redis_url="redis://r:6379/0"), 2)
    assert shared["VITALCAST_RATE_LIMIT_LOGIN"] == "10/minute"
    single = effective_limits(load_settings(**base), 1)
    assert single["VITALCAST_RATE_LIMIT_LOGIN"] == "10 per 1 minute"


def test_a_limit_too_small_to_share_names_the_setting_and_the_fix(tmp_path: Path) -> None:
    settings = load_settings(env="test", data_dir=tmp_path, rate_limit_login="10/minute")
    with pytest.raises(ConfigError) as info:
        effective_limits(settings, 16)
    message = str(info.value)
    assert message.startswith("VITALCAST_RATE_LIMIT_LOGIN: 10 per 1 minute cannot be shared")
    assert "VITALCAST_REDIS_URL" in message
    bad = load_settings(env="test", data_dir=tmp_path, rate_limit_per_caller="lots")
    with pytest.raises(ConfigError, match="VITALCAST_RATE_LIMIT_PER_CALLER: 'lots' is no"):
        effective_limits(bad, 1)
