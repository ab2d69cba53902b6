"""The rate limiter's storage, made unreachable for one test."""

from __future__ import annotations

import pytest
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from service.web.limits import limiter

DOWN_REDIS_URL = "redis://127.0.0.1:6399/0"  # nothing listens there


def stop_limiter_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the limiter at a Redis that is down; the app's own Redis (queues, sessions) still answers."""
    dead = storage_from_string(DOWN_REDIS_URL, socket_connect_timeout=0.2, socket_timeout=0.2)
    monkeypatch.setattr(limiter, "_storage", dead)
    monkeypatch.setattr(limiter, "_limiter", MovingWindowRateLimiter(dead))
