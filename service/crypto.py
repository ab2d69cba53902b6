"""Encryption at rest for the couples' words, with key rotation through MultiFernet."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import LargeBinary
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


@lru_cache(maxsize=32)
def derived_key(secret_key: str, label: str, *, digest: str = "sha256") -> bytes:
    """A key of its own for one purpose (`label`), derived from SECRET_KEY as HMAC(SECRET_KEY, label): no
    purpose shares the session-signing key, and the same secret always gives the same key."""
    return hmac.new(secret_key.encode(), label.encode(), digest).digest()


class Cipher:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one Fernet key is needed")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        return self._fernet.decrypt(token).decode("utf-8")

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt under the newest key; tokens from retired keys stay readable until rotated."""
        return self._fernet.rotate(token)


_active_cipher: Cipher | None = None


def install_cipher(keys: Sequence[str]) -> Cipher:
    """Make `keys` the process-wide keys used by `EncryptedText` columns."""
    global _active_cipher
    _active_cipher = Cipher(keys)
    return _active_cipher


def active_cipher() -> Cipher:
    if _active_cipher is None:
        raise RuntimeError("no encryption key installed: create the app (or call install_cipher) first")
    return _active_cipher


class EncryptedText(TypeDecorator[str]):
    """A text column stored as a Fernet token; the plaintext never reaches the database."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        return active_cipher().encrypt(str(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return open_text(bytes(value))


def open_text(token: bytes) -> str:
    """A stored `EncryptedText` value read as text (for code that selects the column as bytes)."""
    try:
        return active_cipher().decrypt(token)
    except InvalidToken as exc:
        raise RuntimeError("stored text cannot be decrypted with DATA_ENCRYPTION_KEY") from exc


def token_digest(token: str) -> str:
    """How bearer tokens are stored: they carry 128+ random bits, so a plain SHA-256 cannot be reversed."""
    return hashlib.sha256(token.encode()).hexdigest()
