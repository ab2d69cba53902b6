"""Counts of what happened, kept in Redis so every process (web workers, RQ workers, the scheduler)
adds to the same numbers and `/metrics` reads them back at scrape time.

Counting happens after the commit that recorded the event, and never raises: a Redis outage loses a
few counts (and backs off for a while) rather than slowing a send or failing a request. Label values
come from fixed sets so a typo or an unexpected value cannot multiply the series.

Counts gather in the process and a background thread writes them to Redis every second (and at exit,
after each job, and before this process serves a scrape): a round trip to Redis for every inbound reply
cost about a tenth of the webhook's CPU. A scrape may therefore miss the last second of other processes'
counts, never more; a process killed with -9 loses at most its last second.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterable, Mapping

import redis as redis_lib
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, UOWTransaction

from service.domain.delivery import CallbackResult
from service.domain.replies import PENDING_REPLIES_KEY
from service.models import Channel, LogEntry
from service.runtime import Runtime

log = logging.getLogger(__name__)

EVENTS_KEY = "closer:metrics:events"
NUDGE_OUTCOMES = frozenset({"sent", "delivered", "failed", "undelivered", "retry", "review", "cancelled", "skipped"})
CHANNELS = frozenset(c.value for c in Channel)
REDIS_BACKOFF_SECONDS = 30.0
FLUSH_EVERY_SECONDS = 1.0

_engines: dict[Engine, str] = {}
_clients: dict[str, redis_lib.Redis] = {}
_lock = threading.Lock()
_redis_down_until = 0.0
_pending: dict[str, Tally[str]] = {}
_flusher_pid = 0  # the process whose flusher thread runs: a forked child starts its own


def _client(url: str) -> redis_lib.Redis:
    with _lock:
        client = _clients.get(url)
        if client is None:
            # Short timeouts: a Redis outage must not slow a send down, only lose a few counts.
            client = redis_lib.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
            _clients[url] = client
        return client


def _add(redis_url: str, fields: Mapping[str, int]) -> None:
    global _flusher_pid
    if not fields:
        return
    with _lock:
        _pending.setdefault(redis_url, Tally()).update(fields)
        if _flusher_pid != os.getpid():
            _flusher_pid = os.getpid()
            threading.Thread(target=_flush_every_second, name="closer-metrics-flush", daemon=True).start()


def _flush_every_second() -> None:
    pid = os.getpid()
    while _flusher_pid == pid:
        time.sleep(FLUSH_EVERY_SECONDS)
        flush()


def flush() -> None:
    """Write the counts gathered in this process to Redis now. Never raises."""
    global _redis_down_until
    with _lock:
        batches = {url: tally for url, tally in _pending.items() if tally}
        _pending.clear()
    for url, tally in batches.items():
        if time.monotonic() < _redis_down_until:
            return
        try:
            with _client(url).pipeline(transaction=False) as pipe:
                for name, amount in tally.items():
                    pipe.hincrby(EVENTS_KEY, name, amount)
                pipe.execute()
        except redis_lib.RedisError:
            _redis_down_until = time.monotonic() + REDIS_BACKOFF_SECONDS
            log.warning("metrics not counted: Redis unavailable", extra={"events": sum(tally.values())})


def _forget_parent_counts() -> None:
    # A forked child (an RQ work horse) must not write its parent's pending counts a second time, nor
    # wait on a lock some parent thread held at the fork.
    global _lock, _pending
    _lock = threading.Lock()
    _pending = {}


atexit.register(flush)
os.register_at_fork(after_in_child=_forget_parent_counts)


def count_nudge_outcomes(runtime: Runtime, counts: Mapping[tuple[str, str, str], int]) -> None:
    """Count a batch's nudge outcomes, keyed by (outcome, channel, kind); call after the commit that
    recorded them. Never raises."""
    fields = {f"nudges|{outcome}|{channel}|{kind[:32]}": amount
              for (outcome, channel, kind), amount in counts.items()
              if amount > 0 and outcome in NUDGE_OUTCOMES and channel in CHANNELS}
    _add(runtime.redis_url, fields)


def _note_replies(session: Session, _flush: UOWTransaction) -> None:
    """Replies are log entries: note those the ORM inserts, to count if the commit happens (the reply
    paths insert theirs in SQL and note them through `replies.note_stored_replies`)."""
    new = [obj.channel for obj in session.new if isinstance(obj, LogEntry)]
    if new:
        pending: Tally[str] = session.info.setdefault(PENDING_REPLIES_KEY, Tally())
        pending.update(new)


def _publish_replies(session: Session) -> None:
    pending: Tally[str] | None = session.info.pop(PENDING_REPLIES_KEY, None)
    if not pending:
        return
    bind = session.get_bind()
    engine = bind.engine if isinstance(bind, Connection) else bind
    url = _engines.get(engine) if isinstance(engine, Engine) else None
    if url is not None:
        _add(url, {f"replies|{channel}": n for channel, n in pending.items() if channel in CHANNELS})


def _forget_replies(session: Session) -> None:
    session.info.pop(PENDING_REPLIES_KEY, None)


def install_reply_counter(runtime: Runtime) -> None:
    """Count replies committed through this runtime's database (idempotent)."""
    with _lock:
        _engines[runtime.database.engine] = runtime.redis_url
    if not event.contains(Session, "after_flush", _note_replies):
        event.listen(Session, "after_flush", _note_replies)
        event.listen(Session, "after_commit", _publish_replies)
        event.listen(Session, "after_rollback", _forget_replies)


def count_callback_outcomes(runtime: Runtime, results: Iterable[CallbackResult]) -> None:
    """Count the nudges that provider callbacks moved forward (after their commit)."""
    counts: Tally[tuple[str, str, str]] = Tally(
        (r.moved_to.value, r.channel, r.kind) for r in results
        if r.moved_to is not None and r.channel is not None and r.kind is not None
    )
    count_nudge_outcomes(runtime, counts)
