"""Field encryption and unit conversion: the two places where a silent error would hurt."""

from __future__ import annotations

import base64
import os

import pytest

from vitalcast.clinical.units import UnknownUnit, to_canonical
from vitalcast.errors import ConfigError
from vitalcast.security.crypto import FieldCipher


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_roundtrip_and_context_binding() -> None:
    cipher = FieldCipher.from_strings(f"a:{_key()}", _key())
    blob, key_id = cipher.encrypt({"name": "Ada Example"}, context="patient:1")
    assert b"Ada" not in blob
    assert cipher.decrypt(blob, key_id, context="patient:1") == {"name": "Ada Example"}
    with pytest.raises(ValueError, match="failed authentication"):
        cipher.decrypt(blob, key_id, context="patient:2")  # moved to another row
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ValueError, match="failed authentication"):
        cipher.decrypt(tampered, key_id, context="patient:1")


def test_old_key_still_decrypts_after_rotation() -> None:
    old, new, mac = _key(), _key(), _key()
    before = FieldCipher.from_strings(f"k1:{old}", mac)
    blob, key_id = before.encrypt({"mrn": "M1"}, context="c")
    after = FieldCipher.from_strings(f"k2:{new},k1:{old}", mac)
    assert after.current == "k2"
    assert after.decrypt(blob, key_id, context="c") == {"mrn": "M1"}
    assert after.mrn_hash(" m1 ") == before.mrn_hash("M1")


def test_bad_keys_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="VITALCAST_FIELD_KEY: each key must be 32 bytes"):
        FieldCipher.from_strings(base64.b64encode(b"short").decode(), _key())
    with pytest.raises(ConfigError, match="VITALCAST_HMAC_KEY: not valid base64"):
        FieldCipher.from_strings(_key(), "not base64!")


def test_a_key_used_alone_may_be_unnamed_and_keeps_its_id_when_a_new_key_comes_first() -> None:
    old, new, mac = _key(), _key(), _key()
    alone = FieldCipher.from_strings(old, mac)
    blob, key_id = alone.encrypt({"mrn": "M1"}, context="c")
    assert key_id == "k0"
    rotated = FieldCipher.from_strings(f"k1:{new},k0:{old}", mac)
    assert (rotated.current, rotated.decrypt(blob, key_id, context="c")) == ("k1", {"mrn": "M1"})
    assert FieldCipher.from_strings(f"{old},", mac).keys == alone.keys  # a trailing comma


@pytest.mark.parametrize(
    ("keyring", "message"),
    [
        # By position the old key was "k1" as well and silently replaced the new one.
        ("k1:{new},{old}", "key 2 of 2 has no id; name every key"),
        ("{new},{old}", "key 1 of 2 has no id"),
        ("k1:{new},k1:{old}", "key id 'k1' is given twice"),
        (":{new}", "key 1: ids are 1-32 letters"),
        ("key one:{new}", "key 1: ids are 1-32 letters"),
        (" , ", "no key given"),
    ],
)
def test_a_keyring_that_could_name_the_wrong_key_is_refused(keyring: str, message: str) -> None:
    old, new = _key(), _key()
    with pytest.raises(ConfigError, match="VITALCAST_FIELD_KEY: " + message) as info:
        FieldCipher.from_strings(keyring.format(old=old, new=new), _key())
    assert old not in str(info.value)
    assert new not in str(info.value)


@pytest.mark.parametrize(
    ("code", "value", "unit", "expected"),
    [
        ("8310-5", 98.6, "[degF]", 37.0),
        ("8310-5", 37.2, "°C", 37.2),
        ("2345-7", 5.5, "mmol/L", 99.088),
        ("2160-0", 88.42, "umol/L", 1.0),
        ("3150-0", 0.4, "1", 40.0),
        ("8867-4", 72, "bpm", 72.0),
        ("29463-7", 154, "lb", 69.853225),
    ],
)
def test_conversions(code: str, value: float, unit: str, expected: float) -> None:
    converted, _ = to_canonical(code, value, unit)
    assert converted == pytest.approx(expected, rel=1e-6)


def test_unknown_unit_is_never_guessed() -> None:
    with pytest.raises(UnknownUnit, match="unknown unit 'furlongs'"):
        to_canonical("8867-4", 72, "furlongs")
    with pytest.raises(UnknownUnit, match="cannot convert"):
        to_canonical("8867-4", 72, "mg/dL")


@pytest.mark.parametrize("key_id", ["bad/id", "k 2", "x" * 33, ""])
def test_keys_generate_refuses_an_id_the_keyring_would_refuse(key_id: str) -> None:
    """`vitalcast keys generate` printed any id; put first in VITALCAST_FIELD_KEY as the
    rotation runbook says, a bad one then stopped every process at start."""
    from click.testing import CliRunner

    from vitalcast.cli import main

    result = CliRunner().invoke(main, ["keys", "generate", key_id])
    assert result.exit_code == 2
    assert "1-32 letters, digits" in result.stderr
    assert ":" not in result.stdout


def test_keys_generate_prints_a_key_the_keyring_accepts() -> None:
    from click.testing import CliRunner

    from vitalcast.cli import main

    result = CliRunner().invoke(main, ["keys", "generate", "k2.2026-12"])
    assert result.exit_code == 0
    ring = result.stdout.strip() + ",k1:" + base64.b64encode(b"k" * 32).decode()
    cipher = FieldCipher.from_strings(ring, base64.b64encode(b"h" * 32).decode())
    assert cipher.current == "k2.2026-12"
