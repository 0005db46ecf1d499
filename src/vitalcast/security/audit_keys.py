"""The audit trail's HMAC keyring: which secret keys the chain and its anchors.

A plain hash chain proves nothing against someone who can write to the database: they
can rewrite rows and recompute every hash. Keyed with HMAC-SHA-256, the chain can only
be extended or rewritten by whoever holds the key, which lives in the environment
(``VITALCAST_AUDIT_KEY``), never in the database or its backups.

The variable follows ``VITALCAST_FIELD_KEY``'s convention: ``keyid:base64key`` entries,
comma-separated, the first signing new events and the others kept only to verify rows
written under them (rotation). Each row stores the id of its key. A key given without an
id gets one derived from the key itself (``fp`` + 10 hex digits of a domain-separated
SHA-256), so that a replaced key can never be mistaken for the one it replaced.

The keyring is installed once per process by its entry point (``create_app``, the CLI's
settings loader), like logging, because audit events are written from every layer
through :func:`vitalcast.security.audit.record`, which receives only a session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vitalcast.errors import ConfigError

if TYPE_CHECKING:
    from vitalcast.config import Settings

MIN_KEY_BYTES = 32
KEY_ID_MAX = 16
_KEY_ID = re.compile(rf"^[A-Za-z0-9_.-]{{1,{KEY_ID_MAX}}}$")
_VAR = "VITALCAST_AUDIT_KEY"


class UnknownAuditKey(LookupError):
    """A row or anchor names a key id that the configured keyring does not hold."""


@dataclass(frozen=True)
class AuditKeyring:
    """HMAC-SHA-256 keys by id; ``current`` signs, every key verifies."""

    keys: Mapping[str, bytes] = field(repr=False)
    current: str

    @classmethod
    def from_string(cls, value: str) -> AuditKeyring:
        """Parse ``[keyid:]base64[,keyid:base64...]``; the first entry is current.

        Raises:
            ConfigError: an entry is malformed, too short, or an id repeats (the message
                names the variable, never the key).
        """
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for entry in (e.strip() for e in value.split(",")):
            if not entry:
                continue
            key_id, sep, material = entry.partition(":")
            if not sep:
                key_id, material = "", entry
            raw = _b64(material)
            if len(raw) < MIN_KEY_BYTES:
                raise ConfigError(f"{_VAR}: each key must be at least {MIN_KEY_BYTES} bytes")
            key_id = key_id or fingerprint_id(raw)
            if not _KEY_ID.match(key_id):
                raise ConfigError(
                    f"{_VAR}: key ids are 1-{KEY_ID_MAX} letters, digits, '.', '_' or '-'"
                )
            if key_id in keys:
                raise ConfigError(f"{_VAR}: key id {key_id!r} is given twice")
            keys[key_id] = raw
            order.append(key_id)
        if not order:
            raise ConfigError(f"{_VAR}: no key given")
        return cls(keys=keys, current=order[0])

    def mac(self, key_id: str, message: bytes) -> str:
        """Hex HMAC-SHA-256 of ``message`` under the key ``key_id``.

        Raises:
            UnknownAuditKey: the keyring has no such key.
        """
        key = self.keys.get(key_id)
        if key is None:
            raise UnknownAuditKey(key_id)
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def verify(self, key_id: str, message: bytes, expected: str) -> bool:
        """Whether ``expected`` is the MAC of ``message`` under ``key_id`` (constant time).

        Raises:
            UnknownAuditKey: the keyring has no such key.
        """
        # As bytes: an edited row may hold any text, and compare_digest refuses non-ASCII str.
        return hmac.compare_digest(self.mac(key_id, message).encode(), str(expected).encode())


def fingerprint_id(key: bytes) -> str:
    """A stable id for a key given without one; reveals nothing usable about the key."""
    return "fp" + hashlib.sha256(b"vitalcast-audit-key-id\x00" + key).hexdigest()[:10]


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{_VAR}: not valid base64") from None


def keyring_from_settings(settings: Settings) -> AuditKeyring:
    """The audit keyring of these settings.

    Raises:
        ConfigError: no key is set (production settings guarantee one; other modes
            generate one into the data directory) or it is malformed.
    """
    if settings.audit_key is None:
        raise ConfigError(f"{_VAR} must be set")
    return AuditKeyring.from_string(settings.audit_key.get_secret_value())


_installed: AuditKeyring | None = None


def install(keyring: AuditKeyring) -> None:
    """Make ``keyring`` the one :func:`vitalcast.security.audit.record` signs with."""
    global _installed
    _installed = keyring


def install_from_settings(settings: Settings) -> AuditKeyring:
    """Install (and return) the keyring of ``settings``: what each entry point calls."""
    keyring = keyring_from_settings(settings)
    install(keyring)
    return keyring


def installed() -> AuditKeyring:
    """The process's keyring.

    Raises:
        ConfigError: no entry point installed one. Audit events are never written
            unkeyed: a row nobody could have forged is the point of the trail.
    """
    if _installed is None:
        raise ConfigError(
            f"the audit trail has no key: this process did not load settings ({_VAR})"
        )
    return _installed
