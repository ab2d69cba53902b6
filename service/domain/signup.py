"""Signing a couple up: two invited partners, their pending consent, and one confirmation per channel.

The person at the form speaks for both partners, but consents only to being asked: each partner
becomes PENDING on the channels given and confirms for themselves (SMS YES or the email link). The
confirmation texts cost money and reach strangers if abused, so every number gets at most
`confirmation_texts_per_number_per_day` of them (reminders included), checked here under a per-number
lock, and a number that has texted STOP is never texted again by someone else's signup.

A person (a phone number or an email address) belongs to at most one pending or active couple. A side of
a signup whose number or address is already in one is recorded but never invited (no consent asked, no
confirmation sent), so that couple cannot start and expires with its links; everyone else in the signup
is asked as usual and the signer is told what any signup is told, so a signup never reveals who is enrolled.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from markupsafe import escape
from sqlalchemy import func, or_, select, text, update
from sqlalchemy.orm import Session

from service.domain import links
from service.domain.composing import unsubscribe_url
from service.domain.consent import DISCLOSURE_VERSION, set_consent
from service.domain.enrollment import OPEN_STATUSES, pending_enrollment
from service.domain.number_opt_outs import number_opted_out_unknown
from service.domain.scheduling import next_allowed_for
from service.domain.tokens import CONFIRM_MAX_AGE, make_token
from service.models import (
    Channel,
    ConsentAction,
    ConsentSource,
    ConsentState,
    Couple,
    Enrollment,
    EnrollmentStatus,
    Nudge,
    NudgeKind,
    NudgeStatus,
    Partner,
    mask_phone,
)
from service.programs import EmailFooter, Program, ProgramLibrary, fits_one_segment, sms_name, wrap_email
from service.settings import Settings

log = logging.getLogger(__name__)

QUIET_START = time(21, 30)
QUIET_END = time(8, 0)
MAX_NAME_CHARS = 30  # texts shorten names past 20 characters when they would overflow a segment
# Reminders after one and three days: gentle, and never a third.
REMINDER_DELAYS = (timedelta(days=1), timedelta(days=2))
MAX_REMINDERS = len(REMINDER_DELAYS)
CAP_WINDOW = timedelta(days=1)
# The confirmation links' own lifetime: past it a signup can no longer be confirmed by link.
SIGNUP_EXPIRES_AFTER = timedelta(seconds=CONFIRM_MAX_AGE)
# Messages that were never handed to a provider cost nothing and do not count against the cap.
_UNSENT = (NudgeStatus.CANCELLED, NudgeStatus.SKIPPED)
_CONFIRMATION_KINDS = (NudgeKind.CONFIRMATION, NudgeKind.CONFIRMATION_REMINDER)
_LOCK_CLASS = 0x436C  # namespace of the per-address advisory locks, apart from the scheduler's


class SignupError(ValueError):
    """The request breaks a rule the form should have enforced (a programming error, or a forged post)."""


class SignupBlocked(Exception):
    """An abuse defense refused the signup. `reason` is for operators' logs, never for the visitor."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PartnerRequest:
    first_name: str
    phone_e164: str | None
    email: str | None
    timezone: str


@dataclass(frozen=True)
class SignupRequest:
    signer: PartnerRequest
    invited: PartnerRequest
    preferred_time: time
    program_key: str
    ip: str | None = None
    user_agent: str | None = None


@dataclass
class SignupResult:
    couple: Couple
    enrollment: Enrollment
    nudge_ids: list[int] = field(default_factory=list)
    channels: frozenset[Channel] = frozenset()


