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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from service.db import affected_rows, id_in
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
    # (outcome, channel, kind) of nudges the pass settled itself, for /metrics once their commit is done.
    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "skipped": self.skipped, "deferred": self.deferred,
                "completed": self.completed, "invited": self.invited, "parked": self.parked,
                "requeued": self.requeued, "to_review": self.to_review, "enqueued": len(self.to_enqueue)}


def sending_paused(session: Session) -> bool:
    flag = session.get(ControlFlag, SENDING_PAUSED_FLAG)
    return flag is not None and flag.value == "1"


@dataclass(slots=True)
class _Due:
    """One due schedule as the planner reads and changes it: a plain row, not an ORM object, so a batch's
    changes are written back in one statement instead of one UPDATE per schedule."""

    id: int
    enrollment_id: int
    partner_id: int
    next_day: int
    first_local_date: date | None
    next_send_at: datetime | None
    # The partner's clock and consent (never who they are: names and tokens stay encrypted and unread).
    timezone: str
    preferred_time: time
    quiet_start: time
    quiet_end: time
    sms_consent: str
    email_consent: str
    paused_until: datetime | None
    enrollment_status: str
    program_key: str

    def consent(self, channel: Channel) -> ConsentState:
        return ConsentState(self.sms_consent if channel is Channel.SMS else self.email_consent)


_DUE_COLUMNS = (
    PartnerSchedule.id, PartnerSchedule.enrollment_id, PartnerSchedule.partner_id, PartnerSchedule.next_day,
    PartnerSchedule.first_local_date, PartnerSchedule.next_send_at,
    Partner.timezone, Partner.preferred_time, Partner.quiet_start, Partner.quiet_end, Partner.sms_consent,
    Partner.email_consent, Partner.paused_until, Enrollment.status.label("enrollment_status"),
    Enrollment.program_key,
)


