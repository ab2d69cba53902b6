"""Providers chosen by settings: Twilio or console for SMS, SendGrid or console for email.

Every vendor fact (codes, status names, webhook paths, the name our records give the vendor) lives in
that vendor's module here; the domain sees `SendFailure` meanings and `DeliveryReport`s, and the ops page
asks `explain_error` what a recorded code means.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from service.db import Database
from service.providers import base
from service.providers.base import (
    DeliveryReport,
    DeliveryStatus,
    EmailSender,
    OutboundEmail,
    OutboundSms,
    OutcomeUnknown,
    ProviderError,
    SendFailure,
    SendResult,
    SmsSender,
)
from service.providers.console import ConsoleEmail, ConsoleSms
from service.settings import Settings

__all__ = [
    "DeliveryReport",
    "DeliveryStatus",
    "EmailSender",
    "OutboundEmail",
    "OutboundSms",
    "OutcomeUnknown",
    "ProviderError",
    "Providers",
    "SendFailure",
    "SendResult",
    "SmsSender",
    "build_providers",
    "explain_error",
]


@dataclass(frozen=True)
class Providers:
    sms: SmsSender
    email: EmailSender


def build_providers(settings: Settings, database: Database) -> Providers:
    sms: SmsSender
    email: EmailSender
    if settings.effective_sms_provider == "twilio":
        from service.providers.twilio_sms import TwilioSms

        sms = TwilioSms(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            from_number=settings.twilio_from_number,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            api_base_url=settings.twilio_api_base_url,
            public_base_url=settings.public_base_url,
        )
    else:
        sms = ConsoleSms(database, sender=settings.twilio_from_number or "+15550000000")
    if settings.effective_email_provider == "sendgrid":
        from service.providers.sendgrid_email import SendGridEmail

        email = SendGridEmail(
            settings.sendgrid_api_key,
            settings.sendgrid_from_email,
            from_name=settings.sender_name,
            api_host=settings.sendgrid_api_host,
        )
    else:
        email = ConsoleEmail(database, sender=settings.sendgrid_from_email or "closer@localhost")
    return Providers(sms=sms, email=email)


Explain = Callable[[str], str | None]


@functools.cache
def _explainers() -> dict[str, tuple[Explain, ...]]:
    """Each channel's provider modules, asked in turn; imported on first use (they load the vendors' SDKs)."""
    from service.providers import console, sendgrid_email, twilio_sms

    return {"sms": (twilio_sms.explain, console.explain), "email": (sendgrid_email.explain, console.explain)}


def explain_error(channel: str, code: str | None) -> str | None:
    """What a code recorded on a nudge of `channel` ("sms", "email") means to an operator, from the provider
    modules that send on that channel and then the codes every provider shares; None when none knows it."""
    if not code:
        return None
    key = code.strip().lower()
    for explain in _explainers().get(str(channel), ()):
        text = explain(key)
        if text is not None:
            return text
    return base.explain(key)