def sign_up(
    session: Session, request: SignupRequest, *, settings: Settings, programs: ProgramLibrary, now: datetime
) -> SignupResult:
    """Create the couple, both partners (PENDING), the enrollment and the confirmation nudges.

    Returns the ids of the QUEUED confirmation nudges, to enqueue once the caller has committed.
    Raises SignupBlocked when an address has had its share of confirmations today.
    """
    _check(request, programs)
    program = programs.get(request.program_key)
    addresses = [a for p in (request.signer, request.invited) for a in (p.phone_e164, p.email) if a]
    for address in sorted(addresses):
        _lock_address(session, address)
    for address in addresses:
        if confirmations_today(session, address, now) >= settings.confirmation_texts_per_number_per_day:
            raise SignupBlocked(f"daily confirmation cap reached for {_masked(address)}")
    # Under the address locks above, so two signups naming the same person cannot both invite them.
    enrolled = [in_a_couple(session, wanted.phone_e164, wanted.email) for wanted in (request.signer, request.invited)]

    couple = Couple(signup_ip=(request.ip or "")[:64] or None, created_at=now)
    source_detail = _web_source(request.ip, request.user_agent)
    partners = [
        _new_partner(couple, position, wanted, request.preferred_time, now)
        for position, wanted in ((1, request.signer), (2, request.invited))
    ]
    invited = [partner for partner, held in zip(partners, enrolled, strict=True) if not held]
    for partner, held in zip(partners, enrolled, strict=True):
        if held:
            partner.confirm_reminder_due_at = None
            log.info("signup side already in a couple: not invited", extra={"position": partner.position})
    enrollment = Enrollment(couple=couple, program_key=program.key, status=EnrollmentStatus.PENDING, created_at=now)
    session.add_all([couple, enrollment])
    for partner in invited:
        for channel in _channels_of(partner):
            set_consent(session, partner, channel, ConsentState.PENDING, action=ConsentAction.REQUESTED,
                        source=ConsentSource.WEB, source_detail=source_detail, now=now,
                        disclosure_version=DISCLOSURE_VERSION)
    session.flush()  # the partners' ids go into their confirmation links

    nudges: list[Nudge] = []
    for partner in invited:
        nudges.extend(_confirmation_nudges(session, partner, enrollment, program, settings, now, reminder=0))
    session.add_all(nudges)
    session.flush()
    log.info("couple signed up", extra={"couple_id": couple.id, "program": program.key,
                                        "confirmations": len(nudges)})
    return SignupResult(
        couple=couple, enrollment=enrollment,
        nudge_ids=[n.id for n in nudges if n.status == NudgeStatus.QUEUED],
        channels=frozenset(c for p in partners for c in _channels_of(p)),  # as if everyone were asked
    )


def _check(request: SignupRequest, programs: ProgramLibrary) -> None:
    if request.program_key not in programs:
        raise SignupError("unknown program")
    signer, invited = request.signer, request.invited
    for wanted in (signer, invited):
        if not (wanted.phone_e164 or wanted.email):
            raise SignupError("each partner needs a phone number or an email")
        if not wanted.first_name or len(wanted.first_name) > MAX_NAME_CHARS:
            raise SignupError(f"first names are 1 to {MAX_NAME_CHARS} characters")
        ZoneInfo(wanted.timezone)  # raises for an unknown zone
    if signer.phone_e164 and signer.phone_e164 == invited.phone_e164:
        raise SignupError("each partner confirms on their own number")
    if signer.email and invited.email and signer.email.lower() == invited.email.lower():
        raise SignupError("each partner confirms on their own email")


def _new_partner(couple: Couple, position: int, wanted: PartnerRequest, preferred: time, now: datetime) -> Partner:
    partner = Partner(
        couple=couple, position=position, first_name=wanted.first_name, phone_e164=wanted.phone_e164,
        email=wanted.email, timezone=wanted.timezone, preferred_time=preferred,
        quiet_start=QUIET_START, quiet_end=QUIET_END,
        sms_consent=ConsentState.NONE, email_consent=ConsentState.NONE,
        reply_token=secrets.token_hex(12), created_at=now,
        confirm_reminder_due_at=now + REMINDER_DELAYS[0],
    )
    links.issue_log_token(partner, now)
    return partner


def _channels_of(partner: Partner) -> list[Channel]:
    return [c for c, address in ((Channel.SMS, partner.phone_e164), (Channel.EMAIL, partner.email)) if address]


def _web_source(ip: str | None, user_agent: str | None) -> str:
    return f"ip={ip or '?'}; ua={' '.join((user_agent or '?').split())}"[:512]


def _masked(address: str) -> str:
    return mask_phone(address) if address.startswith("+") else "an email address"