@dataclass
class _Batch:
    programs: ProgramLibrary
    now: datetime
    report: PassReport
    busy_days: set[tuple[int, date]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    finishing: list[_Due] = field(default_factory=list)  # schedules this batch closed


def plan_due_steps(
    session: Session, programs: ProgramLibrary, now: datetime, report: PassReport, *, limit: int = 1000
) -> int:
    """Turn up to `limit` due schedules into nudges; returns how many schedules it handled.

    Reads the due schedules (locked, skipping any another pass holds) with their partner's clock in one
    query, plans them in memory, then writes every schedule back in one set-based UPDATE."""
    schedules = [_Due(**row._asdict()) for row in session.execute(
        select(*_DUE_COLUMNS)
        .join(Partner, Partner.id == PartnerSchedule.partner_id)
        .join(Enrollment, Enrollment.id == PartnerSchedule.enrollment_id)
        .where(PartnerSchedule.next_send_at <= now)
        .order_by(PartnerSchedule.next_send_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=PartnerSchedule)
    )]
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
    update_schedules(session, schedules)
    _complete_enrollments(session, batch)
    report.to_enqueue.extend(insert_nudges(session, batch.rows))
    return len(schedules)


def _busy_days(session: Session, schedules: Sequence[_Due]) -> set[tuple[int, date]]:
    """(partner, local day) pairs that already hold a scheduled message, from any enrollment."""
    partners = {s.partner_id: s for s in schedules}
    due = [s.next_send_at for s in schedules if s.next_send_at is not None]
    rows = session.execute(
        select(Nudge.partner_id, Nudge.scheduled_for).where(
            id_in(Nudge.partner_id, list(partners)),
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


def _plan_one(batch: _Batch, schedule: _Due) -> None:
    partner, now = schedule, batch.now
    if schedule.enrollment_status != EnrollmentStatus.ACTIVE or schedule.program_key not in batch.programs:
        schedule.next_send_at = None
        return
    program = batch.programs.get(schedule.program_key)
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
        if paused or (schedule.partner_id, due_local) in batch.busy_days:
            resume = (
                first_local_date_after(partner, partner.paused_until)
                if paused and partner.paused_until is not None else due_local
            )
            _move_to(schedule, max(resume, due_local + timedelta(days=1)), due_local)
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
                batch.report.outcomes["skipped", channel.value, NudgeKind.PROMPT.value] += 1
        else:
            for channel in channels:
                batch.rows.append(_row(schedule, NudgeKind.PROMPT, schedule.next_day, channel, due_at,
                                       NudgeStatus.QUEUED, None, now))
                batch.report.created += 1
            if channels:
                batch.busy_days.add((schedule.partner_id, due_local))
        schedule.next_day += 1
        if schedule.next_day > program.days:
            invite_at = send_instant(partner, due_local + timedelta(days=1))
            _finish(batch, schedule, channels, invite_at)
            return
        next_local = schedule.first_local_date + timedelta(days=schedule.next_day - 1)
        schedule.next_send_at = send_instant(partner, max(next_local, due_local + timedelta(days=1)))
        if not overdue:
            return


def _move_to(schedule: _Due, day: date, due_local: date) -> None:
    """Hold the program where it is: the same step moves to local `day`, and later steps with it."""
    assert schedule.first_local_date is not None
    schedule.first_local_date += day - due_local
    schedule.next_send_at = send_instant(schedule, day)


def _finish(batch: _Batch, schedule: _Due, channels: list[Channel], invite_at: datetime) -> None:
    """The last step is planned: close this schedule and invite the partner to a next program."""
    program = batch.programs.get(schedule.program_key)
    schedule.next_send_at = None
    for channel in channels:
        batch.rows.append(_row(schedule, NudgeKind.PROGRAM_COMPLETE, program.days + 1, channel, invite_at,
                               NudgeStatus.SCHEDULED, "invitation to a next program", None))
        batch.report.invited += 1
    if schedule.enrollment_status == EnrollmentStatus.ACTIVE:
        batch.finishing.append(schedule)


_SCHEDULE_COLUMNS = ("next_day", "first_local_date", "next_send_at")
# One statement for a whole batch: the rows travel as one array per column.
_UPDATE_SCHEDULES = text(
    "UPDATE partner_schedules AS s SET next_day = v.next_day, first_local_date = v.first_local_date, "
    "next_send_at = v.next_send_at "
    "FROM unnest(CAST(:id AS integer[]), CAST(:next_day AS integer[]), CAST(:first_local_date AS date[]), "
    "CAST(:next_send_at AS timestamptz[])) "
    "AS v(id, next_day, first_local_date, next_send_at) WHERE s.id = v.id"
)


def update_schedules(session: Session, schedules: Sequence[_Due]) -> None:
    """Write the planned schedules back in one UPDATE ... FROM unnest. Any of them the session already
    holds are expired, so they read the new values."""
    if not schedules:
        return
    session.execute(_UPDATE_SCHEDULES, {
        "id": [s.id for s in schedules],
        **{name: [getattr(s, name) for s in schedules] for name in _SCHEDULE_COLUMNS},
    })
    _expire(session, PartnerSchedule, [s.id for s in schedules])


def _complete_enrollments(session: Session, batch: _Batch) -> None:
    """An enrollment is complete once every partner's schedule is closed (this batch's writes included)."""
    enrollment_ids = sorted({s.enrollment_id for s in batch.finishing})
    if not enrollment_ids:
        return
    still_open = set(session.scalars(
        select(PartnerSchedule.enrollment_id).where(
            id_in(PartnerSchedule.enrollment_id, enrollment_ids), PartnerSchedule.next_send_at.is_not(None))
    ))
    done = [i for i in enrollment_ids if i not in still_open]
    if not done:
        return
    result = session.execute(
        update(Enrollment).where(id_in(Enrollment.id, done), Enrollment.status == EnrollmentStatus.ACTIVE)
        .values(status=EnrollmentStatus.COMPLETED, ended_at=batch.now),
        execution_options={"synchronize_session": False},
    )
    batch.report.completed += affected_rows(result)
    _expire(session, Enrollment, done)


def _expire(session: Session, model: type[Any], ids: Sequence[int]) -> None:
    """Objects of `model` this session already holds would still show what a set-based UPDATE replaced."""
    if not len(session.identity_map):
        return  # a pass's own session holds none
    for object_id in ids:
        obj = session.identity_map.get(identity_key(model, object_id))
        if obj is not None:
            session.expire(obj)


def _row(
    schedule: _Due, kind: NudgeKind, day: int, channel: Channel, scheduled_for: datetime,
    status: NudgeStatus, reason: str | None, queued_at: datetime | None,
) -> dict[str, Any]:
    return {
        "enrollment_id": schedule.enrollment_id, "partner_id": schedule.partner_id, "kind": kind.value,
        "step_day": day, "channel": channel.value, "status": status.value, "status_reason": reason,
        "scheduled_for": scheduled_for, "queued_at": queued_at, "attempts": 0, "needs_review": False,
    }


# The rows travel as one array per column: a query text that does not grow with the batch.
_INSERT_NUDGES = text(
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
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    result = session.execute(_INSERT_NUDGES, columns)
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
    marked = session.execute(
        update(Nudge)
        .where(Nudge.status == NudgeStatus.SENDING, Nudge.sending_at < now - STALE_SENDING_AFTER,
               Nudge.needs_review.is_(False))
        .values(needs_review=True, error_code="outcome_unknown",
                status_reason="worker stopped mid-send; outcome unknown, not resent")
        .returning(Nudge.channel, Nudge.kind)
    ).all()
    for channel, kind in marked:
        report.outcomes["review", channel, kind] += 1
    report.to_review += len(marked)
    return len(marked)


def record_pass(session: Session, now: datetime) -> None:
    flag = session.get(ControlFlag, LAST_PASS_FLAG)
    if flag is None:
        session.add(ControlFlag(key=LAST_PASS_FLAG, value=now.isoformat(), updated_at=now))
    else:
        flag.value, flag.updated_at = now.isoformat(), now
