"""Replies become entries in the couple's shared log, each stored once and tied to its prompt.

Texts and emails share one implementation, in SQL, of each step: who a text is from
(`_ADDRESSED_PARTNER`), which prompt a reply answers (`_answered_prompt`) and the stored entry
(`_stored_entry`). A text takes them in one statement with its dedupe claim (`claim_sms`); an email, whose
sender its reply+ address names, in one of its own (`store_reply`). Either way, a reply that completes a
reveal step queues the reveals through `reveal_after_reply`.
"""

from __future__ import annotations

import functools
import json
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
    entry_id: int
    nudge_ids: list[int] = field(default_factory=list)


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
    """What `claim_sms` did: whether the MessageSid was new, who sent it, and what got stored."""

    claimed: bool
    partner_id: int | None
    couple_id: int | None
    consent: ConsentState | None
    entry_id: int | None
    prompt: LinkedPrompt | None


# Only enum constants are formatted into the SQL below; every value from a request is a bind parameter
# (psycopg's %(name)s style: the statements run with `exec_driver_sql`, as the driver's own SQL, since
# their text never changes and SQLAlchemy's compile step and cache lookup would be pure cost).
_CONFIRMED = ConsentState.CONFIRMED.value
_PENDING = ConsentState.PENDING.value

# The partner a text from %(phone)s (at %(now)s) is from: the confirmed partner whose prompt it answers (the
# latest sent within the longest reply window), else the newest confirmed partner in an active or pending
# couple, else the newest one invited (pending) there, else the newest partner with that number (the same
# person may belong to more than one couple over time; a signup side held because the person was already in
# a couple asks no consent, so it never comes first). Never simply the newest couple: a reply belongs with
# the prompt it answers.
_ADDRESSED_PARTNER = f"""
    SELECT p.id, p.couple_id, p.sms_consent
    FROM partners AS p
    LEFT JOIN LATERAL (
        SELECT true AS live FROM enrollments AS e
        WHERE e.couple_id = p.couple_id
          AND e.status IN ('{EnrollmentStatus.ACTIVE.value}', '{EnrollmentStatus.PENDING.value}')
        LIMIT 1
    ) AS enrolled ON true
    LEFT JOIN LATERAL (
        SELECT n.sent_at FROM nudges AS n
        WHERE n.partner_id = p.id
          AND n.kind = '{NudgeKind.PROMPT.value}'
          AND n.status IN ('{NudgeStatus.SENT.value}', '{NudgeStatus.DELIVERED.value}')
          AND n.sent_at <= %(now)s AND n.sent_at >= %(now)s - make_interval(hours => {MAX_REPLY_WINDOW_HOURS})
        ORDER BY n.sent_at DESC
        LIMIT 1
    ) AS prompted ON true
    WHERE p.phone_e164 = %(phone)s
    ORDER BY CASE WHEN p.sms_consent = '{_CONFIRMED}' THEN prompted.sent_at END DESC NULLS LAST,
             (p.sms_consent = '{_CONFIRMED}' AND enrolled.live IS NOT NULL) DESC,
             (p.sms_consent = '{_PENDING}' AND enrolled.live IS NOT NULL) DESC, p.id DESC
    LIMIT 1
"""  # noqa: S608


def _answered_prompt(partner_id: str) -> str:
    """The CTEs `latest` and `prompt`: the prompt a reply at %(now)s from `partner_id` (an SQL expression)
    answers, which is the latest prompt sent to that partner (any channel) if its program's reply window
    (%(windows)s, from `_reply_windows`) is still open. `prompt` holds no row when there is none."""
    return f"""latest AS (
    SELECT n.id, n.enrollment_id, n.step_day, n.sent_at, e.program_key
    FROM nudges AS n JOIN enrollments AS e ON e.id = n.enrollment_id
    WHERE n.partner_id = {partner_id}
      AND n.kind = '{NudgeKind.PROMPT.value}'
      AND n.status IN ('{NudgeStatus.SENT.value}', '{NudgeStatus.DELIVERED.value}')
      AND n.sent_at <= %(now)s AND n.sent_at >= %(now)s - make_interval(hours => {MAX_REPLY_WINDOW_HOURS})
    ORDER BY n.sent_at DESC
    LIMIT 1
), prompt AS (
    SELECT id, enrollment_id, step_day, program_key FROM latest
    WHERE sent_at >= %(now)s - make_interval(hours => COALESCE(
        (CAST(%(windows)s AS jsonb) ->> program_key)::int, {DEFAULT_REPLY_WINDOW_HOURS}))
)"""  # noqa: S608


