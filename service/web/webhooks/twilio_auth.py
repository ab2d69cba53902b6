"""The one X-Twilio-Signature check, for every Twilio webhook (inbound texts and status callbacks).

A request passes only with an Auth Token signature over PUBLIC_BASE_URL plus the path and query string
Twilio called and every POSTed field (the provider module's `request_validator`). Refused, with 403 and
nothing changed: no signature, no TWILIO_AUTH_TOKEN configured, a signature that does not match, and a
request signed under a Webhook Rule's SharedKey (X-Twilio-Webhooks-Signature-Settings), whose secret
Closer is not given. Each refusal is logged with the path, so a misconfigured webhook shows up.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from flask import abort, request

from service.providers.twilio_sms import SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER, request_validator
from service.settings import Settings
from service.web.context import current_runtime

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def signed_url(settings: Settings) -> str:
    """The URL Twilio signed: PUBLIC_BASE_URL and this path (and the query string, if Twilio sent one)."""
    url = settings.public_base_url.rstrip("/") + request.path
    query = request.query_string.decode("latin-1")
    return f"{url}?{query}" if query else url


def signature_is_valid(settings: Settings) -> bool:
    signature = request.headers.get(SIGNATURE_HEADER, "")
    if not signature or not settings.twilio_auth_token:
        return False
    if request.headers.get(SIGNATURE_SETTINGS_HEADER):
        # A Webhook Rule signs with a SharedKey secret Closer is not given; only Auth Token signatures pass.
        log.warning("twilio webhook signed with a SharedKey; configure Auth Token signing for this URL",
                    extra={"path": request.path})
        return False
    return bool(request_validator(settings.twilio_auth_token).validate(signed_url(settings), request.form, signature))


def twilio_signed(view: Callable[P, R]) -> Callable[P, R]:
    """A view that runs only for a request Twilio signed (see the module's docstring); 403 otherwise."""

    @functools.wraps(view)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        if not signature_is_valid(current_runtime().settings):
            log.warning("twilio webhook: bad or missing signature", extra={"path": request.path})
            abort(403, "The X-Twilio-Signature does not match this request.")
        return view(*args, **kwargs)

    return checked
