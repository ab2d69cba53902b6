"""Providers chosen by settings: Twilio or console for SMS, SendGrid or console for email."""

from __future__ import annotations

from dataclasses import dataclass

from service.db import Database
from service.providers.base import (
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
