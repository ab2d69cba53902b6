"""Factories that make rows for tests; they add and flush, the test decides whether to commit."""

from __future__ import annotations

import itertools
import secrets
from datetime import UTC, datetime, time

from sqlalchemy.orm import Session

from service.domain.enrollment import maybe_start
from service.domain.links import issue_log_token
from service.models import (
    ConsentState,
    Couple,
    Enrollment,
    EnrollmentStatus,
    Nudge,
    NudgeKind,
    NudgeStatus,
    Partner,
)

_phones = itertools.count(1000)


def next_phone() -> str:
    """A valid US mobile-capable number, unique within a test run."""
    return f"+1415555{next(_phones) % 10000:04d}"


def make_partner(
    couple: Couple,
    position: int,
    *,
    name: str,
    phone: str | None = None,
    email: str | None = None,
    timezone: str = "America/New_York",
    preferred: time = time(9, 0),
    sms: ConsentState = ConsentState.CONFIRMED,
    email_state: ConsentState = ConsentState.CONFIRMED,
    now: datetime | None = None,
) -> Partner:
    partner = Partner(
        couple=couple, position=position, first_name=name, phone_e164=phone, email=email,
        timezone=timezone, preferred_time=preferred, quiet_start=time(21, 30), quiet_end=time(8, 0),
        sms_consent=sms if phone else ConsentState.NONE,
        email_consent=email_state if email else ConsentState.NONE,
        reply_token=secrets.token_hex(12),
    )
    issue_log_token(partner, now or datetime.now(UTC))
    return partner


def make_couple(
    session: Session,
    *,
    names: tuple[str, str] = ("Alex", "Sam"),
    program: str = "appreciation",
    sms: bool = True,
    email: bool = True,
    timezones: tuple[str, str] = ("America/New_York", "America/New_York"),
    preferred: tuple[time, time] = (time(9, 0), time(9, 0)),
    confirmed: bool = True,
    start: datetime | None = None,
) -> Couple:
    couple = Couple()
    state = ConsentState.CONFIRMED if confirmed else ConsentState.PENDING
    for position, (name, zone, at) in enumerate(zip(names, timezones, preferred, strict=True), start=1):
        make_partner(
            couple, position, name=name,
            phone=next_phone() if sms else None,
            email=f"{name.lower()}.{secrets.token_hex(4)}@example.com" if email else None,
            timezone=zone, preferred=at, sms=state, email_state=state,
        )
    enrollment = Enrollment(couple=couple, program_key=program, status=EnrollmentStatus.PENDING)
    session.add_all([couple, enrollment])
    session.flush()
    if confirmed:
        maybe_start(session, enrollment, start or datetime.now(UTC))
    return couple


def make_sent_prompt(
    session: Session, partner: Partner, *, step_day: int = 1, channel: str = "sms", sent_at: datetime | None = None,
    body: str = "What made you smile today? Reply with your answer.",
) -> Nudge:
    """A prompt nudge that has already gone out, as the delivery pipeline leaves it."""
    enrollment = partner.couple.enrollments[-1]
    sent_at = sent_at or datetime.now(UTC)
    nudge = Nudge(
        enrollment=enrollment, partner=partner, kind=NudgeKind.PROMPT, step_day=step_day, channel=channel,
        status=NudgeStatus.SENT, scheduled_for=sent_at, queued_at=sent_at, sending_at=sent_at, sent_at=sent_at,
        provider_message_id=f"SM{secrets.token_hex(16)}", body_text=body,
    )
    session.add(nudge)
    session.flush()
    return nudge
