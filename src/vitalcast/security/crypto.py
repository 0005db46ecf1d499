"""Field encryption of direct identifiers (AES-256-GCM) and keyed hashes for lookup.

Each ciphertext is stored beside the id of the key that made it, so keys can rotate:
``VITALCAST_FIELD_KEY`` holds ``keyid:base64key`` entries, comma-separated, the first
being the current key; older keys stay only to decrypt until ``vitalcast keys rotate``
has re-encrypted every row. MRN search goes through an HMAC-SHA-256 of the normalised
MRN, never through plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vitalcast.errors import ConfigError

if TYPE_CHECKING:
    from vitalcast.config import Settings

_NONCE_BYTES = 12
# The id of a key given without one (rows store it; the column holds 32 characters).
UNNAMED_KEY_ID = "k0"
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_KEY_ID = KEY_ID_PATTERN


@dataclass(frozen=True)
class FieldCipher:
    """Encrypts and decrypts identifier payloads under a keyring."""

    keys: dict[str, bytes]
    current: str
    hmac_key: bytes

    @classmethod
    def from_strings(cls, field_key: str, hmac_key: str) -> FieldCipher:
        """Parse ``keyid:base64[,keyid:base64...]`` and a base64 HMAC key.

        A key given alone may be unnamed: its id is ``k0``, which every row it encrypted
        names. In a ring of several keys each must be named. An id by position would
        change meaning when a new key is put first: ``k1:NEW,OLD`` named the old key
        ``k1`` too, so it silently replaced the new one, and rows of ``k0`` no longer
        decrypted.

        Raises:
            ConfigError: a key is malformed, has the wrong length, is unnamed in a ring
                of several, or an id is invalid or repeats (the message names the
                variable and the entry's position, never the key).
        """
        keys: dict[str, bytes] = {}
        order: list[str] = []
        entries = [e for e in (e.strip() for e in field_key.split(",")) if e]
        if not entries:
            raise ConfigError("VITALCAST_FIELD_KEY: no key given")
        for n, entry in enumerate(entries, start=1):
            key_id, sep, material = entry.partition(":")
            if not sep:
                if len(entries) > 1:
                    raise ConfigError(
                        f"VITALCAST_FIELD_KEY: key {n} of {len(entries)} has no id; name"
                        " every key of a ring (keyid:base64); a key used alone unnamed"
                        f" is {UNNAMED_KEY_ID}"
                    )
                key_id, material = UNNAMED_KEY_ID, entry
            if not _KEY_ID.match(key_id):
                raise ConfigError(
                    f"VITALCAST_FIELD_KEY: key {n}: ids are 1-32 letters, digits, '.', '_' or '-'"
                )
            if key_id in keys:
                raise ConfigError(f"VITALCAST_FIELD_KEY: key id {key_id!r} is given twice")
            raw = _b64(material, "VITALCAST_FIELD_KEY")
            if len(raw) != 32:
                raise ConfigError("VITALCAST_FIELD_KEY: each key must be 32 bytes (AES-256)")
            keys[key_id] = raw
            order.append(key_id)
        mac = _b64(hmac_key, "VITALCAST_HMAC_KEY")
        if len(mac) < 16:
            raise ConfigError("VITALCAST_HMAC_KEY: key must be at least 16 bytes")
        return cls(keys=keys, current=order[0], hmac_key=mac)

    def encrypt(self, payload: dict[str, str], *, context: str) -> tuple[bytes, str]:
        """Encrypt a small JSON object; ``context`` is bound as associated data."""
        nonce = os.urandom(_NONCE_BYTES)
        data = json.dumps(payload, sort_keys=True).encode()
        blob = AESGCM(self.keys[self.current]).encrypt(nonce, data, context.encode())
        return nonce + blob, self.current

    def decrypt(self, blob: bytes, key_id: str, *, context: str) -> dict[str, str]:
        """Decrypt a payload made by :meth:`encrypt` under the same context.

        Raises:
            ValueError: unknown key id, or the ciphertext was altered.
        """
        key = self.keys.get(key_id)
        if key is None:
            raise ValueError(f"unknown field-encryption key id {key_id!r}")
        try:
            data = AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], context.encode())
        except InvalidTag as exc:
            raise ValueError("identifier ciphertext failed authentication") from exc
        result: dict[str, str] = json.loads(data)
        return result

    def mrn_hash(self, mrn: str) -> str:
        """Keyed hash of a normalised MRN, for exact-match search."""
        norm = mrn.strip().upper()
        return hmac.new(self.hmac_key, norm.encode(), hashlib.sha256).hexdigest()

    def pseudonym(self, namespace: str, value: str) -> str:
        """Keyed hash of an outside identifier (e.g. an EHR's Patient id) for the audit trail.

        Why: an identifier another system assigns may itself identify the person (some
        EHRs use the MRN as the FHIR id), so the audit log keeps this instead; events about
        the same outside patient share it, and with the HMAC key an auditor can recompute
        it for a given id. ``namespace`` keeps it apart from MRN hashes.
        """
        message = f"{namespace}|{value}".encode()
        return hmac.new(self.hmac_key, message, hashlib.sha256).hexdigest()[:32]


def _b64(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{name}: not valid base64") from None


def cipher_from_settings(settings: Settings) -> FieldCipher:
    """The field cipher of these settings.

    Raises:
        ConfigError: a key is missing (production settings guarantee they are present).
    """
    if settings.field_key is None or settings.hmac_key is None:
        raise ConfigError("VITALCAST_FIELD_KEY and VITALCAST_HMAC_KEY must both be set")
    return FieldCipher.from_strings(
        settings.field_key.get_secret_value(), settings.hmac_key.get_secret_value()
    )