def _stored_entry(couple_id: str, partner_id: str, rows_from: str) -> str:
    """The CTE `entry`: the reply stored in the couple's log, tied to `prompt` (%(body)s and the media
    come from `_entry_values`). `rows_from` follows the select list: a FROM and WHERE, or nothing."""
    return f"""entry AS (
    INSERT INTO log_entries (couple_id, partner_id, nudge_id, channel, provider_message_id, body, media_count,
                             media_types, received_at)
    SELECT {couple_id}, {partner_id}, (SELECT id FROM prompt), %(channel)s, %(sid)s, CAST(%(body)s AS bytea),
           %(media_count)s, %(media_types)s, %(now)s
    {rows_from}
    RETURNING id
)"""  # noqa: S608


# An inbound text in one round trip: the MessageSid is claimed (the dedupe record, naming the addressed
# partner and, for a keyword, the keyword) and a reply (%(keyword)s NULL) from a confirmed partner is
# stored. Data-modifying CTEs run once and see one snapshot; `entry` reads from `claim`, so a retried
# MessageSid (ON CONFLICT DO NOTHING, which waits for a concurrent first insert to commit) stores nothing.
_KEYWORD = "CAST(%(keyword)s AS varchar)"
_TEXT_PROMPT = _answered_prompt(f"(SELECT id FROM partner WHERE sms_consent = '{_CONFIRMED}')")  # noqa: S608
_TEXT_ENTRY = _stored_entry("partner.couple_id", "partner.id",
                            f"FROM partner, claim WHERE partner.sms_consent = '{_CONFIRMED}' AND {_KEYWORD} IS NULL")
_CLAIM_SMS = f"""
WITH partner AS ({_ADDRESSED_PARTNER}), claim AS (
    INSERT INTO inbound_messages (provider, provider_message_id, channel, partner_id, kind, keyword, received_at)
    SELECT %(provider)s, %(sid)s, %(channel)s, (SELECT id FROM partner),
           CASE WHEN {_KEYWORD} IS NOT NULL THEN 'keyword'
                WHEN EXISTS (SELECT FROM partner) THEN 'reply' ELSE 'unknown_sender' END,
           {_KEYWORD}, %(now)s
    ON CONFLICT (provider, provider_message_id) DO NOTHING
    RETURNING id
), {_TEXT_PROMPT}, {_TEXT_ENTRY}
SELECT (SELECT id FROM claim), partner.id, partner.couple_id, partner.sms_consent, (SELECT id FROM entry),
       prompt.id, prompt.enrollment_id, prompt.step_day, prompt.program_key
FROM (SELECT 1) AS one LEFT JOIN partner ON true LEFT JOIN prompt ON true
"""  # noqa: S608

# A reply from a partner already known (an email, routed by its reply+ address; the caller claimed its
# Message-ID), stored as a text's is.
_STORE_REPLY = f"""
WITH {_answered_prompt("%(partner_id)s")},
{_stored_entry("%(couple_id)s", "%(partner_id)s", "")}
SELECT entry.id, prompt.id, prompt.enrollment_id, prompt.step_day, prompt.program_key
FROM entry LEFT JOIN prompt ON true
"""  # noqa: S608

_ADDRESSED_PARTNER_ID = f"SELECT id FROM ({_ADDRESSED_PARTNER}) AS partner"  # noqa: S608


@functools.lru_cache(maxsize=8)
def _reply_windows(programs: ProgramLibrary) -> str:
    """Each program's reply window as JSON for `_answered_prompt`; programs are loaded once per process."""
    return json.dumps({program.key: program.reply_window_hours for program in programs})


def _entry_values(body: str | None, media_count: int, media_types: Sequence[str]) -> dict[str, Any]:
    """What `_stored_entry` stores of a reply: its words trimmed and encrypted, the count and types of media."""
    return {"body": None if body is None else active_cipher().encrypt(body.strip()[:MAX_REPLY_CHARS]),
            "media_count": media_count, "media_types": ",".join(media_types)[:255] or None}


def _linked(prompt_id: int | None, enrollment_id: int, step_day: int, program_key: str) -> LinkedPrompt | None:
    return LinkedPrompt(prompt_id, enrollment_id, step_day, program_key) if prompt_id is not None else None


