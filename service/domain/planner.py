"""One scheduler pass: due steps become queued nudges, due retries are queued again, and nothing in
flight is forgotten. The pass reads only what is due, through indexes, in bounded batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db import affected_rows
from service.domain.scheduling import local_date, send_instant
from service.models import (
    Channel,
    ConsentState,
    ControlFlag,
    EnrollmentStatus,
    Nudge,
    NudgeKind,
    NudgeStatus,
    PartnerSchedule,
)
from service.programs import ProgramLibrary

OVERDUE_AFTER = timedelta(days=1)
STALE_QUEUED_AFTER = timedelta(minutes=5)
STALE_SENDING_AFTER = timedelta(minutes=10)
SENDING_PAUSED_FLAG = "sending_paused"
LAST_PASS_FLAG = "scheduler_last_pass"  # noqa: S105 - a flag name, not a secret


@dataclass
class PassReport:
    created: int = 0
    skipped: int = 0
    deferred: int = 0
    completed: int = 0
    requeued: int = 0
    to_review: int = 0
    spooled_replies: int = 0
    to_enqueue: list[int] = field(default_factory=list)
    new_nudges: list[Nudge] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "skipped": self.skipped, "deferred": self.deferred,
                "completed": self.completed, "requeued": self.requeued, "to_review": self.to_review,
                "spooled_replies": self.spooled_replies,
                "enqueued": len(self.to_enqueue)}


def sending_paused(session: Session) -> bool:
    flag = session.get(ControlFlag, SENDING_PAUSED_FLAG)
    return flag is not None and flag.value == "1"


def plan_due_steps(
    session: Session, programs: ProgramLibrary, now: datetime, report: PassReport, *, limit: int = 1000
) -> int:
    """Turn up to `limit` due schedules into nudges; returns how many schedules it handled."""
    query = (
        select(PartnerSchedule)
        .where(PartnerSchedule.next_send_at <= now)
        .order_by(PartnerSchedule.next_send_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    schedules = session.scalars(query).all()
    for schedule in schedules:
        _plan_one(session, schedule, programs, now, report)
    session.flush()
    report.to_enqueue.extend(n.id for n in report.new_nudges if n.status == NudgeStatus.QUEUED)
    report.new_nudges.clear()
    return len(schedules)


def _plan_one(
    session: Session, schedule: PartnerSchedule, programs: ProgramLibrary, now: datetime, report: PassReport
) -> None:
    enrollment, partner = schedule.enrollment, schedule.partner
    due_at = schedule.next_send_at
    assert due_at is not None and schedule.first_local_date is not None
    if enrollment.status != EnrollmentStatus.ACTIVE or enrollment.program_key not in programs:
        schedule.next_send_at = None
        return
    program = programs.get(enrollment.program_key)
    if schedule.next_day > program.days:
        schedule.next_send_at = None
        _complete_if_done(enrollment, now, report)
        return
    due_local = local_date(partner, due_at)
    paused = partner.paused_until is not None and partner.paused_until > now
    if paused or schedule.last_sent_local_date == due_local:
        # Hold the program where it is: the same step moves to the next local day.
        schedule.first_local_date += timedelta(days=1)
        schedule.next_send_at = send_instant(partner, due_local + timedelta(days=1))
        report.deferred += 1
        return
    channels = [c for c in (Channel.SMS, Channel.EMAIL) if partner.consent(c) is ConsentState.CONFIRMED]
    overdue = now - due_at >= OVERDUE_AFTER
    for channel in channels:
        exists = session.scalar(
            select(Nudge.id).where(
                Nudge.enrollment_id == enrollment.id, Nudge.kind == NudgeKind.PROMPT,
                Nudge.step_day == schedule.next_day, Nudge.partner_id == partner.id, Nudge.channel == channel,
            )
        )
        if exists:
            continue
        nudge = Nudge(
            enrollment=enrollment, partner=partner, kind=NudgeKind.PROMPT, step_day=schedule.next_day,
            channel=channel, scheduled_for=due_at,
        )
        if overdue:
            nudge.status, nudge.status_reason = NudgeStatus.SKIPPED, "a whole day overdue"
            report.skipped += 1
        else:
            nudge.status, nudge.queued_at = NudgeStatus.QUEUED, now
            report.created += 1
        session.add(nudge)
        report.new_nudges.append(nudge)
    if not overdue and channels:
        schedule.last_sent_local_date = due_local
    schedule.next_day += 1
    if schedule.next_day > program.days:
        schedule.next_send_at = None
        _complete_if_done(enrollment, now, report)
    else:
        next_local = schedule.first_local_date + timedelta(days=schedule.next_day - 1)
        schedule.next_send_at = send_instant(partner, max(next_local, due_local + timedelta(days=1)))


def _complete_if_done(enrollment: object, now: datetime, report: PassReport) -> None:
    from service.models import Enrollment

    assert isinstance(enrollment, Enrollment)
    if all(s.next_send_at is None for s in enrollment.schedules) and enrollment.status == EnrollmentStatus.ACTIVE:
        enrollment.status, enrollment.ended_at = EnrollmentStatus.COMPLETED, now
        report.completed += 1


def release_due_retries(session: Session, now: datetime, report: PassReport, *, limit: int = 5000) -> None:
    """Nudges waiting (for a retry or a transactional send) whose time has come go back to `queued`."""
    ids = list(session.scalars(
        select(Nudge.id).where(Nudge.status == NudgeStatus.SCHEDULED, Nudge.scheduled_for <= now)
        .order_by(Nudge.scheduled_for).limit(limit).with_for_update(skip_locked=True)
    ))
    if ids:
        session.execute(update(Nudge).where(Nudge.id.in_(ids)).values(status=NudgeStatus.QUEUED, queued_at=now))
        report.requeued += len(ids)
    report.to_enqueue.extend(ids)


def recover_in_flight(session: Session, now: datetime, report: PassReport, *, limit: int = 5000) -> None:
    """Redis may have lost queued work: enqueue stale `queued` nudges again (the claim makes that safe).
    A nudge stuck in `sending` may or may not have reached the provider, so it goes to review instead."""
    stale = list(session.scalars(
        select(Nudge.id).where(Nudge.status == NudgeStatus.QUEUED, Nudge.queued_at < now - STALE_QUEUED_AFTER)
        .limit(limit).with_for_update(skip_locked=True)
    ))
    if stale:
        session.execute(update(Nudge).where(Nudge.id.in_(stale)).values(queued_at=now))
        report.requeued += len(stale)
        report.to_enqueue.extend(stale)
    result = session.execute(
        update(Nudge)
        .where(Nudge.status == NudgeStatus.SENDING, Nudge.sending_at < now - STALE_SENDING_AFTER,
               Nudge.needs_review.is_(False))
        .values(needs_review=True, status_reason="worker stopped mid-send; outcome unknown")
    )
    report.to_review += affected_rows(result)


def record_pass(session: Session, now: datetime) -> None:
    flag = session.get(ControlFlag, LAST_PASS_FLAG)
    if flag is None:
        session.add(ControlFlag(key=LAST_PASS_FLAG, value=now.isoformat(), updated_at=now))
    else:
        flag.value, flag.updated_at = now.isoformat(), now
