"""The shared log as one partner sees it: prompts and both partners' answers, grouped by day."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.crypto import token_digest
from service.domain.reveal import is_reveal_prompt
from service.models import Channel, LogEntry, Nudge, NudgeKind, NudgeStatus, Partner
from service.programs import ProgramLibrary


def partner_by_log_token(session: Session, token: str) -> Partner | None:
    if not token or len(token) > 128:
        return None
    return session.scalar(select(Partner).where(Partner.log_token_hash == token_digest(token)))


@dataclass
class LogAnswer:
    author: str
    mine: bool
    channel: str
    received_at: datetime
    body: str | None  # None while a reveal step waits for the viewer's own answer
    media_count: int = 0


@dataclass
class LogPrompt:
    to: str
    text: str


@dataclass
class LogDay:
    day: date
    title: str
    prompts: list[LogPrompt] = field(default_factory=list)
    answers: list[LogAnswer] = field(default_factory=list)
    reveal_pending: bool = False


def _prompt_text(nudge: Nudge) -> str:
    text = nudge.body_text or ""
    if nudge.channel == Channel.EMAIL:
        text = text.split("\n--\n", 1)[0].strip()
    return text


def build_log(session: Session, viewer: Partner, programs: ProgramLibrary) -> list[LogDay]:
    couple = viewer.couple
    zone = ZoneInfo(viewer.timezone)
    names = {p.id: p.first_name for p in couple.partners}
    partner_ids = list(names)
    prompts = session.scalars(
        select(Nudge).where(
            Nudge.partner_id.in_(partner_ids), Nudge.kind == NudgeKind.PROMPT,
            Nudge.status.in_([NudgeStatus.SENT, NudgeStatus.DELIVERED]),
        ).order_by(Nudge.sent_at)
    ).all()
    entries = session.scalars(
        select(LogEntry).where(LogEntry.couple_id == couple.id).order_by(LogEntry.received_at)
    ).all()
    days: dict[tuple[str, int | str], LogDay] = {}
    for nudge in prompts:
        key: tuple[str, int | str] = ("step", f"{nudge.enrollment_id}:{nudge.step_day}")
        sent = (nudge.sent_at or nudge.scheduled_for).astimezone(zone).date()
        program = nudge.enrollment.program_key
        title = f"Day {nudge.step_day}"
        if program in programs:
            title = f"{programs.get(program).title}, day {nudge.step_day}"
        log_day = days.setdefault(key, LogDay(day=sent, title=title))
        if not any(p.to == names[nudge.partner_id] for p in log_day.prompts):
            log_day.prompts.append(LogPrompt(to=names[nudge.partner_id], text=_prompt_text(nudge)))
    answered_steps = {
        (e.nudge.enrollment_id, e.nudge.step_day) for e in entries if e.nudge is not None and e.partner_id == viewer.id
    }
    for entry in entries:
        answered = entry.nudge
        if answered is not None and answered.kind == NudgeKind.PROMPT:
            key = ("step", f"{answered.enrollment_id}:{answered.step_day}")
        else:
            key = ("date", entry.received_at.astimezone(zone).date().isoformat())
        log_day = days.setdefault(
            key, LogDay(day=entry.received_at.astimezone(zone).date(), title="Notes between prompts")
        )
        hidden = (
            entry.partner_id != viewer.id and answered is not None and is_reveal_prompt(answered, programs)
            and (answered.enrollment_id, answered.step_day) not in answered_steps
        )
        log_day.reveal_pending = log_day.reveal_pending or hidden
        log_day.answers.append(LogAnswer(
            author=names.get(entry.partner_id, "?"), mine=entry.partner_id == viewer.id, channel=entry.channel,
            received_at=entry.received_at.astimezone(zone), body=None if hidden else entry.body,
            media_count=entry.media_count,
        ))
    return sorted(days.values(), key=lambda d: (d.day, d.title))
