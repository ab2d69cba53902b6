"""The scheduler process: a pass every few seconds, one active scheduler at a time."""

from __future__ import annotations

import logging
import signal
import time
from datetime import UTC, datetime
from types import FrameType

from sqlalchemy import text

from jobs.inbound import drain_spool
from jobs.send import enqueue_nudges
from service.domain.planner import (
    PassReport,
    plan_due_steps,
    record_pass,
    recover_in_flight,
    release_due_retries,
    sending_paused,
)
from service.domain.reveal import plan_reply_reminders
from service.domain.signup import plan_confirmation_reminders
from service.models import NudgeStatus
from service.runtime import Runtime, current_runtime

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x636C6F736572  # "closer"
BATCH = 1000


def run_pass(runtime: Runtime, now: datetime) -> dict[str, int | str]:
    database = runtime.database
    lock_conn = None
    if database.dialect == "postgresql":
        lock_conn = database.engine.connect()
        if not lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}).scalar():
            lock_conn.close()
            return {"status": "another scheduler holds the lock"}
    try:
        report = PassReport()
        with database.transaction() as session:
            paused = sending_paused(session)
            record_pass(session, now)
        if paused:
            return {"status": "sending paused by an operator"}
        while True:
            with database.transaction() as session:
                handled = plan_due_steps(session, runtime.programs, now, report, limit=BATCH)
            enqueue_nudges(report.to_enqueue, runtime=runtime)
            report.to_enqueue.clear()
            if handled < BATCH:
                break
        with database.transaction() as session:
            release_due_retries(session, now, report)
            recover_in_flight(session, now, report)
        enqueue_nudges(report.to_enqueue, runtime=runtime)
        report.spooled_replies = drain_spool(runtime)
        with database.transaction() as session:
            reminders = plan_reply_reminders(session, settings=runtime.settings, programs=runtime.programs, now=now)
            reminder_ids = [n.id for n in reminders if n.status == NudgeStatus.QUEUED]
        enqueue_nudges(reminder_ids, runtime=runtime)
        with database.transaction() as session:
            confirmations = plan_confirmation_reminders(
                session, settings=runtime.settings, programs=runtime.programs, now=now)
        enqueue_nudges(confirmations.nudge_ids, runtime=runtime)
        result: dict[str, int | str] = {"status": "ok", **report.as_dict()}
        return result
    finally:
        if lock_conn is not None:
            lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
            lock_conn.close()


def run_pass_now(now: datetime) -> dict[str, int | str]:
    return run_pass(current_runtime(), now)


def run_forever() -> None:
    runtime = current_runtime()
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
            if report.get("created") or report.get("requeued") or report.get("to_review"):
                log.info("scheduler pass", extra={str(k): v for k, v in report.items()})
        except Exception:
            # The loop outlives a failed pass (a database restart, say); the next pass retries.
            log.exception("scheduler pass failed")
        while not stopping and time.monotonic() - started < interval:
            time.sleep(0.2)
    log.info("scheduler stopped")
