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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vitalcast.errors import ConfigError

if TYPE_CHECKING:
    from vitalcast.config import Settings

_NONCE_BYTES = 12


@dataclass(frozen=True)
class FieldCipher:
    """Encrypts and decrypts identifier payloads under a keyring."""

    keys: dict[str, bytes]
    current: str
    hmac_key: bytes

    @classmethod
    def from_strings(cls, field_key: str, hmac_key: str) -> FieldCipher:
        """Parse ``keyid:base64[,keyid:base64...]`` and a base64 HMAC key.

        Raises:
            ConfigError: a key is malformed or has the wrong length.
        """
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for n, entry in enumerate(field_key.split(",")):
            entry = entry.strip()
            key_id, sep, material = entry.partition(":")
            if not sep:
                key_id, material = f"k{n}", entry
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
