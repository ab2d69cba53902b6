"""The scheduler pass on real Redis: one at a time, and nothing Redis loses is lost."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from jobs.scheduler import ADVISORY_LOCK_KEY, run_pass
from service.domain.retention import CONSENT_EVIDENCE_RETENTION, PURGED
from service.models import Channel, ConsentAction, ConsentRecord, ConsentSource, Nudge, NudgeStatus
from service.runtime import Runtime
from tests.factories import make_couple
from tests.support.metrics import counted
from tests.support.sending import queued_jobs


def due(db: Session, count: int = 1) -> datetime:
    now = datetime.now(UTC)
    for _ in range(count):
        couple = make_couple(db, email=False)
        for partner in couple.partners:
            partner.quiet_start = partner.quiet_end = time(0, 0)
        for schedule in couple.enrollments[0].schedules:
            schedule.next_send_at = now
    db.commit()
    return now


def test_a_pass_plans_and_enqueues_what_is_due(db: Session, runtime: Runtime) -> None:
    now = due(db, 3)
    report = run_pass(runtime, now)
    assert report["status"] == "ok" and report["created"] == 6 and report["enqueued"] == 6
    assert queued_jobs(runtime.redis) == 1
    assert run_pass(runtime, now)["created"] == 0


def test_only_one_scheduler_runs_a_pass_at_a_time(db: Session, runtime: Runtime) -> None:
    now = due(db)
    with runtime.database.engine.connect() as other:
        other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        assert run_pass(runtime, now) == {"status": "another scheduler holds the lock"}
        other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
    assert run_pass(runtime, now)["created"] == 2


def test_work_lost_with_redis_is_enqueued_again(db: Session, runtime: Runtime) -> None:
    now = due(db, 2)
    run_pass(runtime, now)
    assert run_pass(runtime, now + timedelta(minutes=5))["requeued"] == 0, "their job still waits in Redis"
    runtime.redis.flushdb()
    report = run_pass(runtime, now + timedelta(minutes=5))
    assert report["requeued"] == 4 and queued_jobs(runtime.redis) == 1
    assert run_pass(runtime, now + timedelta(minutes=6))["requeued"] == 0, "and not again while that job waits"


def test_a_nudge_stuck_in_sending_goes_to_review_not_back_to_the_queue(db: Session, runtime: Runtime) -> None:
    now = due(db)
    run_pass(runtime, now)
    stuck = db.scalars(select(Nudge).order_by(Nudge.id)).first()
    assert stuck is not None
    stuck.status, stuck.sending_at = NudgeStatus.SENDING, now
    db.commit()
    runtime.redis.flushdb()
    report = run_pass(runtime, now + timedelta(minutes=10))
    assert report["to_review"] == 1 and report["requeued"] == 1
    db.refresh(stuck)
    assert stuck.needs_review and stuck.status == NudgeStatus.SENDING
    assert counted(runtime, "nudges", "review", "sms", "prompt") == 1


def test_a_step_a_whole_day_overdue_is_skipped_and_counted(db: Session, runtime: Runtime) -> None:
    now = due(db)
    before = counted(runtime, "nudges", "skipped", "sms", "prompt")
    report = run_pass(runtime, now + timedelta(days=1, minutes=1))
    assert report["skipped"] == 2 and report["created"] == 0
    assert counted(runtime, "nudges", "skipped", "sms", "prompt") == before + 2


def test_a_pass_purges_old_consent_evidence_even_while_sending_is_paused(db: Session, runtime: Runtime) -> None:
    from service.domain.operators import set_sending_paused

    now = datetime.now(UTC)
    partner = make_couple(db).partners[0]
    record = ConsentRecord(partner_id=partner.id, channel=Channel.SMS, action=ConsentAction.CONFIRMED,
                           occurred_at=now - CONSENT_EVIDENCE_RETENTION - timedelta(hours=1),
                           source=ConsentSource.WEB, source_detail="ip=203.0.113.20; ua=Mozilla/5.0")
    db.add(record)
    set_sending_paused(db, True, operator="alice", now=now)
    db.commit()
    report = run_pass(runtime, now)
    assert report["status"] == "sending paused by an operator" and report["purged_consent_details"] == 1
    db.expire_all()
    assert record.source_detail == PURGED
