"""What the RQ queues hold, and the operator's controls over failed jobs.

Everything here reads or writes Redis only. A job's arguments are nudge ids, and a failure is shown
by its exception type alone: exception messages can quote a provider's answer, which may hold a
phone number or an address.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from service.queues import QUEUE_NAMES

# A worker silent for longer than this is not counted as alive (it beats every WORKER_HEARTBEAT_SECONDS).
WORKER_ALIVE_SECONDS = 60.0


class UnknownJob(LookupError):
    """No failed job with that id in that queue (already retried, discarded or expired)."""


@dataclass
class QueueStats:
    name: str
    depth: int
    oldest_age_seconds: float | None
    started: int
    scheduled: int
    failed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WorkerInfo:
    name: str
    state: str
    queues: list[str]
    last_heartbeat: datetime | None
    successful_jobs: int
    failed_jobs: int

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "last_heartbeat": self.last_heartbeat.isoformat() if self.last_heartbeat else None}


@dataclass
class FailedJob:
    queue: str
    job_id: str
    function: str
    nudges: int | None
    failed_at: datetime | None
    error_type: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failed_at": self.failed_at.isoformat() if self.failed_at else None}


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def known_queue(name: str) -> bool:
    return name in QUEUE_NAMES


def queue_stats(redis: Redis, now: datetime) -> list[QueueStats]:
    stats = []
    for name in QUEUE_NAMES:
        queue = Queue(name, connection=redis)
        oldest_age = None
        head = queue.get_job_ids(0, 1)
        if head:
            job = queue.fetch_job(head[0])
            enqueued = _aware(job.enqueued_at) if job is not None else None
            if enqueued is not None:
                oldest_age = max(0.0, (now - enqueued).total_seconds())
        stats.append(QueueStats(
            name=name, depth=queue.count, oldest_age_seconds=oldest_age,
            started=StartedJobRegistry(queue=queue).count,
            scheduled=ScheduledJobRegistry(queue=queue).count,
            failed=FailedJobRegistry(queue=queue).count,
        ))
    return stats


def workers(redis: Redis, now: datetime | None = None) -> list[WorkerInfo]:
    """The live workers: those whose last heartbeat is at most WORKER_ALIVE_SECONDS old.

    RQ keeps a worker's entry until its key expires (minutes after a worker killed with -9, and a
    worker busy with a job may not beat at all), so its list alone counts the dead as alive. Closer's
    workers beat every WORKER_HEARTBEAT_SECONDS (jobs.runtime), also during a job."""
    moment = now or datetime.now(UTC)
    found = []
    for worker in Worker.all(connection=redis):
        beat = _aware(worker.last_heartbeat)
        if beat is None or (moment - beat).total_seconds() > WORKER_ALIVE_SECONDS:
            continue
        found.append(WorkerInfo(
            name=worker.name, state=str(worker.get_state()), queues=list(worker.queue_names()),
            last_heartbeat=beat,
            successful_jobs=int(worker.successful_job_count or 0), failed_jobs=int(worker.failed_job_count or 0),
        ))
    return sorted(found, key=lambda w: w.name)


def _error_type(job: Job) -> str:
    try:
        result = job.latest_result()
    except Exception:
        result = None
    text = (result.exc_string if result is not None else None) or ""
    # The last line of a traceback reads "module.ExceptionType: message"; keep the type only.
    last = text.strip().splitlines()[-1] if text.strip() else ""
    return last.split(":", 1)[0].strip()[:120] or "unknown"


def _nudge_count(job: Job) -> int | None:
    try:
        args = job.args
    except Exception:
        return None
    if args and isinstance(args[0], list | tuple):
        return len(args[0])
    return None


def failed_jobs(redis: Redis, limit: int = 20) -> list[FailedJob]:
    """The newest failed jobs of each queue, up to `limit` per queue."""
    listed: list[FailedJob] = []
    for name in QUEUE_NAMES:
        registry = FailedJobRegistry(name, connection=redis)
        ids = registry.get_job_ids(0, limit - 1, desc=True)
        for job in Job.fetch_many(ids, connection=redis):
            if job is None:
                continue
            listed.append(FailedJob(
                queue=name, job_id=job.id, function=(job.func_name or "").rsplit(".", 1)[-1],
                nudges=_nudge_count(job), failed_at=_aware(job.ended_at), error_type=_error_type(job),
            ))
    return listed


def _registry_with(redis: Redis, queue_name: str, job_id: str) -> FailedJobRegistry:
    if not known_queue(queue_name):
        raise UnknownJob(f"no queue named {queue_name!r}")
    registry = FailedJobRegistry(queue_name, connection=redis)
    if job_id not in registry:
        raise UnknownJob(f"no failed job {job_id!r} in {queue_name}")
    return registry


def check_failed(redis: Redis, queue_name: str, job_id: str) -> None:
    _registry_with(redis, queue_name, job_id)


def retry_failed(redis: Redis, queue_name: str, job_id: str) -> None:
    """Put a failed job back on its queue. Send jobs claim each nudge before sending, so a retry
    never sends a nudge that was sent meanwhile."""
    registry = _registry_with(redis, queue_name, job_id)
    try:
        registry.requeue(job_id)
    except (InvalidJobOperation, NoSuchJobError) as exc:
        raise UnknownJob(f"failed job {job_id!r} is gone") from exc


def discard_failed(redis: Redis, queue_name: str, job_id: str) -> None:
    registry = _registry_with(redis, queue_name, job_id)
    try:
        registry.remove(job_id, delete_job=True)
    except NoSuchJobError:
        registry.remove(job_id)


def failed_job_ids(redis: Redis, queue_name: str) -> list[str]:
    if not known_queue(queue_name):
        raise UnknownJob(f"no queue named {queue_name!r}")
    return list(FailedJobRegistry(queue_name, connection=redis).get_job_ids())


def retry_all_failed(redis: Redis, queue_name: str) -> int:
    retried = 0
    for job_id in failed_job_ids(redis, queue_name):
        try:
            retry_failed(redis, queue_name, job_id)
            retried += 1
        except UnknownJob:
            continue
    return retried


def discard_all_failed(redis: Redis, queue_name: str) -> int:
    discarded = 0
    for job_id in failed_job_ids(redis, queue_name):
        try:
            discard_failed(redis, queue_name, job_id)
            discarded += 1
        except UnknownJob:
            continue
    return discarded
