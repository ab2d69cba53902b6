"""The scheduler process: a pass every few seconds, one active scheduler at a time.

A pass, as of `now`:
1. plans due schedules in batches of BATCH rows (each batch its own transaction), enqueueing each
   batch's nudges right after its commit;
2. releases `scheduled` nudges whose time has come (retries, invitations, reminders);
3. recovers work Redis lost: RQ jobs abandoned by a dead worker are handed back to RQ (it retries
   them), and a `queued` nudge whose job is gone from Redis is enqueued again; a nudge stuck in
   `sending` goes to operator review, never back to the queue.
Housekeeping runs first, kill switch or not: consent records past their retention period lose their IP
address and user agent (service.domain.retention), a bounded batch a pass.
A session-level advisory lock keeps a second scheduler's pass from running at the same time.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from datetime import UTC, datetime
from types import FrameType

from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from sqlalchemy import text

from jobs.inbound import drain_spool
from service.domain.planner import (
    PassReport,
    mark_stale_sending_for_review,
    plan_due_steps,
    record_pass,
    release_due_retries,
    requeue,
    sending_paused,
    stale_queued,
)
from service.domain.retention import purge_consent_evidence
from service.domain.reveal import plan_reply_reminders
from service.domain.signup import expire_unconfirmed_signups, plan_confirmation_reminders
from service.models import NudgeStatus
from service.queues import QUEUE_NAMES, QUEUE_SEND, enqueue_nudges
from service.runtime import Runtime
from service.telemetry import count_nudge_outcomes

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x636C6F736572  # "closer"
BATCH = 1000
# A job in these states will still run (or is running): its nudges are not lost.
_LIVE_JOB_STATES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def run_pass(runtime: Runtime, now: datetime) -> dict[str, int | str]:
    lock_conn = runtime.database.engine.connect()
    if not lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}).scalar():
        lock_conn.close()
        return {"status": "another scheduler holds the lock"}
    lock_conn.commit()
    try:
        return _run_pass_locked(runtime, now)
    finally:
        lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
        lock_conn.commit()
        lock_conn.close()


def _run_pass_locked(runtime: Runtime, now: datetime) -> dict[str, int | str]:
    database = runtime.database
    report = PassReport()
    with database.transaction() as session:
        paused = sending_paused(session)
        record_pass(session, now)
    # Replies spooled while the database was down are persisted whatever the kill switch says.
    spooled = _drain_inbound_spool(runtime)
    purged = _housekeeping(runtime, now)
    if paused:
        return {"status": "sending paused by an operator", "spooled_replies": spooled,
                "purged_consent_details": purged}
    enqueued = 0
    while True:
        with database.transaction() as session:
            handled = plan_due_steps(session, runtime.programs, now, report, limit=BATCH)
        enqueued += _enqueue(runtime, report)
        if handled < BATCH:
            break
    while True:
        with database.transaction() as session:
            released = release_due_retries(session, now, report, limit=BATCH)
        enqueued += _enqueue(runtime, report)
        if len(released) < BATCH:
            break
    with database.transaction() as session:
        expired_signups = expire_unconfirmed_signups(session, now)
        report.to_enqueue.extend(plan_confirmation_reminders(
            session, settings=runtime.settings, programs=runtime.programs, now=now).nudge_ids)
        reply_reminders = plan_reply_reminders(session, settings=runtime.settings, programs=runtime.programs,
                                               now=now)
        report.to_enqueue.extend(n.id for n in reply_reminders if n.status == NudgeStatus.QUEUED)
    enqueued += _enqueue(runtime, report)
    _hand_back_abandoned_jobs(runtime, now)
    with database.transaction() as session:
        candidates = stale_queued(session, now)
        lost = _without_live_job(runtime, candidates)
        requeue(session, lost, now, report)
        mark_stale_sending_for_review(session, now, report)
    enqueued += _enqueue(runtime, report)
    return {"status": "ok", **report.as_dict(), "enqueued": enqueued, "spooled_replies": spooled,
            "expired_signups": expired_signups, "purged_consent_details": purged}


def _housekeeping(runtime: Runtime, now: datetime) -> int:
    """Retention purges; a failure is logged and waits for the next pass, never failing this one."""
    try:
        with runtime.database.transaction() as session:
            return purge_consent_evidence(session, now)
    except Exception:
        log.exception("could not purge old consent evidence; the next pass retries")
        return 0


def _drain_inbound_spool(runtime: Runtime) -> int:
    """Persist replies that waited in Redis while the database was down; a failure waits for the next pass."""
    try:
        return drain_spool(runtime)
    except Exception:
        log.exception("could not drain the inbound spool; it stays in Redis for the next pass")
        return 0


def _enqueue(runtime: Runtime, report: PassReport) -> int:
    """Enqueue what the last commit made `queued` (and count what it settled). If Redis is down the
    nudges stay queued in SQL and a later pass enqueues them again, so this never fails the pass."""
    ids, report.to_enqueue = report.to_enqueue, []
    settled, report.outcomes = report.outcomes, Counter()
    count_nudge_outcomes(runtime, settled)
    if not ids:
        return 0
    try:
        enqueue_nudges(runtime, ids, queue_name=QUEUE_SEND)
    except Exception:
        log.exception("enqueue failed; the nudges stay queued for the next pass", extra={"nudges": len(ids)})
        return 0
    return len(ids)


def _hand_back_abandoned_jobs(runtime: Runtime, now: datetime) -> None:
    """Jobs whose worker died mid-run: RQ retries them (their claims keep sent nudges from going twice)."""
    try:
        for name in QUEUE_NAMES:
            StartedJobRegistry(name, connection=runtime.redis).cleanup(timestamp=now.timestamp())
    except Exception:
        log.exception("could not check RQ's started jobs")


def _without_live_job(runtime: Runtime, candidates: list[tuple[int, str | None]]) -> list[int]:
    """The nudges among `candidates` whose send job no longer exists, or will never run again."""
    if not candidates:
        return []
    job_ids = sorted({job_id for _, job_id in candidates if job_id})
    try:
        jobs = Job.fetch_many(job_ids, connection=runtime.redis) if job_ids else []
        waiting = {job_id for name in QUEUE_NAMES for job_id in Queue(name, connection=runtime.redis).get_job_ids()}
        live = {job.id for job in jobs if job is not None and _will_run(job, waiting)}
    except Exception:
        log.exception("could not check send jobs in Redis; leaving queued nudges for the next pass")
        return []
    return [nudge_id for nudge_id, job_id in candidates if job_id not in live]


def _will_run(job: Job, waiting: set[str]) -> bool:
    status = job.get_status(refresh=False)
    if status == JobStatus.QUEUED:
        # Only while it is still in its queue: a worker killed between dequeuing a job and starting it leaves
        # it `queued` in RQ's intermediate list, which RQ's own maintenance clears only minutes later
        # (bench/faults.py, kill9). Running it twice is harmless: the claims keep each nudge to one send.
        return job.id in waiting
    return status in _LIVE_JOB_STATES


def run_forever(runtime: Runtime) -> None:
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    interval = runtime.settings.scheduler_interval_seconds
    log.info("scheduler started", extra={"interval": interval})
    while not stopping:
        started = time.monotonic()
        try:
            report = run_pass(runtime, datetime.now(UTC))
            if any(report.get(k) for k in ("created", "requeued", "to_review", "skipped", "completed")):
                log.info("scheduler pass", extra={str(k): v for k, v in report.items()})
        except Exception:
            # The loop outlives a failed pass (a database restart, say); the next pass retries.
            log.exception("scheduler pass failed")
        while not stopping and time.monotonic() - started < interval:
            time.sleep(0.2)
    log.info("scheduler stopped")
