"""The rate limiter, backed by the app's Redis so limits hold across every web process."""

from __future__ import annotations

import hashlib
import hmac

from flask import request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from service.crypto import derived_key
from service.web.context import current_runtime

limiter = Limiter(key_func=get_remote_address, default_limits=[], strategy="moving-window")

KEY_DIGEST_CHARS = 24  # 96 bits of the HMAC
# Hex spelled in letters only, so a key name never holds a digit a log search could mistake for a number.
_LETTERS = str.maketrans("0123456789", "ghijklmnop")


def private_limit_key(kind: str, value: str) -> str:
    """The limiter's key for a value that must not be stored or logged as it is (a phone-number prefix).

    Flask-Limiter puts its key in Redis key names and logs it when a limit is breached, so the key is a
    keyed hash (HMAC-SHA256 under a key derived from SECRET_KEY, truncated): the same value always counts
    against the same limit, and neither Redis nor the logs hold any part of it.
    """
    secret = derived_key(current_runtime().settings.secret_key, "closer rate-limit keys")
    digest = hmac.new(secret, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:KEY_DIGEST_CHARS]
    return f"{kind}:{digest.translate(_LETTERS)}"


@limiter.request_filter
def _provider_webhook() -> bool:
    """Provider webhooks are never rate limited here: they are signed, and arrive from the providers'
    shared addresses, so a per-address limit would throttle every customer's texts as one client. No
    limit applies to them today; the filter spares them the limiter's lookups on every request."""
    return request.path.startswith("/webhooks/")
