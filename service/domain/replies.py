"""Replies become entries in the couple's shared log, each stored once and tied to its prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Channel, LogEntry, Nudge, NudgeKind, NudgeStatus, Partner
from service.programs import ProgramLibrary
from service.settings import Settings

MAX_REPLY_CHARS = 5000
DEFAULT_REPLY_WINDOW_HOURS = 20


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
        .where(Nudge.sent_at.is_not(None), Nudge.sent_at <= now, Nudge.sent_at >= now - timedelta(hours=72))
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
