"""Signed tokens for links in emails (confirm, unsubscribe): nothing to store, nothing to guess."""

from __future__ import annotations

from functools import lru_cache

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

CONFIRM_MAX_AGE = 7 * 86400


class TokenError(ValueError):
    def __init__(self, expired: bool) -> None:
        super().__init__("expired" if expired else "invalid")
        self.expired = expired


@lru_cache(maxsize=16)
def _serializer(secret_key: str, purpose: str) -> URLSafeTimedSerializer:
    # Built once per key and purpose (it holds no per-token state): every email's unsubscribe link needs one.
    return URLSafeTimedSerializer(secret_key, salt=f"closer.{purpose}")


def make_token(secret_key: str, purpose: str, partner_id: int) -> str:
    return _serializer(secret_key, purpose).dumps(partner_id)


def read_token(secret_key: str, purpose: str, token: str, max_age: int | None = None) -> int:
    try:
        value = _serializer(secret_key, purpose).loads(token, max_age=max_age)
    except SignatureExpired as exc:
        raise TokenError(expired=True) from exc
    except BadSignature as exc:
        raise TokenError(expired=False) from exc
    if not isinstance(value, int):
        raise TokenError(expired=False)
    return value
