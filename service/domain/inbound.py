"""Inbound SMS: keywords act on consent and schedules; anything else is a reply for the shared log.

The webhook view and the development outbox's "simulate a reply" form both call `receive_sms`, so a
reply tried locally takes exactly the path a real one takes after its signature is checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import insert_or_ignore
from service.domain import links, replies
from service.domain.consent import partners_by_phone, set_consent
from service.domain.enrollment import OPEN_STATUSES, confirm_channel
from service.domain.keywords import Command, classify
from service.domain.number_opt_outs import clear_number_opt_out, record_number_opt_out
from service.domain.scheduling import next_allowed_for as next_allowed_instant
from service.models import (
    Channel,
    ConsentState,
    Enrollment,
    EnrollmentStatus,
    InboundMessage,
    Nudge,
    NudgeKind,
    NudgeStatus,
    Partner,
)
from service.programs import ProgramLibrary
from service.settings import Settings

PAUSE_FOREVER = datetime(9999, 1, 1, tzinfo=UTC)
UNCONFIRMED_TEXT = "Thanks! Reply YES to confirm your Closer prompts first, then reply to any prompt to answer it."


@dataclass(frozen=True)
class InboundSms:
    message_sid: str  # the provider's id of the message: each is acted on once
    from_number: str
    to_number: str
    body: str
    num_media: int = 0
    media_types: tuple[str, ...] = ()
    provider: str = field(kw_only=True)  # the name our records give the provider that received it


@dataclass
class InboundResult:
    reply: str | None = None
    nudge_ids: list[int] = field(default_factory=list)
    duplicate: bool = False
    kind: str = "reply"


def record_inbound(
    session: Session, *, provider: str, message_id: str, channel: Channel, partner_id: int | None,
    kind: str, keyword: str | None, now: datetime,
) -> bool:
    """Remember a provider message id; False when it was seen before (a provider retry)."""
    inserted = insert_or_ignore(
        session, InboundMessage,
        {"provider": provider, "provider_message_id": message_id, "channel": channel, "partner_id": partner_id,
         "kind": kind, "keyword": keyword, "received_at": now},
        conflict=["provider", "provider_message_id"],
    )
    return inserted is not None


def receive_sms(
    session: Session, message: InboundSms, *, settings: Settings, programs: ProgramLibrary, now: datetime
) -> InboundResult:
    """One statement claims the MessageSid, finds the partner the text is from and, for a reply, stores it
    (`replies.claim_sms`): replies are most of the inbound traffic, so they take one round trip rather than
    five or more. A keyword then acts on consent and schedules through the ORM."""
    command = classify(message.body) if message.num_media == 0 or message.body.strip() else None
    if command is not None and command.keyword == "YES" and _yes_answers_a_prompt(session, message.from_number):
        command = None
    claimed = replies.claim_sms(
        session, provider=message.provider, message_id=message.message_sid, phone=message.from_number,
        keyword=command.keyword if command else None, body=message.body, media_count=message.num_media,
        media_types=message.media_types, programs=programs, now=now,
    )
    if command is not None:
        return _receive_keyword(session, message, command, claimed, settings=settings, programs=programs, now=now)
    return _receive_reply(session, claimed, settings=settings, programs=programs, now=now)


def _yes_answers_a_prompt(session: Session, phone: str) -> bool:
    """Whether a YES from `phone` is an answer for the log rather than a confirmation: YES confirms only a
    pending invitation to that number, so from a partner confirmed in an active couple, with no invitation
    waiting, a "Yes!" is what they answer to their prompt."""
    states = session.execute(
        select(Partner.sms_consent, Enrollment.status)
        .join(Enrollment, Enrollment.couple_id == Partner.couple_id)
        .where(Partner.phone_e164 == phone, Enrollment.status.in_(OPEN_STATUSES))
    ).all()
    invited = any(consent is ConsentState.PENDING for consent, _ in states)
    answering = any(consent is ConsentState.CONFIRMED and status is EnrollmentStatus.ACTIVE
                    for consent, status in states)
    return answering and not invited


def _rejoins_a_second_couple(session: Session, partner: Partner) -> bool:
    """Whether START would put `partner` back in their couple while they are in another pending or active one
    (invited again after leaving by STOP): a person is in at most one, so that couple stays left."""
    from service.domain.signup import in_a_couple

    session.flush()
    return in_a_couple(session, partner.phone_e164, partner.email, besides=partner.couple_id)


def _receive_keyword(
    session: Session, message: InboundSms, command: Command, claimed: replies.ClaimedSms, *, settings: Settings,
    programs: ProgramLibrary, now: datetime,
) -> InboundResult:
    if not claimed.claimed:
        return InboundResult(duplicate=True, kind="keyword")
    if claimed.partner_id is None:
        return InboundResult(reply=_unknown_sender_keyword(session, command, message, settings, now), kind="keyword")
    partners = partners_by_phone(session, message.from_number)
    partner = next(p for p in partners if p.id == claimed.partner_id)
    return InboundResult(reply=_run_command(session, command, partners, partner, message, settings, programs, now),
                         kind="keyword")


def _receive_reply(
    session: Session, claimed: replies.ClaimedSms, *, settings: Settings, programs: ProgramLibrary, now: datetime
) -> InboundResult:
    if claimed.partner_id is None:
        return InboundResult(duplicate=not claimed.claimed, kind="unknown_sender",
                             reply=_unknown_sender_text(settings) if claimed.claimed else None)
    if not claimed.claimed:
        return InboundResult(duplicate=True, kind="reply")
    if claimed.consent is ConsentState.PENDING:
        return InboundResult(reply=UNCONFIRMED_TEXT, kind="unconfirmed")
    if claimed.consent is not ConsentState.CONFIRMED:
        return InboundResult(kind="ignored")
    nudge_ids = replies.reveal_after_reply(
        session, entry_id=claimed.entry_id, partner_id=claimed.partner_id, couple_id=claimed.couple_id,
        prompt=claimed.prompt, settings=settings, programs=programs, now=now,
    )
    return InboundResult(reply=None, nudge_ids=nudge_ids, kind="reply")


def queue_late_answer(session: Session, message: InboundSms, answer: str, now: datetime) -> Nudge | None:
    """The answer to a keyword whose text waited in the spool, as a message of its own.

    The provider is no longer waiting for an answer to the webhook by then, so the answer (a LOG link, a
    HELP text, a YES welcome) is queued like any other message: to a confirmed partner only (an opted-out
    number gets nothing; the provider answers STOP itself), outside quiet hours, once per inbound text (the unique
    nudge key carries the inbound message's id, and a replay of the same text is a duplicate anyway).
    """
    partner_id = replies.addressed_partner_id(session, message.from_number, now=now)
    partner = session.get(Partner, partner_id) if partner_id is not None else None
    if partner is None or partner.consent(Channel.SMS) is not ConsentState.CONFIRMED:
        return None
    enrollment = _active_enrollment(partner) or (partner.couple.enrollments[-1] if partner.couple.enrollments
                                                 else None)
    inbound_id = session.scalar(select(InboundMessage.id).where(
        InboundMessage.provider == message.provider, InboundMessage.provider_message_id == message.message_sid))
    if enrollment is None or inbound_id is None:
        return None
    when = next_allowed_instant(partner, now)
    nudge = Nudge(
        enrollment=enrollment, partner=partner, kind=NudgeKind.KEYWORD_ANSWER, step_day=inbound_id,
        channel=Channel.SMS, scheduled_for=when, body_text=answer,
        status=NudgeStatus.QUEUED if when <= now else NudgeStatus.SCHEDULED, queued_at=now if when <= now else None,
    )
    session.add(nudge)
    session.flush()
    return nudge


def _active_enrollment(partner: Partner) -> Enrollment | None:
    for enrollment in reversed(partner.couple.enrollments):
        if enrollment.status in (EnrollmentStatus.ACTIVE, EnrollmentStatus.PENDING):
            return enrollment
    return None


def _program_title(partner: Partner, programs: ProgramLibrary) -> str:
    enrollment = _active_enrollment(partner)
    if enrollment is not None and enrollment.program_key in programs:
        return programs.get(enrollment.program_key).title
    return "Closer"


def _unknown_sender_keyword(
    session: Session, command: Command, message: InboundSms, settings: Settings, now: datetime
) -> str:
    """A keyword from a number no partner has. Consent is about the number: its STOP is kept (as a keyed hash,
    `number_opt_outs`) so no later signup texts it, and its START lifts that again."""
    if command.keyword == "STOP":
        record_number_opt_out(session, settings.secret_key, message.from_number, message_sid=message.message_sid,
                              now=now)
        return (f"You have successfully been unsubscribed from {settings.sender_name}. You will not receive any "
                "more messages from this number. Reply START to resubscribe.")
    if command.keyword == "START" and clear_number_opt_out(session, settings.secret_key, message.from_number):
        return (f"You have successfully been resubscribed to {settings.sender_name}. To sign up, visit "
                f"{settings.public_base_url}")
    return _unknown_sender_text(settings)


def _unknown_sender_text(settings: Settings) -> str:
    return (f"Hi! This is {settings.sender_name}. We don't have your number, so nothing was saved. "
            f"To sign up, visit {settings.public_base_url}")


def help_text(settings: Settings, program_title: str, per_week: int) -> str:
    contact = f" Help: {settings.support_contact}." if settings.support_contact else ""
    return (f"{settings.sender_name}: {program_title}, up to {per_week} msgs/wk.{contact} "
            "Msg&data rates may apply. Reply STOP to cancel, PAUSE to take a break.")


def _run_command(
    session: Session, command: Command, partners: list[Partner], partner: Partner, message: InboundSms,
    settings: Settings, programs: ProgramLibrary, now: datetime,
) -> str | None:
    """Act on a keyword from `partner`, the one of `partners` (everyone with that number) it is from."""
    name = settings.sender_name
    if command.keyword == "YES":
        open_signups = [p for p in partners if _active_enrollment(p) is not None]
        if not open_signups and any(p.consent(Channel.SMS) is ConsentState.PENDING for p in partners):
            # The invitation expired unconfirmed (signup.expire_unconfirmed_signups): a YES starts nothing.
            return (f"This {name} invitation has expired, so nothing was started. "
                    f"To sign up again, visit {settings.public_base_url}")
        confirmed = [
            p for p in open_signups
            if confirm_channel(session, p, Channel.SMS, source="sms", source_detail=message.message_sid, now=now)
        ]
        if not confirmed:
            return f"You're already confirmed for {name}. Reply HELP for help, STOP to cancel."
        title = _program_title(confirmed[0], programs)
        started = any(_active_enrollment(p) and _active_enrollment(p).status == EnrollmentStatus.ACTIVE  # type: ignore[union-attr]
                      for p in confirmed)
        when = "Your first prompt arrives at your chosen time." if started else (
            "Your prompts start once your partner says yes too.")
        return f"You're in for {title}! {when} Msg&data rates may apply. Reply HELP for help, STOP to cancel."
    if command.keyword == "STOP":
        for p in partners:
            if p.consent(Channel.SMS) in (ConsentState.CONFIRMED, ConsentState.PENDING):
                set_consent(session, p, Channel.SMS, ConsentState.OPTED_OUT, action="withdrawn", source="sms",
                            source_detail=message.message_sid, now=now)
        return f"You're unsubscribed from {name} texts and won't get more. Reply START to come back."
    if command.keyword == "START":
        clear_number_opt_out(session, settings.secret_key, message.from_number)
        for p in partners:
            if p.consent(Channel.SMS) is ConsentState.OPTED_OUT and not _rejoins_a_second_couple(session, p):
                set_consent(session, p, Channel.SMS, ConsentState.CONFIRMED, action="resumed", source="sms",
                            source_detail=message.message_sid, now=now)
        return f"Welcome back to {name}. Texts start again at your usual time. Reply STOP to cancel."
    if command.keyword == "HELP":
        enrollment = _active_enrollment(partner)
        per_week = programs.get(enrollment.program_key).messages_per_week if (
            enrollment and enrollment.program_key in programs) else 7
        return help_text(settings, _program_title(partner, programs), per_week)
    if partner.consent(Channel.SMS) is not ConsentState.CONFIRMED:
        return None
    if command.keyword == "LOG":
        return f"Your shared log: {links.log_url(settings, partner.log_token)}"
    if command.keyword == "NEWLINK":
        token = links.rotate_log_token(partner, now)
        return f"Your old log link no longer works. Your new one: {links.log_url(settings, token)}"
    if command.keyword == "PAUSE":
        partner.paused_until = now + timedelta(days=command.days) if command.days else PAUSE_FOREVER
        until = f" for {command.days} days" if command.days else ""
        return f"Paused{until}. No prompts until then. Reply RESUME any time to pick up again."
    if command.keyword == "RESUME":
        partner.paused_until = None
        return "Welcome back. Your next prompt arrives at your usual time."
    if command.keyword == "SKIP":
        from service.domain.delivery import skip_today

        skipped = skip_today(session, partner, now)
        return "Today's prompt is skipped. See you tomorrow." if skipped else "Nothing left to skip today."
    return None
