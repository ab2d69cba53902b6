"""Replies become entries in the couple's shared log, each stored once and tied to its prompt."""

from __future__ import annotations

import functools
import json
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from service.crypto import active_cipher
from service.models import (
    Channel,
    ConsentState,
    EnrollmentStatus,
    LogEntry,
    Nudge,
    NudgeKind,
    NudgeStatus,
    Partner,
)
from service.programs import ProgramLibrary
from service.settings import Settings

MAX_REPLY_CHARS = 5000
DEFAULT_REPLY_WINDOW_HOURS = 20
MAX_REPLY_WINDOW_HOURS = 72  # programs may not ask for more (service/programs.py checks)


@dataclass
class ReplyOutcome:
    entry: LogEntry | None
    nudge_ids: list[int] = field(default_factory=list)
    duplicate: bool = False


def answered_prompt(session: Session, partner: Partner, programs: ProgramLibrary, now: datetime) -> Nudge | None:
    """The latest prompt sent to this partner (any channel) whose program's reply window is still open."""
    candidates = session.scalars(
        select(Nudge)
        .where(Nudge.partner_id == partner.id, Nudge.kind == NudgeKind.PROMPT)
        .where(Nudge.status.in_([NudgeStatus.SENT, NudgeStatus.DELIVERED]))
        .where(Nudge.sent_at.is_not(None), Nudge.sent_at <= now,
               Nudge.sent_at >= now - timedelta(hours=MAX_REPLY_WINDOW_HOURS))
        .order_by(Nudge.sent_at.desc())
        .limit(1)
    ).first()
    if candidates is None or candidates.sent_at is None:
        return None
    key = candidates.enrollment.program_key
    window = programs.get(key).reply_window_hours if key in programs else DEFAULT_REPLY_WINDOW_HOURS
    return candidates if candidates.sent_at >= now - timedelta(hours=window) else None


def store_reply(
    session: Session,
    partner: Partner,
    *,
    channel: Channel,
    provider_message_id: str,
    body: str,
    programs: ProgramLibrary,
    settings: Settings,
    now: datetime,
    media_count: int = 0,
    media_types: Sequence[str] = (),
) -> ReplyOutcome:
    # Callers have already claimed `provider_message_id` in inbound_messages (insert-or-ignore), so a
    # provider retry never reaches this point; the unique constraint on log entries is the backstop.
    prompt = answered_prompt(session, partner, programs, now)
    entry = LogEntry(
        couple_id=partner.couple_id, partner_id=partner.id, nudge=prompt, channel=channel,
        provider_message_id=provider_message_id, body=body.strip()[:MAX_REPLY_CHARS],
        media_count=media_count, media_types=",".join(media_types)[:255] or None, received_at=now,
    )
    session.add(entry)
    session.flush()
    from service.domain.reveal import reveal_if_both_answered

    reveals = reveal_if_both_answered(session, entry, settings=settings, programs=programs, now=now)
    return ReplyOutcome(entry=entry, nudge_ids=[n.id for n in reveals if n.status == NudgeStatus.QUEUED])


# --- the common case in one statement (PostgreSQL) ------------------------------------------------

# Where replies inserted without the ORM are noted for the reply counter (service/telemetry.py reads
# the same key): the counter otherwise only sees log entries the ORM flushes.
PENDING_REPLIES_KEY = "closer_metric_replies"


def note_stored_replies(session: Session, channel: str, count: int = 1) -> None:
    """Note replies this transaction stored, to be counted if (and only if) it commits."""
    pending: Tally[str] = session.info.setdefault(PENDING_REPLIES_KEY, Tally())
    pending[channel] += count


@dataclass(frozen=True)
class LinkedPrompt:
    id: int
    enrollment_id: int
    step_day: int
    program_key: str


@dataclass(frozen=True)
class ClaimedSms:
    """What `claim_sms_text` did: whether the MessageSid was new, who sent it, and what got stored."""

    claimed: bool
    partner_id: int | None
    couple_id: int | None
    consent: ConsentState | None
    entry_id: int | None
    prompt: LinkedPrompt | None