def _lock_address(session: Session, address: str) -> None:
    """Serialize signups and reminders per address until commit, so two at once cannot both pass the cap
    (a transaction-level advisory lock on a hash of the address)."""
    digest = hashlib.sha256(address.lower().encode()).digest()
    key = int.from_bytes(digest[:4], "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:c, :k)"), {"c": _LOCK_CLASS, "k": key})


def confirmations_today(session: Session, address: str, now: datetime) -> int:
    """Confirmations and reminders sent (or on their way) to a phone number or email in the last day."""
    channel = Channel.SMS if address.startswith("+") else Channel.EMAIL
    column = Partner.phone_e164 if channel is Channel.SMS else Partner.email
    return int(session.scalar(
        select(func.count(Nudge.id))
        .join(Partner, Partner.id == Nudge.partner_id)
        .where(column == address, Nudge.channel == channel, Nudge.kind.in_(_CONFIRMATION_KINDS))
        .where(Nudge.scheduled_for > now - CAP_WINDOW, Nudge.status.not_in(_UNSENT))
    ) or 0)


# A partner still asked or confirmed on some channel; one who stopped (or bounced) on every channel has left.
_IN_STATES = (ConsentState.PENDING, ConsentState.CONFIRMED)


def in_a_couple(session: Session, phone: str | None, email: str | None, *, besides: int | None = None) -> bool:
    """Whether the person with this number or email address is in a pending or active couple (other than the
    couple `besides`): a partner there with that number or address, still pending or confirmed on some
    channel (STOP on every channel leaves)."""
    same = [column == address for column, address in ((Partner.phone_e164, phone), (Partner.email, email)) if address]
    if not same:
        return False
    query = (
        select(Partner.id)
        .join(Enrollment, Enrollment.couple_id == Partner.couple_id)
        .where(or_(*same), Enrollment.status.in_(OPEN_STATUSES))
        .where(or_(Partner.sms_consent.in_(_IN_STATES), Partner.email_consent.in_(_IN_STATES)))
    )
    if besides is not None:
        query = query.where(Partner.couple_id != besides)
    return session.scalar(query.limit(1)) is not None


def number_opted_out(session: Session, phone: str) -> bool:
    """Whether this number texted STOP (and not START since): only its owner may opt it back in."""
    return session.scalar(
        select(Partner.id).where(Partner.phone_e164 == phone, Partner.sms_consent == ConsentState.OPTED_OUT).limit(1)
    ) is not None


def _confirmation_nudges(
    session: Session, partner: Partner, enrollment: Enrollment, program: Program, settings: Settings,
    now: datetime, *, reminder: int,
) -> list[Nudge]:
    """The confirmation (reminder 0) or the n-th reminder for every channel still PENDING."""
    other = next(p for p in enrollment.couple.partners if p is not partner)
    signer = partner if partner.position == 1 else other
    kind = NudgeKind.CONFIRMATION if reminder == 0 else NudgeKind.CONFIRMATION_REMINDER
    nudges = []
    for channel in _channels_of(partner):
        if partner.consent(channel) is not ConsentState.PENDING:
            continue
        nudge = Nudge(enrollment=enrollment, partner=partner, kind=kind, step_day=reminder, channel=channel,
                      scheduled_for=now, status=NudgeStatus.QUEUED, queued_at=now)
        if channel is Channel.SMS:
            assert partner.phone_e164 is not None
            if number_opted_out(session, partner.phone_e164) or number_opted_out_unknown(
                    session, settings.secret_key, partner.phone_e164):
                nudge.status, nudge.queued_at = NudgeStatus.CANCELLED, None
                nudge.status_reason = "the number texted STOP; only its owner can opt back in"
            nudge.body_text = confirmation_sms(settings.sender_name, program, sms_name(signer.first_name),
                                               sms_name(other.first_name), to_signer=partner is signer,
                                               reminder=reminder > 0)
        else:
            email = confirmation_email(settings, program, partner, signer, other, reminder=reminder > 0)
            nudge.subject, nudge.body_text, nudge.body_html = email
        nudges.append(nudge)
    return nudges