def addressed_partner_id(session: Session, phone: str, *, now: datetime) -> int | None:
    """The partner a text from `phone` at `now` is from (as `claim_sms` finds them), or None for an unknown
    number."""
    session.flush()  # rows the caller added or changed in this transaction must be visible to the statement
    found = session.connection().exec_driver_sql(_ADDRESSED_PARTNER_ID, {"phone": phone, "now": now}).scalar()
    return None if found is None else int(found)


def claim_sms(
    session: Session, *, provider: str, message_id: str, phone: str, keyword: str | None, body: str,
    media_count: int, media_types: Sequence[str], programs: ProgramLibrary, now: datetime,
) -> ClaimedSms:
    """Claim an inbound text and, when it is a reply (no `keyword`) from a confirmed partner, store it.

    Reveals are the caller's: when the reply answers a reveal step, call `reveal_after_reply`.
    """
    session.flush()  # rows the caller added in this transaction must be visible to the statement
    row = session.connection().exec_driver_sql(_CLAIM_SMS, {
        "phone": phone, "provider": provider, "sid": message_id, "channel": Channel.SMS.value, "now": now,
        "keyword": keyword, "windows": _reply_windows(programs),
        **_entry_values(None if keyword is not None else body, media_count, media_types),
    }).one()
    claim_id, partner_id, couple_id, consent, entry_id, prompt_id, enrollment_id, step_day, program_key = row
    if entry_id is not None:
        note_stored_replies(session, Channel.SMS.value)
    return ClaimedSms(
        claimed=claim_id is not None, partner_id=partner_id, couple_id=couple_id,
        consent=ConsentState(consent) if consent is not None else None, entry_id=entry_id,
        prompt=_linked(prompt_id, enrollment_id, step_day, program_key),
    )


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
    """Store a reply from `partner`, tied to the prompt it answers, and queue any reveal it completes.

    Callers have already claimed `provider_message_id` in inbound_messages (insert-or-ignore), so a
    provider retry never reaches this point; the unique constraint on log entries is the backstop.
    """
    session.flush()
    row = session.connection().exec_driver_sql(_STORE_REPLY, {
        "partner_id": partner.id, "couple_id": partner.couple_id, "channel": channel.value,
        "sid": provider_message_id, "now": now, "windows": _reply_windows(programs),
        **_entry_values(body, media_count, media_types),
    }).one()
    entry_id, prompt_id, enrollment_id, step_day, program_key = row
    note_stored_replies(session, channel.value)
    nudge_ids = reveal_after_reply(
        session, entry_id=entry_id, partner_id=partner.id, couple_id=partner.couple_id,
        prompt=_linked(prompt_id, enrollment_id, step_day, program_key), settings=settings, programs=programs,
        now=now,
    )
    return ReplyOutcome(entry_id=entry_id, nudge_ids=nudge_ids)


def reveal_after_reply(
    session: Session, *, entry_id: int | None, partner_id: int | None, couple_id: int | None,
    prompt: LinkedPrompt | None, settings: Settings, programs: ProgramLibrary, now: datetime,
) -> list[int]:
    """The reveal nudges (queued now) that a stored reply completes, if any.

    Most replies answer no reveal step and cost nothing here. For one that does, one query asks whether
    the other partner has answered the same step and whether both partners already have their reveal
    (each gets one per step, so a third answer changes nothing); only when a reveal is due are the rows
    loaded and the ORM reveal path run, in the caller's transaction, so it commits with the reply or not
    at all.
    """
    if entry_id is None or prompt is None or not _is_reveal_step(programs, prompt):
        return []
    from service.domain.reveal import lock_reveals, reveal_if_both_answered

    lock_reveals(session, prompt.enrollment_id)  # before looking, so one of two concurrent answers sees both
    other_answered = (
        select(LogEntry.id)
        .join(Nudge, LogEntry.nudge_id == Nudge.id)
        .join(Partner, LogEntry.partner_id == Partner.id)
        .where(Partner.couple_id == couple_id, Partner.id != partner_id,
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
    entry = session.get(LogEntry, entry_id)
    assert entry is not None
    reveals = reveal_if_both_answered(session, entry, settings=settings, programs=programs, now=now)
    return [n.id for n in reveals if n.status == NudgeStatus.QUEUED]


def _is_reveal_step(programs: ProgramLibrary, prompt: LinkedPrompt) -> bool:
    if prompt.program_key not in programs:
        return False
    program = programs.get(prompt.program_key)
    return 1 <= prompt.step_day <= program.days and program.step(prompt.step_day).reveal