# One round trip claims the MessageSid (the dedupe record), finds the addressed partner exactly as
# `inbound._addressed_partner` does (newest confirmed partner in an active or pending couple, else the
# newest), and, for a confirmed partner, stores the encrypted reply tied to the latest prompt whose
# program's reply window is still open (as `answered_prompt` does). Data-modifying CTEs run once and
# see one snapshot; `entry` reads from `claim`, so a retried MessageSid (ON CONFLICT DO NOTHING, which
# waits for a concurrent first insert to commit) stores nothing.
# Only enum constants are formatted into the text; every value from a request is a bind parameter
# (psycopg's %(name)s style: the statement is run with `exec_driver_sql`).
_CLAIM_SMS = f"""
WITH partner AS (
    SELECT p.id, p.couple_id, p.sms_consent
    FROM partners AS p
    LEFT JOIN LATERAL (
        SELECT true AS live FROM enrollments AS e
        WHERE e.couple_id = p.couple_id
          AND e.status IN ('{EnrollmentStatus.ACTIVE.value}', '{EnrollmentStatus.PENDING.value}')
        LIMIT 1
    ) AS enrolled ON true
    WHERE p.phone_e164 = %(phone)s
    ORDER BY (p.sms_consent = '{ConsentState.CONFIRMED.value}' AND enrolled.live IS NOT NULL) DESC, p.id DESC
    LIMIT 1
), claim AS (
    INSERT INTO inbound_messages (provider, provider_message_id, channel, partner_id, kind, received_at)
    SELECT %(provider)s, %(sid)s, %(channel)s, (SELECT id FROM partner),
           CASE WHEN EXISTS (SELECT FROM partner) THEN 'reply' ELSE 'unknown_sender' END, %(now)s
    ON CONFLICT (provider, provider_message_id) DO NOTHING
    RETURNING id
), latest AS (
    SELECT n.id, n.enrollment_id, n.step_day, n.sent_at, e.program_key
    FROM nudges AS n JOIN enrollments AS e ON e.id = n.enrollment_id
    WHERE n.partner_id = (SELECT id FROM partner WHERE sms_consent = '{ConsentState.CONFIRMED.value}')
      AND n.kind = '{NudgeKind.PROMPT.value}'
      AND n.status IN ('{NudgeStatus.SENT.value}', '{NudgeStatus.DELIVERED.value}')
      AND n.sent_at <= %(now)s AND n.sent_at >= %(now)s - make_interval(hours => {MAX_REPLY_WINDOW_HOURS})
    ORDER BY n.sent_at DESC
    LIMIT 1
), prompt AS (
    SELECT id, enrollment_id, step_day, program_key FROM latest
    WHERE sent_at >= %(now)s - make_interval(hours => COALESCE(
        (CAST(%(windows)s AS jsonb) ->> program_key)::int, {DEFAULT_REPLY_WINDOW_HOURS}))
), entry AS (
    INSERT INTO log_entries (couple_id, partner_id, nudge_id, channel, provider_message_id, body, media_count,
                             media_types, received_at)
    SELECT partner.couple_id, partner.id, (SELECT id FROM prompt), %(channel)s, %(sid)s, %(body)s, %(media_count)s,
           %(media_types)s, %(now)s
    FROM partner, claim
    WHERE partner.sms_consent = '{ConsentState.CONFIRMED.value}'
    RETURNING id
)
SELECT (SELECT id FROM claim), partner.id, partner.couple_id, partner.sms_consent, (SELECT id FROM entry),
       prompt.id, prompt.enrollment_id, prompt.step_day, prompt.program_key
FROM (SELECT 1) AS one LEFT JOIN partner ON true LEFT JOIN prompt ON true
"""  # noqa: S608


@functools.lru_cache(maxsize=8)
def _reply_windows(programs: ProgramLibrary) -> str:
    """Each program's reply window as JSON for `_CLAIM_SMS`; programs are loaded once per process."""
    return json.dumps({program.key: program.reply_window_hours for program in programs})


