"""The RQ queues and how work gets onto them, for views, the scheduler and jobs alike.

Flask-free and free of job code: a job is enqueued by its function's dotted path, so enqueueing imports
nothing of jobs/ (the worker imports the job's module when it runs it).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from service.domain.send_plans import remember_jobs
from service.runtime import Runtime

log = logging.getLogger(__name__)

# Transactional messages (confirmations, replies to keywords, reveals) go before daily prompts.
QUEUE_HIGH = "closer-high"
QUEUE_SEND = "closer-send"
QUEUE_LOW = "closer-low"
QUEUE_NAMES = (QUEUE_HIGH, QUEUE_SEND, QUEUE_LOW)

SEND_BATCH_JOB = "jobs.send.send_batch"
SEND_JOB_TIMEOUT = 300
# A failed or abandoned send job goes straight back on the queue: a retry scheduled for later needs RQ's
# scheduler, whose lock a killed worker holds for a minute. Claims make an immediate re-run safe, and
# the scheduler pass enqueues again whatever a job that failed for good left queued.
SEND_JOB_RETRY = Retry(max=3)


def queue(name: str, connection: Redis) -> Queue:
    return Queue(name, connection=connection)


def enqueue_nudges(runtime: Runtime, nudge_ids: Iterable[int], *, queue_name: str = QUEUE_SEND) -> int:
    """Enqueue send jobs for nudges already committed as `queued`. Call only after the commit.

    Returns the number of jobs. Each nudge remembers its job, so the scheduler can tell a nudge whose
    job is still waiting in Redis from one whose job was lost.
    """
    ids = sorted(set(nudge_ids))
    if not ids:
        return 0
    size = max(1, runtime.settings.send_batch_size)
    batches = [(f"send-{uuid.uuid4().hex}", ids[i:i + size]) for i in range(0, len(ids), size)]
    queue(queue_name, runtime.redis).enqueue_many([
        Queue.prepare_data(
            SEND_BATCH_JOB, args=(batch,), job_id=job_id, timeout=SEND_JOB_TIMEOUT, retry=SEND_JOB_RETRY,
            result_ttl=600, failure_ttl=7 * 86400, description=f"send {len(batch)} nudges",
        )
        for job_id, batch in batches
    ])
    try:
        with runtime.database.transaction() as session:
            remember_jobs(session, [(nudge_id, job_id) for job_id, batch in batches for nudge_id in batch])
    except (OperationalError, InterfaceError):
        # The jobs are in Redis already; a nudge that forgot its job is only enqueued once more later.
        log.warning("could not note the send jobs of enqueued nudges", extra={"nudges": len(ids)})
    return len(batches)


def enqueue_committed(runtime: Runtime, nudge_ids: Iterable[int], *, queue_name: str = QUEUE_SEND) -> bool:
    """`enqueue_nudges` after a request's commit; False (logged, not raised) when Redis failed.

    The nudges are committed as `queued` already: the scheduler enqueues again those that wait with no
    job, so none is lost and the request need not fail.
    """
    try:
        enqueue_nudges(runtime, nudge_ids, queue_name=queue_name)
    except RedisError:
        log.warning("could not enqueue after a commit; the scheduler will pick the nudges up",
                    extra={"queue": queue_name})
        return False
    return True


def commit_then_enqueue(session: Session, runtime: Runtime, nudge_ids: Iterable[int], *,
                        queue_name: str = QUEUE_SEND) -> bool:
    """Commit the session, then enqueue what it made `queued` (the order the README promises)."""
    ids = list(nudge_ids)
    session.commit()
    return enqueue_committed(runtime, ids, queue_name=queue_name)
