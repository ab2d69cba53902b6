"""Signed tokens for links in emails (confirm, unsubscribe): nothing to store, nothing to guess.

A link names its partner by an opaque value, never by the row id: the id sealed with AES-SIV under a
key derived from SECRET_KEY and the token's purpose (deterministic, so a partner's link is stable, and
authenticated, so a value nobody sealed is refused before any lookup). itsdangerous then signs and
timestamps that value, as before. Links sent before this change carry the bare id; they are still
accepted, with the same signature and lifetime checks (7 days for confirm links; unsubscribe links,
which must keep working, carry no expiry), so nobody's pending link breaks.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from service.crypto import derived_key

CONFIRM_MAX_AGE = 7 * 86400
_ID_BYTES = 8


class TokenError(ValueError):
    def __init__(self, expired: bool) -> None:
        super().__init__("expired" if expired else "invalid")
        self.expired = expired


@lru_cache(maxsize=16)
def _serializer(secret_key: str, purpose: str) -> URLSafeTimedSerializer:
    # Built once per key and purpose (it holds no per-token state): every email's unsubscribe link needs one.
    return URLSafeTimedSerializer(secret_key, salt=f"closer.{purpose}")


@lru_cache(maxsize=16)
def _sealer(secret_key: str, purpose: str) -> AESSIV:
    return AESSIV(derived_key(secret_key, f"closer.link-id.{purpose}", digest="sha512"))  # 64 bytes: AES-256-SIV


def _seal(secret_key: str, purpose: str, partner_id: int) -> str:
    return _sealer(secret_key, purpose).encrypt(partner_id.to_bytes(_ID_BYTES, "big"), None).hex()


def _unseal(secret_key: str, purpose: str, sealed: str) -> int:
    try:
        plain = _sealer(secret_key, purpose).decrypt(bytes.fromhex(sealed), None)
    except (ValueError, InvalidTag) as exc:
        raise TokenError(expired=False) from exc
    if len(plain) != _ID_BYTES:
        raise TokenError(expired=False)
    return int.from_bytes(plain, "big")


def make_token(secret_key: str, purpose: str, partner_id: int) -> str:
    return _serializer(secret_key, purpose).dumps(_seal(secret_key, purpose, partner_id))


def read_token(secret_key: str, purpose: str, token: str, max_age: int | None = None) -> int:
    try:
        value = _serializer(secret_key, purpose).loads(token, max_age=max_age)
    except SignatureExpired as exc:
        raise TokenError(expired=True) from exc
    except BadSignature as exc:
        raise TokenError(expired=False) from exc
    if isinstance(value, str):
        return _unseal(secret_key, purpose, value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # a link sent before links became opaque: signed by us, still within its lifetime
    raise TokenError(expired=False)
