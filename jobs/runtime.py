"""The runtime of job code: one per process, with no Flask.

`closer worker` builds the runtime once (service.runtime.build_runtime) and hands it over with
`run_worker`, before RQ forks any work horse, so a job costs its own work, not a start-up. Code that
runs a job in its own process (tests, benchmarks) sets the runtime with `set_runtime` or `using_runtime`;
the other `closer` commands use it too when one is set (a test's), and otherwise build their own.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from rq import Queue, SimpleWorker, Worker

from service import telemetry
from service.queues import QUEUE_NAMES
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


def run_worker(runtime: Runtime, *, burst: bool = False, fork: bool = False) -> None:
    set_runtime(runtime)
    connection = runtime.redis
    queues = [Queue(name, connection=connection) for name in QUEUE_NAMES]
    worker_class = Worker if fork else SimpleWorker
    worker = worker_class(queues, connection=connection)
    log.info("worker starting", extra={"worker_class": worker_class.__name__, "burst": burst})
    worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")
