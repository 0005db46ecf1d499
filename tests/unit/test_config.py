"""Settings: every one documented, bad values stop start-up with one line naming the variable."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from vitalcast.config import Settings, load_settings, settings_table
from vitalcast.errors import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    missing = [n for n in Settings.model_fields if f"`VITALCAST_{n.upper()}`" not in text]
    assert missing == []
    # The table is exactly what the code says (defaults and descriptions included).
    assert settings_table() in text, "regenerate the table: python -m vitalcast.config"


def test_documented_settings_exist() -> None:
    import re

    text = DOC.read_text().split("## Test-suite variables")[0]
    documented = set(re.findall(r"`VITALCAST_([A-Z_]+)`", text))
    assert documented <= {n.upper() for n in Settings.model_fields}


def test_unknown_database_scheme_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^VITALCAST_DATABASE_URL: unsupported scheme 'mysql'"):
        load_settings(data_dir=tmp_path, database_url="mysql://x@y/z")


@pytest.mark.parametrize(
    "missing", ["secret_key", "field_key", "hmac_key", "audit_key", "database_url"]
)
def test_production_requires_each_secret(missing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VITALCAST_AUDIT_KEY")  # the test session's key, from conftest
    values: dict[str, object] = {
        "env": "production",
        "secret_key": "s" * 32,
        "field_key": "k1:" + "A" * 43 + "=",
        "hmac_key": "B" * 44,
        "audit_key": "a1:" + "C" * 43 + "=",
        "database_url": "postgresql://u@h/d",
    }
    values[missing] = None
    with pytest.raises(ConfigError, match=f"VITALCAST_{missing.upper()} is required in production"):
        load_settings(**values)


def test_production_refuses_debug() -> None:
    with pytest.raises(ConfigError, match="VITALCAST_DEBUG must be false in production"):
        load_settings(
            env="production",
            debug=True,
            secret_key="s",
            field_key="k",
            hmac_key="h",
            database_url="postgresql://u@h/d",
        )


def test_demo_keys_are_generated_once_with_private_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VITALCAST_AUDIT_KEY")  # the test session's key, from conftest
    first = load_settings(env="demo", data_dir=tmp_path)
    second = load_settings(env="demo", data_dir=tmp_path)
    assert first.field_key is not None
    assert second.field_key is not None
    assert first.field_key.get_secret_value() == second.field_key.get_secret_value()
    assert first.audit_key is not None
    assert second.audit_key is not None
    assert first.audit_key.get_secret_value() == second.audit_key.get_secret_value()
    for name in ("secret_key", "field_key", "hmac_key", "audit_key"):
        mode = stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode)
        assert mode == 0o600


def test_a_blank_stay_unit_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^VITALCAST_STAY_UNITS: .*unit names are 1 to 64"):
        load_settings(data_dir=tmp_path, stay_units=["MICU", " "])


@pytest.mark.parametrize(
    ("variable", "value"),
    [("VITALCAST_CDS_TRUSTED_ISSUERS", "not json"), ("VITALCAST_CDS_FHIR_NETWORKS", "[10.0")],
)
def test_a_json_variable_that_is_not_json_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """pydantic-settings decodes these before validation; its SettingsError reached the
    CLI as "internal error ... this is a bug" instead of naming the variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"^{variable}: not valid JSON"):
        load_settings(data_dir=tmp_path)


def test_a_trusted_cds_issuer_too_long_to_remember_names_the_variable(tmp_path: Path) -> None:
    """Each accepted CDS JWT's issuer is stored (replay protection, at most 2048
    characters): a longer one would fail at the first request, so start-up refuses it."""
    issuers = {"https://ehr.example.org/" + "x" * 2048: "jwks.json"}
    with pytest.raises(
        ConfigError, match=r"^VITALCAST_CDS_TRUSTED_ISSUERS: .*issuers are 1 to 2048 characters"
    ):
        load_settings(data_dir=tmp_path, cds_trusted_issuers=issuers)
    assert load_settings(data_dir=tmp_path, cds_trusted_issuers={"https://ehr.example.org": "j"})