def confirmation_sms(
    sender: str, program: Program, signer: str, other: str, *, to_signer: bool, reminder: bool = False
) -> str:
    """The CTIA confirmation text: who asked, the program, how often, rates, STOP and HELP; one GSM-7 segment.

    `signer` and `other` are names as texts show them (`sms_name`). Warmer wordings are tried first;
    the first that fits one segment is used, down to one that names nobody.
    """
    title, freq = program.title, f"{program.messages_per_week} msgs/wk"
    rates = "Msg&data rates may apply. Reply STOP to cancel, HELP for help."
    candidates = []
    if to_signer:
        lead = "Reminder: reply" if reminder else "Reply"
        if signer and other:
            candidates.append(
                f"{sender}: {signer}, you signed up for {title} with {other}, {freq}. {lead} YES to confirm. {rates}")
        if signer:
            candidates.append(f"{sender}: {signer}, you signed up for {title}, {freq}. {lead} YES to confirm. {rates}")
        candidates.append(f"{sender}: you signed up for {title}, {freq}. {lead} YES to confirm. {rates}")
    else:
        name = signer or "Your partner"
        if reminder:
            candidates.append(f"{sender}: Reminder: {name} invited you to {title}, {freq}. Reply YES to join. {rates}")
            candidates.append(f"{sender}: Reminder: reply YES to join {title}, {freq}. {rates}")
        candidates.append(f"{sender}: {name} invited you to {title}, {freq}. Reply YES to join. {rates}")
    candidates.append(f"{sender}: Reply YES to join {title}, {freq}. {rates}")
    candidates.append(f"Reply YES to get {sender[:20]} texts, {freq}. {rates}")
    for candidate in candidates:
        if fits_one_segment(candidate):
            return candidate
    return f"Reply YES to get texts, {freq}. {rates}"


def confirm_url(settings: Settings, partner_id: int) -> str:
    token = make_token(settings.secret_key, "confirm", partner_id)
    return f"{settings.public_base_url.rstrip('/')}/confirm/{token}"


def confirmation_email(
    settings: Settings, program: Program, partner: Partner, signer: Partner, other: Partner, *, reminder: bool = False
) -> tuple[str, str, str]:
    """Subject, text and HTML of the email that asks a partner to confirm with a /confirm/<token> link."""
    url = confirm_url(settings, partner.id)
    sender = settings.sender_name
    about = (f"{program.title}: {program.days} days of short prompts from {sender}, up to "
             f"{program.messages_per_week} messages a week. You answer by replying, and your answers land "
             f"in a log that only the two of you read.")
    if partner is signer:
        subject = f"Confirm {program.title} with {other.first_name}"
        opening = f"Thanks for signing up with {other.first_name} for {about}"
    else:
        subject = f"{signer.first_name} invited you to {program.title}"
        opening = f"{signer.first_name} would like the two of you to try {about}"
    if reminder:
        subject = f"Reminder: {subject}"
    paragraphs = [
        f"Hi {partner.first_name},",
        opening,
        "Nothing starts until both of you say yes, and each of you decides for yourself. To say yes, open "
        "this link and press the button:",
    ]
    closing = ("Not for you? Just ignore this email. We send at most two reminders, then stop. "
               "Every email has an unsubscribe link.")
    text_body = "\n\n".join([*paragraphs, url, closing])
    inner_html = "\n".join(
        [f"<p>{escape(p)}</p>" for p in paragraphs]
        + [f'<p><a href="{escape(url)}" style="display:inline-block;background:#b5523b;color:#ffffff;'
           f'padding:12px 20px;border-radius:8px;text-decoration:none;font-family:Arial,sans-serif;">'
           f"Yes, count me in</a></p>",
           f'<p style="font-size:14px;">Or copy this link: {escape(url)}</p>',
           f"<p>{escape(closing)}</p>"]
    )
    footer = EmailFooter(program.title, sender, settings.sender_postal_address,
                         unsubscribe_url(settings, partner.id),
                         reason=f"You're getting this because someone asked {sender} to invite you to "
                                f"{program.title}.")
    email = wrap_email(subject, text_body, inner_html, footer)
    return email.subject, email.text, email.html


@dataclass
class ReminderReport:
    created: int = 0
    deferred: int = 0
    finished: int = 0
    nudge_ids: list[int] = field(default_factory=list)


