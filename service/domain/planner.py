"""One scheduler pass: due steps become queued nudges, due retries are queued again, and nothing in
flight is forgotten. The pass reads only what is due, through indexes, in bounded batches.

Rules, per partner schedule (one row per partner and enrollment, `next_send_at` indexed):
- a step is planned when its `next_send_at` has come; each confirmed channel gets one nudge, unique per
  (enrollment, kind, step, partner, channel), inserted with ON CONFLICT DO NOTHING;
- a step a whole day overdue (the scheduler was down) is recorded `skipped`, and the schedule moves on
  to the newest step that is still due today, so nothing goes out late in a bunch;
- a paused partner's program waits: the step moves to the first local day after the pause;
- at most one step per partner per local day, across all their enrollments;
- the last step closes the schedule, and a `program_complete` nudge inviting the couple to a next
  program waits (`scheduled`) for the partner's send time the next local day.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Insert, select, text, update
from sqlalchemy.orm import Session, selectinload

from service.db import affected_rows
from service.domain.scheduling import (
    UnknownTimeZone,
    first_local_date_after,
    is_quiet_now,
    local_date,
    send_instant,
    zone,
)
from service.models import (
    Channel,
    ConsentState,
    ControlFlag,
    Enrollment,
    EnrollmentStatus,
    Nudge,
    NudgeKind,
    NudgeStatus,
    Partner,
    PartnerSchedule,
)
from service.programs import ProgramLibrary

log = logging.getLogger(__name__)

OVERDUE_AFTER = timedelta(days=1)
# A queued nudge whose send job is gone from Redis (flushed, lost, failed for good) is enqueued again
# after this long; the claim in the send job makes a second enqueue harmless.
STALE_QUEUED_AFTER = timedelta(minutes=2)
# Provider calls time out after seconds; a nudge `sending` this long belongs to a worker that died.
STALE_SENDING_AFTER = timedelta(minutes=5)
SENDING_PAUSED_FLAG = "sending_paused"
LAST_PASS_FLAG = "scheduler_last_pass"  # noqa: S105 - a flag name, not a secret
SCHEDULED_KINDS = (NudgeKind.PROMPT, NudgeKind.PROGRAM_COMPLETE)
# Statuses that mean a partner got (or is getting) something that local day.
_OCCUPYING = (NudgeStatus.SCHEDULED, NudgeStatus.QUEUED, NudgeStatus.SENDING, NudgeStatus.SENT,
              NudgeStatus.DELIVERED)


_PLANNER_PARTNER_COLUMNS = (
    Partner.timezone, Partner.preferred_time, Partner.quiet_start, Partner.quiet_end, Partner.sms_consent,
    Partner.email_consent, Partner.paused_until,
)


@dataclass
class PassReport:
    created: int = 0
    skipped: int = 0
    deferred: int = 0
    completed: int = 0
    invited: int = 0
    parked: int = 0
    requeued: int = 0
    to_review: int = 0
    to_enqueue: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "skipped": self.skipped, "deferred": self.deferred,
                "completed": self.completed, "invited": self.invited, "parked": self.parked,
                "requeued": self.requeued, "to_review": self.to_review, "enqueued": len(self.to_enqueue)}


def sending_paused(session: Session) -> bool:
    flag = session.get(ControlFlag, SENDING_PAUSED_FLAG)
    return flag is not None and flag.value == "1"


@dataclass
class _Batch:
    programs: ProgramLibrary
    now: datetime
    report: PassReport
    busy_days: set[tuple[int, date]]
    rows: list[dict[str, Any]] = field(default_factory=list)


def plan_due_steps(
    session: Session, programs: ProgramLibrary, now: datetime, report: PassReport, *, limit: int = 1000
) -> int:
    """Turn up to `limit` due schedules into nudges; returns how many schedules it handled."""
    schedules = session.scalars(
        select(PartnerSchedule)
        .where(PartnerSchedule.next_send_at <= now)
        .order_by(PartnerSchedule.next_send_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=PartnerSchedule)
        .options(
            # The planner needs when and where, never who: names and tokens stay encrypted and unread.
            selectinload(PartnerSchedule.partner).load_only(*_PLANNER_PARTNER_COLUMNS),
            selectinload(PartnerSchedule.enrollment).load_only(Enrollment.status, Enrollment.program_key,
                                                                Enrollment.ended_at)
            .selectinload(Enrollment.schedules).load_only(PartnerSchedule.next_send_at),
        )
    ).all()
    if not schedules:
        return 0
    batch = _Batch(programs, now, report, _busy_days(session, schedules))
    for schedule in schedules:
        try:
            _plan_one(batch, schedule)
        except (UnknownTimeZone, KeyError, IndexError) as exc:
            # One broken row must not stop everyone else's prompts: park it where an operator sees it.
            log.error("schedule parked", extra={"schedule_id": schedule.id, "reason": type(exc).__name__})
            schedule.next_send_at = None
            report.parked += 1
    session.flush()
    report.to_enqueue.extend(insert_nudges(session, batch.rows))
    return len(schedules)


def _busy_days(session: Session, schedules: Sequence[PartnerSchedule]) -> set[tuple[int, date]]:
    """(partner, local day) pairs that already hold a scheduled message, from any enrollment."""
    partners = {s.partner_id: s.partner for s in schedules}
    due = [s.next_send_at for s in schedules if s.next_send_at is not None]
    rows = session.execute(
        select(Nudge.partner_id, Nudge.scheduled_for).where(
            Nudge.partner_id.in_(list(partners)),
            Nudge.kind.in_(list(SCHEDULED_KINDS)),
            Nudge.status.in_(list(_OCCUPYING)),
            Nudge.scheduled_for >= min(due) - timedelta(days=2),
            Nudge.scheduled_for <= max(due) + timedelta(days=2),
        )
    ).all()
    busy = set()
    for partner_id, scheduled_for in rows:
        try:
            busy.add((partner_id, local_date(partners[partner_id], scheduled_for)))
        except UnknownTimeZone:
            continue
    return busy


def _plan_one(batch: _Batch, schedule: PartnerSchedule) -> None:
    enrollment, partner, now = schedule.enrollment, schedule.partner, batch.now
    if enrollment.status != EnrollmentStatus.ACTIVE or enrollment.program_key not in batch.programs:
        schedule.next_send_at = None
        return
    program = batch.programs.get(enrollment.program_key)
    zone(partner.timezone)
    while schedule.next_send_at is not None and schedule.next_send_at <= now:
        due_at = schedule.next_send_at
        assert schedule.first_local_date is not None
        due_local = local_date(partner, due_at)
        channels = [c for c in (Channel.SMS, Channel.EMAIL) if partner.consent(c) is ConsentState.CONFIRMED]
        if schedule.next_day > program.days:
            # Reached past the end without planning the last step here (a SKIP of the last day, say).
            _finish(batch, schedule, channels, due_at)
            return
        paused = partner.paused_until is not None and partner.paused_until > now
        if paused or (partner.id, due_local) in batch.busy_days:
            resume = (
                first_local_date_after(partner, partner.paused_until)
                if paused and partner.paused_until is not None else due_local
            )
            _move_to(schedule, partner, max(resume, due_local + timedelta(days=1)), due_local)
            batch.report.deferred += 1
            continue
        overdue = now - due_at >= OVERDUE_AFTER
        late_into_quiet = not overdue and is_quiet_now(partner.timezone, partner.quiet_start, partner.quiet_end, now)
        if overdue or late_into_quiet:
            reason = "a whole day overdue" if overdue else "planned late, into quiet hours"
            for channel in channels:
                batch.rows.append(_row(schedule, NudgeKind.PROMPT, schedule.next_day, channel, due_at,
                                       NudgeStatus.SKIPPED, reason, now))
                batch.report.skipped += 1
        else:
            for channel in channels:
                batch.rows.append(_row(schedule, NudgeKind.PROMPT, schedule.next_day, channel, due_at,
                                       NudgeStatus.QUEUED, None, now))
                batch.report.created += 1
            if channels:
                schedule.last_sent_local_date = due_local
                batch.busy_days.add((partner.id, due_local))
        schedule.next_day += 1
        if schedule.next_day > program.days:
            invite_at = send_instant(partner, due_local + timedelta(days=1))
            _finish(batch, schedule, channels, invite_at)
            return
        next_local = schedule.first_local_date + timedelta(days=schedule.next_day - 1)
        schedule.next_send_at = send_instant(partner, max(next_local, due_local + timedelta(days=1)))
        if not overdue:
            return


def _move_to(schedule: PartnerSchedule, partner: Any, day: date, due_local: date) -> None:
    """Hold the program where it is: the same step moves to local `day`, and later steps with it."""
    assert schedule.first_local_date is not None
    schedule.first_local_date += day - due_local
    schedule.next_send_at = send_instant(partner, day)


def _finish(batch: _Batch, schedule: PartnerSchedule, channels: list[Channel], invite_at: datetime) -> None:
    """The last step is planned: close this schedule and invite the partner to a next program."""
    program = batch.programs.get(schedule.enrollment.program_key)
    schedule.next_send_at = None
    for channel in channels:
        batch.rows.append(_row(schedule, NudgeKind.PROGRAM_COMPLETE, program.days + 1, channel, invite_at,
                               NudgeStatus.SCHEDULED, "invitation to a next program", None))
        batch.report.invited += 1
    enrollment = schedule.enrollment
    if enrollment.status == EnrollmentStatus.ACTIVE and all(s.next_send_at is None for s in enrollment.schedules):
        enrollment.status, enrollment.ended_at = EnrollmentStatus.COMPLETED, batch.now
        batch.report.completed += 1


def _row(
    schedule: PartnerSchedule, kind: NudgeKind, day: int, channel: Channel, scheduled_for: datetime,
    status: NudgeStatus, reason: str | None, queued_at: datetime | None,
) -> dict[str, Any]:
    return {
        "enrollment_id": schedule.enrollment_id, "partner_id": schedule.partner_id, "kind": kind.value,
        "step_day": day, "channel": channel.value, "status": status.value, "status_reason": reason,
        "scheduled_for": scheduled_for, "queued_at": queued_at, "attempts": 0, "needs_review": False,
    }


def _insert(session: Session) -> Insert:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(Nudge).on_conflict_do_nothing(
            index_elements=["enrollment_id", "kind", "step_day", "partner_id", "channel"]
        )
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(Nudge).on_conflict_do_nothing(
        index_elements=["enrollment_id", "kind", "step_day", "partner_id", "channel"]
    )


# On PostgreSQL the rows travel as one array per column: a query text that does not grow with the batch.
_PG_INSERT_NUDGES = text(
    "INSERT INTO nudges (enrollment_id, partner_id, kind, step_day, channel, status, status_reason, "
    "scheduled_for, queued_at, attempts, needs_review) "
    "SELECT * FROM unnest(CAST(:enrollment_id AS integer[]), CAST(:partner_id AS integer[]), "
    "CAST(:kind AS varchar[]), CAST(:step_day AS integer[]), CAST(:channel AS varchar[]), "
    "CAST(:status AS varchar[]), CAST(:status_reason AS varchar[]), CAST(:scheduled_for AS timestamptz[]), "
    "CAST(:queued_at AS timestamptz[]), CAST(:attempts AS integer[]), CAST(:needs_review AS boolean[])) "
    "ON CONFLICT (enrollment_id, kind, step_day, partner_id, channel) DO NOTHING RETURNING id, status"
)


def insert_nudges(session: Session, rows: list[dict[str, Any]]) -> list[int]:
    """Insert nudges, keeping any that already exist; returns the ids of the new `queued` ones."""
    if not rows:
        return []
    if session.get_bind().dialect.name == "postgresql":
        columns = {name: [row[name] for row in rows] for name in rows[0]}
        result = session.execute(_PG_INSERT_NUDGES, columns)
    else:
        result = session.execute(_insert(session).returning(Nudge.id, Nudge.status), rows)
    return sorted(nudge_id for nudge_id, status in result.all() if status == NudgeStatus.QUEUED)


def release_due_retries(session: Session, now: datetime, report: PassReport, *, limit: int = 5000) -> list[int]:
    """Nudges waiting (for a retry, or for their time) whose time has come go back to `queued`."""
    ids = list(session.scalars(
        select(Nudge.id).where(Nudge.status == NudgeStatus.SCHEDULED, Nudge.scheduled_for <= now)
        .order_by(Nudge.scheduled_for).limit(limit).with_for_update(skip_locked=True)
    ))
    if ids:
        session.execute(
            update(Nudge).where(Nudge.id.in_(ids), Nudge.status == NudgeStatus.SCHEDULED)
            .values(status=NudgeStatus.QUEUED, queued_at=now)
        )
        report.requeued += len(ids)
        report.to_enqueue.extend(ids)
    return ids


def stale_queued(session: Session, now: datetime, *, limit: int = 5000) -> list[tuple[int, str | None]]:
    """Queued nudges old enough that their send job may be gone: (nudge id, the job it was given to)."""
    rows = session.execute(
        select(Nudge.id, Nudge.send_job_id)
        .where(Nudge.status == NudgeStatus.QUEUED, Nudge.queued_at < now - STALE_QUEUED_AFTER)
        .order_by(Nudge.id).limit(limit)
    ).all()
    return [(nudge_id, job_id) for nudge_id, job_id in rows]


def requeue(session: Session, nudge_ids: list[int], now: datetime, report: PassReport) -> list[int]:
    """Mark stale queued nudges as queued afresh, to be enqueued again after the commit."""
    if not nudge_ids:
        return []
    session.execute(
        update(Nudge).where(Nudge.id.in_(nudge_ids), Nudge.status == NudgeStatus.QUEUED).values(queued_at=now)
    )
    report.requeued += len(nudge_ids)
    report.to_enqueue.extend(nudge_ids)
    return nudge_ids


def mark_stale_sending_for_review(session: Session, now: datetime, report: PassReport) -> int:
    """A nudge stuck in `sending` may or may not have reached the provider: an operator decides."""
    result = session.execute(
        update(Nudge)
        .where(Nudge.status == NudgeStatus.SENDING, Nudge.sending_at < now - STALE_SENDING_AFTER,
               Nudge.needs_review.is_(False))
        .values(needs_review=True, error_code="outcome_unknown",
                status_reason="worker stopped mid-send; outcome unknown, not resent")
    )
    count = affected_rows(result)
    report.to_review += count
    return count


def record_pass(session: Session, now: datetime) -> None:
    flag = session.get(ControlFlag, LAST_PASS_FLAG)
    if flag is None:
        session.add(ControlFlag(key=LAST_PASS_FLAG, value=now.isoformat(), updated_at=now))
    else:
        flag.value, flag.updated_at = now.isoformat(), now
