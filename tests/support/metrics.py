"""Reading the outcome counters `/metrics` serves, straight from Redis."""

from __future__ import annotations

from service.runtime import Runtime
from service.telemetry import EVENTS_KEY, flush


def counted(runtime: Runtime, family: str, *labels: str) -> int:
    flush()
    raw = runtime.redis.hget(EVENTS_KEY, "|".join((family, *labels)))
    return int(raw) if raw is not None else 0