def claim_sms_text(
    session: Session, *, message_id: str, phone: str, body: str, media_count: int, media_types: Sequence[str],
    programs: ProgramLibrary, now: datetime,
) -> ClaimedSms:
    """Claim an inbound text that is not a keyword and, from a confirmed partner, store it (PostgreSQL).

    Reveals are the caller's: when the reply answers a reveal step, call `reveal_after_reply`.
    """
    session.flush()  # rows the caller added in this transaction must be visible to the statement
    # Sent as the driver's own SQL: the text never changes, so SQLAlchemy's compile step and cache lookup
    # are pure cost here (psycopg still prepares it server-side after a few runs on each connection).
    row = session.connection().exec_driver_sql(_CLAIM_SMS, {
        "phone": phone, "provider": "twilio", "sid": message_id, "channel": Channel.SMS.value, "now": now,
        "windows": _reply_windows(programs),
        "body": active_cipher().encrypt(body.strip()[:MAX_REPLY_CHARS]),
        "media_count": media_count, "media_types": ",".join(media_types)[:255] or None,
    }).one()
    claim_id, partner_id, couple_id, consent, entry_id, prompt_id, enrollment_id, step_day, program_key = row
    if entry_id is not None:
        note_stored_replies(session, Channel.SMS.value)
    return ClaimedSms(
        claimed=claim_id is not None, partner_id=partner_id, couple_id=couple_id,
        consent=ConsentState(consent) if consent is not None else None, entry_id=entry_id,
        prompt=LinkedPrompt(prompt_id, enrollment_id, step_day, program_key) if prompt_id is not None else None,
    )


def reveal_after_reply(
    session: Session, claimed: ClaimedSms, *, settings: Settings, programs: ProgramLibrary, now: datetime
) -> list[int]:
    """The reveal nudges (queued now) that a reply stored by `claim_sms_text` completes, if any.

    Most replies answer no reveal step and cost nothing here. For one that does, one query asks whether
    the other partner has answered the same step and whether both partners already have their reveal
    (each gets one per step, so a third answer changes nothing); only when a reveal is due are the rows
    loaded and the ORM reveal path run, in the caller's transaction, so it commits with the reply or not
    at all.
    """
    prompt = claimed.prompt
    if claimed.entry_id is None or prompt is None or not _is_reveal_step(programs, prompt):
        return []
    from service.domain.reveal import lock_reveals, reveal_if_both_answered

    lock_reveals(session, prompt.enrollment_id)  # before looking, so one of two concurrent answers sees both
    other_answered = (
        select(LogEntry.id)
        .join(Nudge, LogEntry.nudge_id == Nudge.id)
        .join(Partner, LogEntry.partner_id == Partner.id)
        .where(Partner.couple_id == claimed.couple_id, Partner.id != claimed.partner_id,
               Nudge.enrollment_id == prompt.enrollment_id, Nudge.step_day == prompt.step_day,
               Nudge.kind == NudgeKind.PROMPT)
        .exists()
    )
    revealed_to = (
        select(func.count(distinct(Nudge.partner_id)))
        .where(Nudge.enrollment_id == prompt.enrollment_id, Nudge.step_day == prompt.step_day,
               Nudge.kind == NudgeKind.REVEAL)
        .scalar_subquery()
    )
    answered, revealed = session.execute(select(other_answered, revealed_to)).one()
    if not answered or revealed >= 2:
        return []
    entry = session.get(LogEntry, claimed.entry_id)
    assert entry is not None
    reveals = reveal_if_both_answered(session, entry, settings=settings, programs=programs, now=now)
    return [n.id for n in reveals if n.status == NudgeStatus.QUEUED]


def _is_reveal_step(programs: ProgramLibrary, prompt: LinkedPrompt) -> bool:
    if prompt.program_key not in programs:
        return False
    program = programs.get(prompt.program_key)
    return 1 <= prompt.step_day <= program.days and program.step(prompt.step_day).reveal
