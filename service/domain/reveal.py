"""Reveal steps: each partner's answer stays private until both have answered; then each gets one short
message with the other's words (email) or their log link (SMS), outside quiet hours. A partner who has
not answered yet gets at most one soft reminder, never a nudge about being late."""

from __future__ import annotations

import html
from datetime import datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.domain.composing import unsubscribe_url
from service.domain.links import log_url
from service.domain.scheduling import next_allowed_for
from service.models import (
    Channel,
    ConsentState,
    LogEntry,
    Nudge,
    NudgeKind,
    NudgeStatus,
    Partner,
)
from service.programs import EmailFooter, ProgramLibrary, wrap_email
from service.settings import Settings

MAX_WORDS_IN_EMAIL = 2000
_LOCK_CLASS = 0x5276  # namespace of the per-enrollment reveal locks, apart from signup's and the scheduler's


def other_partner(partner: Partner) -> Partner:
    """The other partner of the couple."""
    return next(p for p in partner.couple.partners if p.id != partner.id)


def is_reveal_prompt(nudge: Nudge | None, programs: ProgramLibrary) -> bool:
    if nudge is None or nudge.kind != NudgeKind.PROMPT or nudge.enrollment.program_key not in programs:
        return False
    program = programs.get(nudge.enrollment.program_key)
    return 1 <= nudge.step_day <= program.days and program.step(nudge.step_day).reveal


def step_answer(session: Session, partner_id: int, enrollment_id: int, step_day: int) -> LogEntry | None:
    """A partner's first answer to a given step of an enrollment (on any channel)."""
    return session.scalars(
        select(LogEntry)
        .join(Nudge, LogEntry.nudge_id == Nudge.id)
        .where(LogEntry.partner_id == partner_id, Nudge.enrollment_id == enrollment_id,
               Nudge.step_day == step_day, Nudge.kind == NudgeKind.PROMPT)
        .order_by(LogEntry.received_at)
        .limit(1)
    ).first()


def lock_reveals(session: Session, enrollment_id: int) -> None:
    """Serialize answers to an enrollment's reveal steps until commit.

    Without it, two partners answering at the same moment each miss the other's uncommitted answer (so
    no reveal goes out), or both see each other and both queue the reveals (a unique violation, or a
    deadlock on the two rows). With it, the later of the two sees the earlier one's committed answer.
    """
    session.execute(text("SELECT pg_advisory_xact_lock(:c, :k)"), {"c": _LOCK_CLASS, "k": enrollment_id})


def preferred_channel(partner: Partner) -> Channel | None:
    for channel in (Channel.SMS, Channel.EMAIL):
        if partner.consent(channel) is ConsentState.CONFIRMED:
            return channel
    return None


def _queue_message(
    session: Session, partner: Partner, template_nudge: Nudge, kind: NudgeKind, now: datetime,
    *, sms: str, subject: str, text: str, inner_html: str, settings: Settings, programs: ProgramLibrary,
) -> Nudge | None:
    channel = preferred_channel(partner)
    if channel is None:
        return None
    exists = session.scalar(select(Nudge.id).where(
        Nudge.enrollment_id == template_nudge.enrollment_id, Nudge.kind == kind,
        Nudge.step_day == template_nudge.step_day, Nudge.partner_id == partner.id, Nudge.channel == channel,
    ))
    if exists:
        return None
    when = next_allowed_for(partner, now)
    nudge = Nudge(
        enrollment_id=template_nudge.enrollment_id, partner=partner, kind=kind, step_day=template_nudge.step_day,
        channel=channel, scheduled_for=when,
        status=NudgeStatus.QUEUED if when <= now else NudgeStatus.SCHEDULED,
        queued_at=now if when <= now else None,
    )
    if channel is Channel.SMS:
        nudge.body_text = sms
    else:
        program_key = template_nudge.enrollment.program_key
        title = programs.get(program_key).title if program_key in programs else settings.sender_name
        footer = EmailFooter(title, settings.sender_name, settings.sender_postal_address,
                             unsubscribe_url(settings, partner.id))
        email = wrap_email(subject, text, inner_html, footer)
        nudge.subject, nudge.body_text, nudge.body_html = email.subject, email.text, email.html
    session.add(nudge)
    return nudge


