"""The runtime of job code: one per process, with no Flask.

`closer worker` builds the runtime once (service.runtime.build_runtime) and hands it over with
`run_worker`, before RQ forks any work horse, so a job costs its own work, not a start-up. Code that
runs a job in its own process (tests, benchmarks) sets the runtime with `set_runtime` or `using_runtime`;
the other `closer` commands use it too when one is set (a test's), and otherwise build their own.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar, cast

from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.utils import now, utcformat
from rq.worker.base import BaseWorker

from service import telemetry
from service.queues import QUEUE_NAMES
from service.redis_runtime import die_with_parent
from service.runtime import Runtime

log = logging.getLogger(__name__)

_runtime: Runtime | None = None

P = ParamSpec("P")
R = TypeVar("R")


def set_runtime(runtime: Runtime | None) -> Runtime | None:
    """Make `runtime` the one this process' jobs use; returns the one it replaces."""
    global _runtime
    previous, _runtime = _runtime, runtime
    return previous


@contextmanager
def using_runtime(runtime: Runtime) -> Iterator[Runtime]:
    """Jobs run in this process use `runtime` until the block ends (then the one before, if any)."""
    previous = set_runtime(runtime)
    try:
        yield runtime
    finally:
        set_runtime(previous)


def has_runtime() -> bool:
    return _runtime is not None


def job_runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("no runtime for jobs in this process: `closer worker` sets one, tests use using_runtime()")
    return _runtime


def job(fn: Callable[P, R]) -> Callable[P, R]:
    """A job function: exceptions propagate so RQ records the failure; its counts go to Redis as it ends."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        finally:
            # A forked work horse ends with os._exit, which skips atexit: its counts go now.
            telemetry.flush()

    return wrapper


# Writes the heartbeat only into a live worker's hash: never re-creates one that expired or died, never
# changes its expiry (RQ sets that around each job).
_BEAT = """
if redis.call('exists', KEYS[1]) == 1 and redis.call('hexists', KEYS[1], 'death') == 0 then
  redis.call('hset', KEYS[1], 'last_heartbeat', ARGV[1])
  return 1
end
return 0
"""


class _Heartbeat:
    """A worker that says it is alive every `heartbeat_seconds`, also while a long job runs (RQ itself
    beats only between jobs, every few minutes when idle), from a thread that dies with the process: a
    worker killed with -9 falls silent at once, and /healthz, /ops and /metrics stop counting it within
    a minute (service.domain.ops_queues.WORKER_ALIVE_SECONDS)."""

    heartbeat_seconds: float = 10.0
    _beat_stop: threading.Event | None = None

    def _beat_forever(self, stop: threading.Event) -> None:
        worker = cast(BaseWorker, self)
        beat = worker.connection.register_script(_BEAT)
        while not stop.wait(self.heartbeat_seconds):
            try:
                beat(keys=[worker.key], args=[utcformat(now())])
            except RedisError:
                log.warning("worker heartbeat failed", exc_info=True)

    def register_birth(self) -> None:
        super().register_birth()  # type: ignore[misc]
        self._beat_stop = threading.Event()
        threading.Thread(target=self._beat_forever, args=(self._beat_stop,), name="rq-heartbeat",
                         daemon=True).start()

    def register_death(self) -> None:
        if self._beat_stop is not None:
            self._beat_stop.set()
        super().register_death()  # type: ignore[misc]


class HeartbeatSimpleWorker(_Heartbeat, SimpleWorker):
    """Runs each job in the worker process itself (the default)."""


class HeartbeatForkWorker(_Heartbeat, Worker):
    """`--fork`: a work horse per job, which dies with the worker (PR_SET_PDEATHSIG) instead of running
    on, reparented to PID 1, after the worker is killed."""

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        die_with_parent()
        super().main_work_horse(job, queue)


def run_worker(runtime: Runtime, *, burst: bool = False, fork: bool = False) -> None:
    set_runtime(runtime)
    connection = runtime.redis
    queues = [Queue(name, connection=connection) for name in QUEUE_NAMES]
    worker_class: type[HeartbeatSimpleWorker | HeartbeatForkWorker] = (
        HeartbeatForkWorker if fork else HeartbeatSimpleWorker)
    worker = worker_class(queues, connection=connection)
    worker.heartbeat_seconds = runtime.settings.worker_heartbeat_seconds
    log.info("worker starting", extra={"worker_class": worker_class.__name__, "burst": burst})
    # No RQ scheduler: nothing here is scheduled through RQ (send jobs retry at once, Retry without
    # intervals; Closer's own scheduler process owns every schedule), and RQ's would fork a process
    # of its own that outlived a worker killed with -9.
    worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
