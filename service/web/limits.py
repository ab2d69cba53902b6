"""The rate limiter, backed by the app's Redis so limits hold across every web process."""

from __future__ import annotations

from flask import request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

limiter = Limiter(key_func=get_remote_address, default_limits=[], strategy="moving-window")


@limiter.request_filter
def _provider_webhook() -> bool:
    """Provider webhooks are never rate limited here: they are signed, and arrive from the providers'
    shared addresses, so a per-address limit would throttle every customer's texts as one client. No
    limit applies to them today; the filter spares them the limiter's lookups on every request."""
    return request.path.startswith("/webhooks/")
