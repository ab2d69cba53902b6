"""One scheduler pass, as of a given instant: the timing rules of a partner's program."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.domain.planner import (
    PassReport,
    mark_stale_sending_for_review,
    plan_due_steps,
    release_due_retries,
    requeue,
    stale_queued,
)
from service.domain.scheduling import zone
from service.models import (
    Channel,
    ConsentState,
    Couple,
    Enrollment,
    EnrollmentStatus,
    Nudge,
    NudgeKind,
    NudgeStatus,
    PartnerSchedule,
)
from service.programs import ProgramLibrary
from service.runtime import Runtime
from tests.factories import make_couple

# 2 March 2026 is a Monday; 14:00 UTC is 09:00 in New York.
MONDAY_9AM_NY = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


def plan(db: Session, programs: ProgramLibrary, now: datetime) -> PassReport:
    report = PassReport()
    while plan_due_steps(db, programs, now, report, limit=1000) == 1000:
        pass
    return report


def nudges(db: Session, couple: Couple, kind: NudgeKind = NudgeKind.PROMPT) -> list[Nudge]:
    ids = [p.id for p in couple.partners]
    return list(db.scalars(select(Nudge).where(Nudge.partner_id.in_(ids), Nudge.kind == kind)
                           .order_by(Nudge.partner_id, Nudge.step_day, Nudge.channel)))


def started(db: Session, **kwargs: object) -> Couple:
    """A couple whose program started the evening before MONDAY_9AM_NY, so day 1 is that Monday."""
    return make_couple(db, start=MONDAY_9AM_NY - timedelta(hours=12), **kwargs)  # type: ignore[arg-type]


def test_a_due_step_becomes_one_queued_nudge_per_confirmed_channel(db: Session, runtime: Runtime) -> None:
    couple = started(db)
    assert plan(db, runtime.programs, MONDAY_9AM_NY - timedelta(seconds=1)).created == 0, "not due yet"
    report = plan(db, runtime.programs, MONDAY_9AM_NY)
    assert report.created == 4 and len(report.to_enqueue) == 4
    rows = nudges(db, couple)
    assert {(n.partner_id, n.channel, n.step_day, n.status) for n in rows} == {
        (p.id, c, 1, NudgeStatus.QUEUED) for p in couple.partners for c in (Channel.SMS, Channel.EMAIL)}
    assert all(n.scheduled_for == MONDAY_9AM_NY for n in rows)
    for schedule in couple.enrollments[0].schedules:
        assert schedule.next_day == 2 and schedule.next_send_at == MONDAY_9AM_NY + timedelta(days=1)


def test_a_second_pass_plans_nothing_twice(db: Session, runtime: Runtime) -> None:
    couple = started(db)
    plan(db, runtime.programs, MONDAY_9AM_NY)
    again = plan(db, runtime.programs, MONDAY_9AM_NY + timedelta(minutes=1))
    assert again.created == 0 and len(nudges(db, couple)) == 4


def test_withdrawn_and_pending_channels_get_nothing(db: Session, runtime: Runtime) -> None:
    couple = started(db)
    alex, sam = couple.partners
    alex.sms_consent = ConsentState.OPTED_OUT
    sam.email_consent = ConsentState.BOUNCED
    plan(db, runtime.programs, MONDAY_9AM_NY)
    assert {(n.partner_id, n.channel) for n in nudges(db, couple)} == {(alex.id, Channel.EMAIL), (sam.id, Channel.SMS)}


def test_a_paused_partner_gets_nothing_and_resumes_where_they_were(db: Session, runtime: Runtime) -> None:
    couple = started(db)
    alex, sam = couple.partners
    alex.paused_until = MONDAY_9AM_NY + timedelta(days=2, hours=3)  # Wednesday noon in New York
    report = plan(db, runtime.programs, MONDAY_9AM_NY)
    assert report.deferred == 1
    assert {n.partner_id for n in nudges(db, couple)} == {sam.id}
    schedule = next(s for s in couple.enrollments[0].schedules if s.partner_id == alex.id)
    assert schedule.next_day == 1, "the program waits"
    assert schedule.next_send_at == MONDAY_9AM_NY + timedelta(days=3), "Thursday 09:00, the first after the pause"
    assert schedule.first_local_date == date(2026, 3, 5)


def test_a_step_a_whole_day_overdue_is_skipped_never_sent_late(db: Session, runtime: Runtime) -> None:
    couple = started(db, sms=False)
    now = MONDAY_9AM_NY + timedelta(days=3, hours=1)  # the scheduler was down since before Monday 09:00
    report = plan(db, runtime.programs, now)
    by_day = defaultdict(set)
    for nudge in nudges(db, couple):
        by_day[nudge.step_day].add((nudge.status, nudge.status_reason))
    assert by_day == {
        1: {(NudgeStatus.SKIPPED, "a whole day overdue")}, 2: {(NudgeStatus.SKIPPED, "a whole day overdue")},
        3: {(NudgeStatus.SKIPPED, "a whole day overdue")}, 4: {(NudgeStatus.QUEUED, None)},
    }
    assert report.skipped == 6 and report.created == 2
    assert {s.next_day for s in couple.enrollments[0].schedules} == {5}


def test_a_step_planned_late_into_quiet_hours_is_skipped(db: Session, runtime: Runtime) -> None:
    couple = started(db, email=False)
    now = MONDAY_9AM_NY + timedelta(hours=13)  # 22:00 in New York: quiet hours began at 21:30
    plan(db, runtime.programs, now)
    assert {(n.status, n.status_reason) for n in nudges(db, couple)} == {
        (NudgeStatus.SKIPPED, "planned late, into quiet hours")}


def test_one_step_per_partner_per_local_day_across_enrollments(db: Session, runtime: Runtime) -> None:
    couple = started(db, email=False)
    second = Enrollment(couple=couple, program_key="rituals", status=EnrollmentStatus.ACTIVE,
                        started_at=MONDAY_9AM_NY - timedelta(hours=12))
    db.add(second)
    for partner in couple.partners:
        db.add(PartnerSchedule(enrollment=second, partner=partner, next_day=1, first_local_date=date(2026, 3, 2),
                               next_send_at=MONDAY_9AM_NY + timedelta(hours=2)))
    db.flush()
    plan(db, runtime.programs, MONDAY_9AM_NY)
    report = plan(db, runtime.programs, MONDAY_9AM_NY + timedelta(hours=2))
    assert report.deferred == 2
    ny = zone("America/New_York")
    per_day = {(n.partner_id, n.scheduled_for.astimezone(ny).date()) for n in nudges(db, couple)}
    assert len(per_day) == len(nudges(db, couple)) == 2
    assert {s.next_send_at for s in second.schedules} == {MONDAY_9AM_NY + timedelta(days=1)}, "tomorrow 09:00"


@pytest.mark.parametrize("status", [EnrollmentStatus.COMPLETED, EnrollmentStatus.CANCELLED])
def test_ended_enrollments_get_nothing(db: Session, runtime: Runtime, status: EnrollmentStatus) -> None:
    couple = started(db)
    couple.enrollments[0].status = status
    plan(db, runtime.programs, MONDAY_9AM_NY)
    assert nudges(db, couple) == []
    assert all(s.next_send_at is None for s in couple.enrollments[0].schedules)


def test_unconfirmed_couples_have_no_schedule(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db, confirmed=False, start=MONDAY_9AM_NY - timedelta(hours=12))
    plan(db, runtime.programs, MONDAY_9AM_NY + timedelta(days=1))
    assert nudges(db, couple) == [] and couple.enrollments[0].schedules == []


def test_the_last_step_closes_the_enrollment_and_invites_to_a_next_program(db: Session, runtime: Runtime) -> None:
    couple = started(db, program="empathy")
    days = runtime.programs.get("empathy").days
    ny = zone("America/New_York")
    nine = [datetime.combine(date(2026, 3, 2) + timedelta(days=d), time(9), ny).astimezone(UTC)
            for d in range(days + 1)]
    last = nine[days - 1]  # (9 a.m. moves from 14:00 to 13:00 UTC on 8 March: these dates cross a DST change)
    for moment in nine[:days]:
        plan(db, runtime.programs, moment)
    enrollment = couple.enrollments[0]
    assert enrollment.status == EnrollmentStatus.COMPLETED and enrollment.ended_at == last
    assert {n.step_day for n in nudges(db, couple)} == set(range(1, days + 1))
    invitations = nudges(db, couple, NudgeKind.PROGRAM_COMPLETE)
    assert len(invitations) == 4 and {n.status for n in invitations} == {NudgeStatus.SCHEDULED}
    assert {n.scheduled_for for n in invitations} == {nine[days]}, "09:00 the day after the last prompt"
    report = PassReport()
    assert release_due_retries(db, nine[days] - timedelta(minutes=1), report) == []
    assert sorted(release_due_retries(db, nine[days], report)) == sorted(n.id for n in invitations)


def test_a_broken_time_zone_parks_that_schedule_and_plans_the_rest(db: Session, runtime: Runtime) -> None:
    broken, fine = started(db), started(db)
    broken.partners[0].timezone = "Mars/Olympus_Mons"
    report = plan(db, runtime.programs, MONDAY_9AM_NY)
    assert report.parked == 1
    assert len(nudges(db, fine)) == 4 and len(nudges(db, broken)) == 2


@pytest.mark.parametrize(("zone_name", "first_day"), [
    ("America/New_York", date(2026, 3, 5)), ("Europe/London", date(2026, 3, 26)),
    ("Australia/Sydney", date(2026, 10, 1)), ("Pacific/Auckland", date(2026, 9, 24)),
    ("Asia/Kolkata", date(2026, 3, 5)), ("America/New_York", date(2026, 10, 29)),
    ("Australia/Sydney", date(2026, 4, 2)),
])
def test_a_week_across_a_dst_change_is_one_prompt_a_day_at_the_preferred_time(
    db: Session, runtime: Runtime, zone_name: str, first_day: date
) -> None:
    tz = zone(zone_name)
    start = datetime.combine(first_day - timedelta(days=1), time(20), tz)
    couple = make_couple(db, timezones=(zone_name, zone_name), preferred=(time(9, 0), time(18, 30)),
                         email=False, start=start)
    now = start
    for _ in range(7 * 24 * 4):  # a pass every 15 minutes for a week
        now += timedelta(minutes=15)
        plan(db, runtime.programs, now)
    for partner, wanted in zip(couple.partners, (time(9, 0), time(18, 30)), strict=True):
        sent = [n for n in nudges(db, couple) if n.partner_id == partner.id]
        local = [n.scheduled_for.astimezone(tz) for n in sent]
        assert [n.step_day for n in sent] == list(range(1, 8))
        assert [d.date() for d in local] == [first_day + timedelta(days=i) for i in range(7)]
        assert {d.time() for d in local} == {wanted}
        assert {n.status for n in sent} == {NudgeStatus.QUEUED}


def test_a_preference_in_the_gap_goes_out_once_on_the_change_day(db: Session, runtime: Runtime) -> None:
    tz = zone("America/New_York")
    couple = make_couple(db, preferred=(time(2, 30), time(2, 30)), email=False,
                         start=datetime(2026, 3, 6, 12, tzinfo=tz))
    for partner in couple.partners:
        partner.quiet_start = partner.quiet_end = time(0, 0)
    for schedule in couple.enrollments[0].schedules:
        schedule.next_send_at = datetime(2026, 3, 7, 2, 30, tzinfo=tz)
    now = datetime(2026, 3, 7, 0, 0, tzinfo=tz)
    while now < datetime(2026, 3, 10, 0, 0, tzinfo=tz):
        now += timedelta(minutes=10)
        plan(db, runtime.programs, now)
    local = sorted({(n.scheduled_for.astimezone(tz).date(), n.scheduled_for.astimezone(tz).time())
                    for n in nudges(db, couple)})
    assert local == [(date(2026, 3, 7), time(2, 30)), (date(2026, 3, 8), time(3, 30)), (date(2026, 3, 9), time(2, 30))]
    assert len(nudges(db, couple)) == 6


def test_recovery_finds_stale_queued_and_stuck_sending(db: Session, runtime: Runtime) -> None:
    couple = started(db, email=False)
    plan(db, runtime.programs, MONDAY_9AM_NY)
    first, second = nudges(db, couple)
    second.status, second.sending_at = NudgeStatus.SENDING, MONDAY_9AM_NY
    first.send_job_id = "send-lost"
    db.flush()
    later = MONDAY_9AM_NY + timedelta(minutes=10)
    assert stale_queued(db, MONDAY_9AM_NY + timedelta(minutes=1)) == []
    assert stale_queued(db, later) == [(first.id, "send-lost")]
    report = PassReport()
    requeue(db, [first.id], later, report)
    assert mark_stale_sending_for_review(db, later, report) == 1
    assert mark_stale_sending_for_review(db, later, report) == 0, "once"
    db.refresh(first)
    db.refresh(second)
    assert first.queued_at == later and report.to_enqueue == [first.id]
    assert second.needs_review and second.status == NudgeStatus.SENDING, "never back to the queue"


def test_a_batch_writes_its_schedules_in_one_statement_and_held_objects_see_it(
    db: Session, runtime: Runtime
) -> None:
    from sqlalchemy import event

    couples = [started(db) for _ in range(5)]
    db.flush()
    statements: list[bool] = []

    def seen(_conn: object, _cursor: object, statement: str, _params: object, _context: object,
             executemany: bool) -> None:
        if "partner_schedules" in statement and statement.lstrip().upper().startswith("UPDATE"):
            statements.append(executemany)

    engine = db.get_bind()
    event.listen(engine, "before_cursor_execute", seen)
    try:
        report = plan(db, runtime.programs, MONDAY_9AM_NY)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert report.created == 20
    # One UPDATE statement for the ten schedules: not one per schedule, nor an executemany.
    assert statements == [False]
    for couple in couples:
        for schedule in couple.enrollments[0].schedules:
            assert schedule.next_day == 2 and schedule.next_send_at == MONDAY_9AM_NY + timedelta(days=1)
