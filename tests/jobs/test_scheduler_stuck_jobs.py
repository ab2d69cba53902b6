"""A send job a worker dequeued and then died holding: `queued` in Redis, but in no queue any more."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from rq import Queue
from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.scheduler import run_pass
from service.models import Nudge
from service.queues import QUEUE_SEND
from service.runtime import Runtime
from tests.factories import make_couple


def _due(db: Session) -> datetime:
    now = datetime.now(UTC)
    couple = make_couple(db, email=False)
    for partner in couple.partners:
        partner.quiet_start = partner.quiet_end = time(0, 0)
    for schedule in couple.enrollments[0].schedules:
        schedule.next_send_at = now
    db.commit()
    return now


def test_a_job_left_between_dequeue_and_start_is_replaced(db: Session, runtime: Runtime) -> None:
    now = _due(db)
    run_pass(runtime, now)
    queue = Queue(QUEUE_SEND, connection=runtime.redis)
    [job_id] = queue.get_job_ids()
    # What RQ's dequeue does (LMOVE to its intermediate list) before a kill -9 lands.
    runtime.redis.lmove(queue.key, queue.intermediate_queue_key)
    assert queue.fetch_job(job_id).get_status() == "queued" and queue.count == 0

    report = run_pass(runtime, now + timedelta(minutes=3))

    assert report["requeued"] == 2
    [new_job_id] = queue.get_job_ids()
    assert new_job_id != job_id
    assert {n.send_job_id for n in db.scalars(select(Nudge)).all()} == {new_job_id}


def test_a_job_still_waiting_in_its_queue_is_left_alone(db: Session, runtime: Runtime) -> None:
    now = _due(db)
    run_pass(runtime, now)

    assert run_pass(runtime, now + timedelta(minutes=3))["requeued"] == 0
    assert Queue(QUEUE_SEND, connection=runtime.redis).count == 1
