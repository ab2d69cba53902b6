"""service/telemetry.py on real Redis: counts gather in the process and reach Redis within a second."""

from __future__ import annotations

import os
import secrets
import time

from service import telemetry
from service.runtime import Runtime
from service.telemetry import EVENTS_KEY


def _stored(runtime: Runtime, kind: str) -> int:
    raw = runtime.redis.hget(EVENTS_KEY, f"nudges|sent|sms|{kind}")
    return int(raw) if raw is not None else 0


def test_counts_reach_redis_by_themselves_within_a_second_or_two(runtime: Runtime) -> None:
    kind = f"test-{secrets.token_hex(4)}"
    telemetry.count_nudge_outcomes(runtime, {("sent", "sms", kind): 3})
    telemetry.count_nudge_outcomes(runtime, {("sent", "sms", kind): 2})
    deadline = time.monotonic() + 5 * telemetry.FLUSH_EVERY_SECONDS
    while _stored(runtime, kind) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stored(runtime, kind) == 5  # both counts, written together


def test_a_forked_child_writes_its_own_counts_once_and_never_its_parents(runtime: Runtime) -> None:
    kind = f"test-{secrets.token_hex(4)}"
    telemetry.count_nudge_outcomes(runtime, {("sent", "sms", kind): 10})  # pending in this process at the fork
    pid = os.fork()
    if pid == 0:  # the child, as an RQ work horse: counts, flushes (the job wrapper does) and _exits
        try:
            telemetry.count_nudge_outcomes(runtime, {("sent", "sms", kind): 1})
            telemetry.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    telemetry.flush()
    assert _stored(runtime, kind) == 11