def reveal_if_both_answered(
    session: Session, entry: LogEntry, *, settings: Settings, programs: ProgramLibrary, now: datetime
) -> list[Nudge]:
    """Called when `entry` lands; if it completes a reveal step, queue the reveal for both partners."""
    prompt = entry.nudge
    if prompt is None or not is_reveal_prompt(prompt, programs):
        return []
    lock_reveals(session, prompt.enrollment_id)
    partner = entry.partner
    other = other_partner(partner)
    other_answer = step_answer(session, other.id, prompt.enrollment_id, prompt.step_day)
    if other_answer is None:
        return []
    nudges = []
    for me, them, their_words in ((partner, other, other_answer.body), (other, partner, entry.body)):
        link = log_url(settings, me.log_token)
        words = their_words[:MAX_WORDS_IN_EMAIL]
        text = (f"{them.first_name} answered too. Here is what they said:\n\n{words}\n\n"
                f"Both answers are in your log: {link}")
        inner_html = (
            f"<p>{html.escape(them.first_name)} answered too. Here is what they said:</p>"
            f"<blockquote>{html.escape(words).replace(chr(10), '<br>')}</blockquote>"
            f'<p>Both answers are in your log: <a href="{html.escape(link)}">{html.escape(link)}</a></p>'
        )
        nudge = _queue_message(
            session, me, prompt, NudgeKind.REVEAL, now,
            sms=f"{them.first_name} answered too. Read both answers: {link}",
            subject=f"{them.first_name}'s answer is in", text=text, inner_html=inner_html,
            settings=settings, programs=programs,
        )
        if nudge is not None:
            nudges.append(nudge)
    session.flush()
    return nudges


def plan_reply_reminders(
    session: Session, *, settings: Settings, programs: ProgramLibrary, now: datetime
) -> list[Nudge]:
    """One soft reminder to a partner who hasn't answered a reveal step their partner already answered,
    sent halfway through their reply window. Reads only answers from the last day (indexed)."""
    recent = session.scalars(
        select(LogEntry).where(LogEntry.received_at >= now - timedelta(hours=24), LogEntry.nudge_id.is_not(None))
    ).all()
    created: list[Nudge] = []
    for entry in recent:
        prompt = entry.nudge
        if prompt is None or not is_reveal_prompt(prompt, programs):
            continue
        other = other_partner(entry.partner)
        if step_answer(session, other.id, prompt.enrollment_id, prompt.step_day) is not None:
            continue
        their_prompt = session.scalars(
            select(Nudge).where(
                Nudge.enrollment_id == prompt.enrollment_id, Nudge.kind == NudgeKind.PROMPT,
                Nudge.step_day == prompt.step_day, Nudge.partner_id == other.id, Nudge.sent_at.is_not(None),
            ).order_by(Nudge.sent_at).limit(1)
        ).first()
        if their_prompt is None or their_prompt.sent_at is None:
            continue
        window = timedelta(hours=programs.get(prompt.enrollment.program_key).reply_window_hours)
        elapsed = now - their_prompt.sent_at
        if not window / 2 <= elapsed < window or next_allowed_for(other, now) > now:
            continue
        name = entry.partner.first_name
        nudge = _queue_message(
            session, other, prompt, NudgeKind.REPLY_REMINDER, now,
            sms=f"{other.first_name}, {name} shared an answer to today's prompt. Whenever you're ready, "
                "reply with yours and you'll both see them.",
            subject="Whenever you're ready",
            text=(f"{name} answered today's prompt. Their answer stays private until you've shared yours.\n\n"
                  "No rush, and no need for a long answer: reply to this email whenever it suits you."),
            inner_html=(f"<p>{html.escape(name)} answered today's prompt. Their answer stays private until "
                        "you've shared yours.</p><p>No rush, and no need for a long answer: reply to this "
                        "email whenever it suits you.</p>"),
            settings=settings, programs=programs,
        )
        if nudge is not None:
            created.append(nudge)
    session.flush()
    return created
