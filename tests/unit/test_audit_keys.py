"""Parsing of VITALCAST_AUDIT_KEY: ids, rotation order, and errors that never echo a key."""

from __future__ import annotations

import base64

import pytest

from vitalcast.errors import ConfigError
from vitalcast.security.audit_keys import AuditKeyring, UnknownAuditKey, fingerprint_id

KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.b64encode(b"b" * 48).decode()


def test_first_entry_signs_and_every_entry_verifies() -> None:
    ring = AuditKeyring.from_string(f"new:{KEY_B}, old:{KEY_A}")
    assert (ring.current, sorted(ring.keys)) == ("new", ["new", "old"])
    tag = ring.mac("old", b"m")
    assert ring.verify("old", b"m", tag)
    assert not ring.verify("new", b"m", tag)
    with pytest.raises(UnknownAuditKey):
        ring.mac("gone", b"m")


def test_a_key_without_an_id_is_named_by_its_fingerprint() -> None:
    ring = AuditKeyring.from_string(KEY_A)
    assert ring.current == fingerprint_id(b"a" * 32)
    assert ring.current != AuditKeyring.from_string(KEY_B).current


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no key given"),
        ("k1:not base64!", "not valid base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "at least 32 bytes"),
        (f"k1:{KEY_A},k1:{KEY_B}", "given twice"),
        (f"bad id!:{KEY_A}", "key ids are"),
    ],
)
def test_malformed_keys_are_refused_without_echoing_them(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        AuditKeyring.from_string(value)
    assert str(caught.value).startswith("VITALCAST_AUDIT_KEY: ")
    assert KEY_A not in str(caught.value)


def test_the_key_never_appears_in_repr() -> None:
    assert "YWFh" not in repr(AuditKeyring.from_string(f"k1:{KEY_A}"))