def plan_confirmation_reminders(
    session: Session, *, settings: Settings, programs: ProgramLibrary, now: datetime, limit: int = 1000
) -> ReminderReport:
    """Remind partners who have not confirmed yet: at most two gentle reminders, outside quiet hours.

    Reads only partners whose `confirm_reminder_due_at` has come (indexed), so a pass costs what is due.
    """
    report = ReminderReport()
    due = session.scalars(
        select(Partner).where(Partner.confirm_reminder_due_at <= now)
        .order_by(Partner.confirm_reminder_due_at).limit(limit).with_for_update(skip_locked=True)
    ).all()
    for partner in due:
        enrollment = pending_enrollment(session, partner.couple_id)
        sent = _reminders_sent(session, partner, enrollment) if enrollment else MAX_REMINDERS
        still_pending = any(partner.consent(c) is ConsentState.PENDING for c in _channels_of(partner))
        if (partner.is_confirmed or not still_pending or enrollment is None or sent >= MAX_REMINDERS
                or enrollment.program_key not in programs):
            partner.confirm_reminder_due_at = None
            report.finished += 1
            continue
        allowed = next_allowed_for(partner, now)
        if allowed > now:
            partner.confirm_reminder_due_at = allowed
            report.deferred += 1
            continue
        reachable = [a for a in (partner.phone_e164, partner.email) if a]
        for address in sorted(reachable):
            _lock_address(session, address)
        nudges = _confirmation_nudges(session, partner, enrollment, programs.get(enrollment.program_key),
                                      settings, now, reminder=sent + 1)
        for nudge in nudges:
            address = (partner.phone_e164 if nudge.channel == Channel.SMS else partner.email) or ""
            if (nudge.status == NudgeStatus.QUEUED
                    and confirmations_today(session, address, now) >= settings.confirmation_texts_per_number_per_day):
                nudge.status, nudge.queued_at = NudgeStatus.CANCELLED, None
                nudge.status_reason = "daily confirmation cap reached for this address"
        session.add_all(nudges)
        report.created += len(nudges)
        next_delay = REMINDER_DELAYS[sent + 1] if sent + 1 < MAX_REMINDERS else None
        partner.confirm_reminder_due_at = now + next_delay if next_delay else None
        session.flush()
        report.nudge_ids.extend(n.id for n in nudges if n.status == NudgeStatus.QUEUED)
    session.flush()
    return report


def expire_unconfirmed_signups(session: Session, now: datetime, *, limit: int = 1000) -> int:
    """Close signups still waiting for a partner once their confirmation links have expired.

    After CONFIRM_MAX_AGE nobody can confirm by link any more, so the enrollment is cancelled, its
    unsent confirmations with it, and the reminders stop. The partners' rows and consent history stay
    (an opt-out must keep being honoured); a later YES starts nothing, and the couple signs up again.
    Reads pending enrollments only, through the (status, program_key) index.
    """
    expired = session.scalars(
        select(Enrollment)
        .where(Enrollment.status == EnrollmentStatus.PENDING, Enrollment.created_at < now - SIGNUP_EXPIRES_AFTER)
        .order_by(Enrollment.id).limit(limit).with_for_update(skip_locked=True)
    ).all()
    if not expired:
        return 0
    for enrollment in expired:
        enrollment.status, enrollment.ended_at = EnrollmentStatus.CANCELLED, now
        for partner in enrollment.couple.partners:
            partner.confirm_reminder_due_at = None
    session.execute(
        update(Nudge)
        .where(Nudge.enrollment_id.in_([e.id for e in expired]), Nudge.kind.in_(_CONFIRMATION_KINDS),
               Nudge.status.in_([NudgeStatus.SCHEDULED, NudgeStatus.QUEUED]))
        .values(status=NudgeStatus.CANCELLED, status_reason="signup expired unconfirmed")
    )
    log.info("unconfirmed signups expired", extra={"enrollments": len(expired)})
    session.flush()
    return len(expired)


def _reminders_sent(session: Session, partner: Partner, enrollment: Enrollment) -> int:
    return int(session.scalar(
        select(func.max(Nudge.step_day)).where(
            Nudge.enrollment_id == enrollment.id, Nudge.partner_id == partner.id,
            Nudge.kind == NudgeKind.CONFIRMATION_REMINDER,
        )
    ) or 0)
