"""Each worker's share of a rate limit when the counters cannot be shared.

With ``VITALCAST_REDIS_URL`` every gunicorn worker counts in Redis, so the configured
limit holds for the whole server as written. Without it each worker counts in its own
memory, and N workers would together allow N times the limit, the sign-in brute-force
limit included. So each worker enforces ``floor(limit / N)``: the workers' sum never
exceeds the configured limit, which stays an honest upper bound for the server. Rounding
down, not up: 10/minute on 3 workers is 3 each (9 in all); ceil would allow 12. A limit
smaller than the worker count cannot be split (a worker would allow nothing), so the
server refuses to start and says how to fix it.
"""

from __future__ import annotations

from limits import RateLimitItem, parse_many

from vitalcast.config import Settings
from vitalcast.errors import ConfigError

# Setting name -> Settings field, in the order they are reported.
LIMIT_SETTINGS = {
    "VITALCAST_RATE_LIMIT_PER_CALLER": "rate_limit_per_caller",
    "VITALCAST_RATE_LIMIT_PER_ADDRESS": "rate_limit_per_address",
    "VITALCAST_RATE_LIMIT_LOGIN": "rate_limit_login",
}


class UnsplittableLimitError(ValueError):
    """A limit smaller than the number of workers that would have to share it."""


def _notation(item: RateLimitItem, amount: int) -> str:
    return f"{amount} per {item.multiples} {item.GRANULARITY.name}"


def worker_share(limit: str, workers: int) -> str:
    """The limit one of ``workers`` processes enforces so that all together keep ``limit``.

    ``limit`` is flask-limiter notation, possibly several limits (``10/minute;100/hour``);
    each is divided. Raises UnsplittableLimitError when a limit is smaller than ``workers``,
    ValueError when it is no limit at all.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    try:
        items = parse_many(limit)
    except ValueError:
        raise ValueError(f"{limit!r} is no rate limit in flask-limiter notation") from None
    if workers == 1:
        return ";".join(_notation(i, i.amount) for i in items)
    shares = []
    for item in items:
        share = item.amount // workers
        if share < 1:
            raise UnsplittableLimitError(
                f"{_notation(item, item.amount)} cannot be shared by {workers} workers"
                " (each would allow none)"
            )
        shares.append(_notation(item, share))
    return ";".join(shares)


def effective_limits(settings: Settings, workers: int) -> dict[str, str]:
    """What each worker enforces, per limit setting (the configured value with Redis).

    Raises:
        ConfigError: a limit too small to split among ``workers`` without Redis, naming
            the setting and the ways out.
    """
    out: dict[str, str] = {}
    for name, field in LIMIT_SETTINGS.items():
        value: str = getattr(settings, field)
        if settings.redis_url:
            out[name] = value
            continue
        try:
            out[name] = worker_share(value, workers)
        except UnsplittableLimitError as exc:
            raise ConfigError(
                f"{name}: {exc}. Without VITALCAST_REDIS_URL each worker counts alone and"
                " enforces its share of every limit; set VITALCAST_REDIS_URL, raise the"
                " limit, or run fewer workers"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return out
