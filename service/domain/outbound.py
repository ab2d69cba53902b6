"""Turning a claimed nudge into a provider call, and recording what the provider said."""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from service.domain.consent import set_consent
from service.domain.tokens import make_token
from service.models import (
    Channel,
    ConsentState,
    Nudge,
    NudgeKind,
    NudgeStatus,
    Partner,
)
from service.programs import EmailFooter, ProgramLibrary, render_email, render_sms
from service.providers import OutboundEmail, OutboundSms, ProviderError, Providers
from service.providers.twilio_sms import INVALID_NUMBER_CODES, OPTED_OUT_CODE, OutcomeUnknown
from service.settings import Settings

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6


class SendOutcome(enum.StrEnum):
    SENT = "sent"
    FAILED = "failed"
    RETRY = "retry"
    CANCELLED = "cancelled"
    REVIEW = "review"
    GONE = "gone"


def other_partner(partner: Partner) -> Partner:
    return next(p for p in partner.couple.partners if p.id != partner.id)


def unsubscribe_url(settings: Settings, partner_id: int) -> str:
    token = make_token(settings.secret_key, "unsubscribe", partner_id)
    return f"{settings.public_base_url.rstrip('/')}/unsubscribe/{token}"


def reply_address(settings: Settings, partner: Partner) -> str:
    return f"reply+{partner.reply_token}@{settings.inbound_email_domain}"


def render_prompt(nudge: Nudge, programs: ProgramLibrary, settings: Settings) -> None:
    """Fill a prompt nudge's text from its program step, addressed to its partner."""
    program = programs.get(nudge.enrollment.program_key)
    step = program.step(nudge.step_day)
    me, them = nudge.partner.first_name, other_partner(nudge.partner).first_name
    if nudge.channel == Channel.SMS:
        nudge.body_text = render_sms(step, me, them).body
        return
    footer = EmailFooter(program.title, settings.sender_name, settings.sender_postal_address,
                         unsubscribe_url(settings, nudge.partner_id))
    email = render_email(step, me, them, footer)
    nudge.subject, nudge.body_text, nudge.body_html = email.subject, email.text, email.html


def backoff(attempts: int, retry_after: float | None) -> timedelta:
    """Exponential backoff with full jitter, never sooner than the provider's Retry-After."""
    ceiling = min(600.0, 5.0 * (2 ** max(0, attempts - 1)))
    delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security
    return timedelta(seconds=max(delay, retry_after or 0.0))


def deliver(
    session: Session,
    nudge: Nudge,
    *,
    providers: Providers,
    settings: Settings,
    programs: ProgramLibrary,
    throttle: Callable[[Channel], None],
    now: datetime,
) -> SendOutcome:
    if nudge.status != NudgeStatus.SENDING:
        return SendOutcome.GONE
    partner = nudge.partner
    channel = Channel(nudge.channel)
    # Consent is checked again at the last moment: a STOP that landed after queueing still wins.
    asks_to_confirm = nudge.kind in (NudgeKind.CONFIRMATION, NudgeKind.CONFIRMATION_REMINDER)
    allowed = ConsentState.PENDING if asks_to_confirm else ConsentState.CONFIRMED
    if partner.consent(channel) is not allowed:
        nudge.status, nudge.status_reason = NudgeStatus.CANCELLED, f"{channel} consent is {partner.consent(channel)}"
        return SendOutcome.CANCELLED
    if nudge.body_text is None and nudge.kind == NudgeKind.PROMPT:
        render_prompt(nudge, programs, settings)
    throttle(channel)
    try:
        if channel is Channel.SMS:
            assert partner.phone_e164 and nudge.body_text is not None
            status_callback = f"{settings.public_base_url.rstrip('/')}/webhooks/twilio/status"
            result = providers.sms.send_sms(
                OutboundSms(to=partner.phone_e164, body=nudge.body_text, status_callback=status_callback,
                            nudge_id=nudge.id)
            )
        else:
            assert partner.email and nudge.body_text is not None
            unsubscribe = unsubscribe_url(settings, partner.id)
            result = providers.email.send_email(
                OutboundEmail(
                    to=partner.email, subject=nudge.subject or settings.sender_name, text=nudge.body_text,
                    html=nudge.body_html or nudge.body_text, reply_to=reply_address(settings, partner),
                    headers={"List-Unsubscribe": f"<{unsubscribe}>",
                             "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
                    custom_args={"nudge_id": str(nudge.id)}, nudge_id=nudge.id,
                )
            )
    except OutcomeUnknown as exc:
        nudge.needs_review, nudge.error_code = True, exc.code
        nudge.status_reason = "the provider did not answer; it may have sent this: review before resending"
        log.warning("send outcome unknown", extra={"nudge_id": nudge.id, "channel": channel.value})
        return SendOutcome.REVIEW
    except ProviderError as exc:
        return _provider_error(session, nudge, partner, channel, exc, now)
    nudge.status, nudge.sent_at = NudgeStatus.SENT, now
    nudge.provider_message_id, nudge.error_code = result.provider_message_id, None
    return SendOutcome.SENT


def _provider_error(
    session: Session, nudge: Nudge, partner: Partner, channel: Channel, exc: ProviderError, now: datetime
) -> SendOutcome:
    nudge.error_code = exc.code
    if exc.retryable and nudge.attempts < MAX_ATTEMPTS:
        nudge.status = NudgeStatus.SCHEDULED
        nudge.scheduled_for = now + backoff(nudge.attempts, exc.retry_after)
        nudge.status_reason = f"retrying after provider error {exc.code}"
        return SendOutcome.RETRY
    nudge.status, nudge.status_reason = NudgeStatus.FAILED, f"provider error {exc.code}"
    if channel is Channel.SMS and exc.code == OPTED_OUT_CODE:
        set_consent(session, partner, Channel.SMS, ConsentState.OPTED_OUT, action="withdrawn",
                    source="provider", source_detail=f"twilio {OPTED_OUT_CODE}", now=now)
    elif channel is Channel.SMS and exc.code in INVALID_NUMBER_CODES:
        nudge.status_reason = f"invalid or non-mobile number ({exc.code})"
    return SendOutcome.FAILED
