"""What a send job works from: each queued nudge of its batch read once as a `SendPlan` (who it goes to,
on which channel, under which partner's rules), the outcomes a send can end in, and the note of which job
each nudge was given to. The steps that follow, in order, are described in jobs.send: the send-time guard
(service.domain.send_guard), the message (service.domain.composing), the claim and the record of what was
sent (service.domain.claims), and what a failure means (service.domain.send_failures).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, time

from sqlalchemy import LargeBinary, and_, select, text, type_coerce
from sqlalchemy.orm import Session, aliased

from service.crypto import open_text
from service.db import id_in
from service.models import Channel, Enrollment, Nudge, NudgeKind, NudgeStatus, Partner
from service.settings import Settings

# Scheduled content honours the partner's day: pause, quiet hours, lateness. Transactional messages
# (confirmations, keyword answers) go whenever they are asked for.
PAUSABLE_KINDS = frozenset({NudgeKind.PROMPT, NudgeKind.PROGRAM_COMPLETE, NudgeKind.REPLY_REMINDER})
TIMED_KINDS = frozenset({NudgeKind.PROMPT, NudgeKind.PROGRAM_COMPLETE})


class SendOutcome(enum.StrEnum):
    SENT = "sent"
    FAILED = "failed"
    RETRY = "retry"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    RESCHEDULED = "rescheduled"
    REVIEW = "review"
    GONE = "gone"  # no longer queued: sent, cancelled or claimed by another job
    PAUSED = "paused"  # the kill switch is on: left queued


@dataclass(frozen=True)
class SendPlan:
    """One nudge as read at the start of its batch: what to send, to whom, under which rules."""

    nudge_id: int
    kind: NudgeKind
    channel: Channel
    partner_id: int
    address: str | None
    scheduled_for: datetime
    attempts: int
    timezone: str
    preferred_time: time
    quiet_start: time
    quiet_end: time
    name: str
    other_name: str
    reply_to: str
    program_key: str
    step_day: int
    subject: str | None = None
    body_text: str | None = None
    body_html: str | None = None


def reply_address(settings: Settings, reply_token: str) -> str:
    """The address a partner's emails reply to: their replies come back routed by its token."""
    return f"reply+{reply_token}@{settings.inbound_email_domain}"


def load_plans(session: Session, nudge_ids: list[int], settings: Settings) -> list[SendPlan]:
    """The batch's nudges still `queued`, with what each send needs, in one query."""
    if not nudge_ids:
        return []
    me, other = aliased(Partner), aliased(Partner)
    rows = session.execute(
        select(Nudge.id, Nudge.kind, Nudge.channel, Nudge.partner_id, Nudge.scheduled_for, Nudge.attempts,
               Nudge.step_day, Nudge.subject, Nudge.body_text, Nudge.body_html, Enrollment.program_key,
               me.phone_e164, me.email, me.timezone, me.preferred_time, me.quiet_start, me.quiet_end,
               # Names come encrypted and are opened below, once each: a batch names every partner twice
               # or more (their own nudges, and their partner's).
               type_coerce(me.first_name, LargeBinary).label("name"), me.reply_token,
               type_coerce(other.first_name, LargeBinary).label("other_name"))
        .join(me, me.id == Nudge.partner_id)
        .join(Enrollment, Enrollment.id == Nudge.enrollment_id)
        .outerjoin(other, and_(other.couple_id == me.couple_id, other.id != me.id))
        .where(id_in(Nudge.id, nudge_ids), Nudge.status == NudgeStatus.QUEUED)
        .order_by(Nudge.id)
    ).all()
    plans, seen = [], set()
    names: dict[bytes, str] = {}

    def opened(token: bytes | None) -> str | None:
        if token is None:
            return None
        token = bytes(token)
        if token not in names:
            names[token] = open_text(token)
        return names[token]

    for (nudge_id, kind, channel, partner_id, scheduled_for, attempts, step_day, subject, body_text, body_html,
         program_key, phone, email, timezone, preferred, quiet_start, quiet_end, sealed_name, reply_token,
         sealed_other) in rows:
        if nudge_id in seen:
            continue
        seen.add(nudge_id)
        name, other_name = opened(sealed_name) or "", opened(sealed_other)
        channel = Channel(channel)
        plans.append(SendPlan(
            nudge_id=nudge_id, kind=NudgeKind(kind), channel=channel, partner_id=partner_id,
            address=phone if channel is Channel.SMS else email, scheduled_for=scheduled_for, attempts=attempts,
            timezone=timezone, preferred_time=preferred, quiet_start=quiet_start, quiet_end=quiet_end,
            name=name, other_name=other_name or name, reply_to=reply_address(settings, reply_token),
            program_key=program_key, step_day=step_day, subject=subject, body_text=body_text, body_html=body_html,
        ))
    return plans


_REMEMBER_JOBS = text(
    "UPDATE nudges AS n SET send_job_id = v.job_id "
    "FROM unnest(CAST(:ids AS integer[]), CAST(:jobs AS varchar[])) AS v(id, job_id) "
    "WHERE n.id = v.id AND n.status = 'queued'"
)


def remember_jobs(session: Session, assignments: list[tuple[int, str]]) -> None:
    """Note which send job each queued nudge was given to (the scheduler checks those jobs still exist)."""
    if not assignments:
        return
    session.connection().execute(_REMEMBER_JOBS, {"ids": [i for i, _ in assignments],
                                                  "jobs": [j for _, j in assignments]})
