"""Send jobs: each job sends a batch of nudges, claimed in the database before any provider call.

A nudge moves `queued -> sending` in one conditional UPDATE; only the job that wins that update calls
the provider. A nudge left in `sending` by a crash is never resent: the scheduler marks it for review.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from rq import Queue, Retry
from sqlalchemy import select, update

from jobs.runtime import QUEUE_SEND, job, queue
from jobs.throttle import throttle
from service.db import affected_rows
from service.domain.outbound import SendOutcome, deliver
from service.models import Nudge, NudgeStatus
from service.runtime import Runtime, current_runtime

log = logging.getLogger(__name__)

SEND_JOB_TIMEOUT = 300


def enqueue_nudges(nudge_ids: Iterable[int], *, queue_name: str = QUEUE_SEND, runtime: Runtime | None = None) -> int:
    """Enqueue send jobs for nudges already committed as `queued`. Call only after the commit."""
    ids = sorted(set(nudge_ids))
    if not ids:
        return 0
    runtime = runtime or current_runtime()
    size = max(1, runtime.settings.send_batch_size)
    target = queue(queue_name, runtime)
    jobs = [
        Queue.prepare_data(
            send_batch, args=(ids[i:i + size],), timeout=SEND_JOB_TIMEOUT,
            retry=Retry(max=3, interval=[5, 30, 120]), result_ttl=600, failure_ttl=7 * 86400,
        )
        for i in range(0, len(ids), size)
    ]
    target.enqueue_many(jobs)
    return len(jobs)


def claim(runtime: Runtime, nudge_ids: Sequence[int], now: datetime) -> list[int]:
    """Move queued nudges to `sending`; the ids returned are this job's alone to send."""
    with runtime.database.transaction() as session:
        claimed = []
        for nudge_id in nudge_ids:
            result = session.execute(
                update(Nudge)
                .where(Nudge.id == nudge_id, Nudge.status == NudgeStatus.QUEUED)
                .values(status=NudgeStatus.SENDING, sending_at=now, attempts=Nudge.attempts + 1)
            )
            if affected_rows(result):
                claimed.append(nudge_id)
    return claimed


@job
def send_batch(nudge_ids: list[int]) -> dict[str, int]:
    runtime = current_runtime()
    claimed = claim(runtime, nudge_ids, datetime.now(UTC))
    outcomes: dict[str, int] = {}
    if not claimed:
        return outcomes
    workers = min(len(claimed), max(1, runtime.settings.send_concurrency))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="closer-send") as pool:
        for outcome in pool.map(lambda nudge_id: _send_one(runtime, nudge_id), claimed):
            outcomes[outcome.value] = outcomes.get(outcome.value, 0) + 1
    log.info("batch sent", extra={"claimed": len(claimed), **{f"n_{k}": v for k, v in outcomes.items()}})
    return outcomes


def _send_one(runtime: Runtime, nudge_id: int) -> SendOutcome:
    with runtime.database.transaction() as session:
        nudge = session.scalar(select(Nudge).where(Nudge.id == nudge_id))
        if nudge is None:
            return SendOutcome.GONE
        return deliver(
            session, nudge, providers=runtime.providers, settings=runtime.settings, programs=runtime.programs,
            throttle=lambda channel: throttle(runtime, channel), now=datetime.now(UTC),
        )
