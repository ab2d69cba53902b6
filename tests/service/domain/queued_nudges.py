"""Queued nudges for the send-step tests (plans, guard, composing, claims, failures): one queued nudge at a
time, its plan as a send job reads it, and its row read again."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from service.domain.send_plans import SendPlan, load_plans
from service.models import Channel, Couple, Nudge, NudgeKind, NudgeStatus
from service.runtime import Runtime

NOW = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # 09:00 in New York


def queued(db: Session, couple: Couple, *, channel: Channel = Channel.SMS, kind: NudgeKind = NudgeKind.PROMPT,
           position: int = 0, scheduled_for: datetime = NOW, step_day: int = 1) -> Nudge:
    nudge = Nudge(enrollment=couple.enrollments[0], partner=couple.partners[position], kind=kind,
                  step_day=step_day, channel=channel, status=NudgeStatus.QUEUED, scheduled_for=scheduled_for,
                  queued_at=scheduled_for)
    db.add(nudge)
    db.flush()
    return nudge


def plan_of(db: Session, runtime: Runtime, nudge: Nudge) -> SendPlan:
    [plan] = load_plans(db, [nudge.id], runtime.settings)
    return plan


def status_of(db: Session, nudge: Nudge) -> Nudge:
    db.expire(nudge)
    return nudge
