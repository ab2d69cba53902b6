"""The per-job runtime: every job runs inside an app context, with sessions from the app's database.

A worker process builds the app once (preloaded), so a job costs its own work, not an app import.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from flask import Flask, current_app, has_app_context
from redis import Redis
from rq import Queue, SimpleWorker, Worker

from service import telemetry
from service.queues import QUEUE_NAMES
from service.runtime import Runtime, current_runtime

log = logging.getLogger(__name__)

_worker_app: Flask | None = None

P = ParamSpec("P")
R = TypeVar("R")


def _app() -> Flask:
    global _worker_app
    if has_app_context():
        return current_app._get_current_object()  # type: ignore[attr-defined]
    if _worker_app is None:
        from service.app import create_app

        _worker_app = create_app()
    return _worker_app


def set_worker_app(app: Flask) -> None:
    global _worker_app
    _worker_app = app


def job(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a job function inside the app context; exceptions propagate so RQ records the failure."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        app = _app()
        try:
            if has_app_context():
                return fn(*args, **kwargs)
            with app.app_context():
                return fn(*args, **kwargs)
        finally:
            # A forked work horse ends with os._exit, which skips atexit: its counts go now.
            telemetry.flush()

    return wrapper


def _rq_connection(runtime: Runtime) -> Redis:
    return runtime.redis


def run_worker(*, burst: bool = False, fork: bool = False) -> None:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    set_worker_app(app)
    runtime = current_runtime()
    connection = _rq_connection(runtime)
    queues = [Queue(name, connection=connection) for name in QUEUE_NAMES]
    worker_class = Worker if fork else SimpleWorker
    worker = worker_class(queues, connection=connection)
    log.info("worker starting", extra={"worker_class": worker_class.__name__, "burst": burst})
    worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")
