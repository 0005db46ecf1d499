"""Production refuses default passwords and weak secrets; the JSON depth scanner is exact."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vitalcast.config import load_settings
from vitalcast.errors import ConfigError
from vitalcast.security.http import json_depth

GOOD = {
    "env": "production",
    "secret_key": "7f3c9a1e5b2d8f4a6c0e9b1d3f5a7c9e",
    "field_key": "k1:" + "A" * 43 + "=",
    "hmac_key": "B" * 44,
    "database_url": "postgresql://vitalcast:Zq8w-Lk2p-Rt5x@db/vitalcast",
}


def test_good_production_settings_load() -> None:
    assert load_settings(**GOOD).env == "production"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"database_url": "postgresql://postgres:postgres@db/v"}, "VITALCAST_DATABASE_URL uses a"),
        ({"database_url": "postgresql://app:ChangeMe@db/v"}, "VITALCAST_DATABASE_URL uses a"),
        ({"redis_url": "redis://:password@cache:6379/0"}, "VITALCAST_REDIS_URL uses a default"),
        ({"mqtt_url": "mqtt://u:vitalcast@broker:1883"}, "VITALCAST_MQTT_URL uses a default"),
        ({"secret_key": "changeme"}, "VITALCAST_SECRET_KEY must be a random value"),
        ({"secret_key": "short-but-not-default"}, "at least 32 characters"),
        ({"oidc_issuer": "http://idp.example.org"}, "VITALCAST_OIDC_ISSUER must be an https"),
        ({"oidc_issuer": "https://idp.example.org"}, "VITALCAST_OIDC_CLIENT_SECRET are required"),
    ],
)
def test_production_refuses_defaults(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**(GOOD | change))


def test_development_tolerates_local_defaults(tmp_path: object) -> None:
    settings = load_settings(
        env="development", data_dir=tmp_path, database_url="postgresql://postgres:postgres@h/d"
    )
    assert settings.env == "development"


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"1", 0),
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'{"a": "[[[[{{{{"}', 1),
        (b'["\\"[[[", ["x"]]', 2),
        (b'[{"k": "\\\\"}, [[]]]', 3),
    ],
)
def test_json_depth_ignores_brackets_in_strings(text: bytes, depth: int) -> None:
    assert json_depth(text, stop_after=100) == depth


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab'),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), children, max_size=3)
    ),
    max_leaves=25,
)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(json_values)
def test_json_depth_matches_the_parsed_structure(value: object) -> None:
    assert json_depth(json.dumps(value).encode(), stop_after=1000) == _depth(value)
