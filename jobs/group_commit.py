"""Group commit of the claims and "sent" records of a worker's sending threads.

Why: every nudge needs a claim written before its provider call and a "sent" record after it. Written
by each sending thread in a transaction of its own, that is two commits (each a round trip and a log
flush) per nudge, and a pooled connection for every thread. The group commit's one thread instead writes
whatever claims and records have piled up since its last round in one statement, on one autocommit
connection of its own: the busier the sending threads, the more nudges share each commit.

What it guarantees:
- each claim is still the conditional `queued -> sending` UPDATE (service.domain.claims), and
  `claim` returns only once its round is written, so a nudge is claimed before its provider call;
- the same nudge asked for twice in one round (a job RQ ran again) is won only once;
- `record_sent` hands a record over without waiting; the caller holds its `Settled` and does not count
  the nudge settled before it is written;
- a round that fails on a dropped connection is tried again on a new one (ATTEMPTS times, backing off);
  a claim whose commit was lost that way only ever fails safe (the nudge stays `sending` and goes to
  review); any other failure is raised in every thread waiting on that round.

`Direct` keeps the same interface with one transaction per claim and per record, for a batch sent one
nudge at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from datetime import UTC, datetime
from queue import Empty, SimpleQueue
from typing import Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.exc import InterfaceError, OperationalError

from service.db import Database
from service.domain.claims import Claim, claim_and_record_rows, claim_many, record_sent_many, seal

log = logging.getLogger(__name__)


class Settled(Protocol):
    """A "sent" record handed to a writer: `wait` until it is written (raises if it failed)."""

    def wait(self) -> bool: ...

    def ready(self) -> bool: ...


class _Done:
    def wait(self) -> bool:
        return True

    def ready(self) -> bool:
        return True


class Writer(Protocol):
    """Where a send's claim and its "sent" record are written: the `GroupCommit`, or `Direct`."""

    def claim(self, nudge_id: int, store: dict[str, str | None]) -> bool: ...

    def record_sent(self, nudge_id: int, provider_message_id: str) -> Settled: ...


class Direct:
    """One transaction per claim and per record (a batch sent one nudge at a time)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def claim(self, nudge_id: int, store: dict[str, str | None]) -> bool:
        with self._database.transaction() as session:
            return nudge_id in claim_many(session, [Claim(nudge_id, store)], datetime.now(UTC))

    def record_sent(self, nudge_id: int, provider_message_id: str) -> Settled:
        with self._database.transaction() as session:
            record_sent_many(session, [(nudge_id, provider_message_id)], datetime.now(UTC))
        return _Done()


class _Entry:
    """One claim or record handed to the group commit; the sending thread waits on `done`."""

    __slots__ = ("done", "error", "nudge_id", "provider_message_id", "result", "sealed", "store")

    def __init__(self, nudge_id: int, store: dict[str, str | None] | None = None,
                 provider_message_id: str | None = None, sealed: tuple[bytes | None, ...] | None = None) -> None:
        self.nudge_id = nudge_id
        self.store = store  # a claim
        self.sealed = sealed  # its texts, already encrypted
        self.provider_message_id = provider_message_id  # a record of a send
        self.result = False
        self.error: BaseException | None = None
        # A bare lock is the cheapest one-shot signal between two threads: held until answered.
        self.done = threading.Lock()
        self.done.acquire()

    def answer(self, result: bool = False, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.release()

    def ready(self) -> bool:
        return not self.done.locked()

    def wait(self) -> bool:
        self.done.acquire()
        if self.error is not None:
            raise self.error
        return self.result


class GroupCommit:
    """Group commit for a worker process: sending threads hand their claims and "sent" records to one
    thread, which writes whatever has piled up (up to MAX_ROUND) in one statement on its own autocommit
    connection (each statement is atomic by itself) and answers each thread.
    """

    MAX_ROUND = 500
    ATTEMPTS = 5

    def __init__(self, database: Database) -> None:
        self._database = database
        self._connection: Connection | None = None
        self._queue: SimpleQueue[_Entry] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="closer-group-commit", daemon=True)
        self._thread.start()

    def claim(self, nudge_id: int, store: dict[str, str | None]) -> bool:
        # Encrypted here, on the sending thread: the group commit's one thread is what every claim waits for.
        entry = _Entry(nudge_id, store=store, sealed=seal(store))
        self._queue.put(entry)
        return entry.wait()

    def record_sent(self, nudge_id: int, provider_message_id: str) -> Settled:
        """Hand over a record without waiting for it: the batch waits for all of them before it ends."""
        entry = _Entry(nudge_id, provider_message_id=provider_message_id)
        self._queue.put(entry)
        return entry

    def _run(self) -> None:
        while True:
            round_ = [self._queue.get()]
            while len(round_) < self.MAX_ROUND:
                try:
                    round_.append(self._queue.get_nowait())
                except Empty:
                    break
            self._write(round_)

    def _apply(self, claims: list[Claim], sent: list[tuple[int, str]]) -> set[int]:
        now = datetime.now(UTC)
        if self._connection is None:
            self._connection = self._database.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return claim_and_record_rows(self._connection, claims, sent, now)

    def _write(self, round_: list[_Entry]) -> None:
        claims = [Claim(e.nudge_id, e.store, e.sealed) for e in round_ if e.store is not None]
        sent = [(e.nudge_id, e.provider_message_id or "") for e in round_ if e.store is None]
        won: set[int] = set()
        for attempt in range(self.ATTEMPTS):
            try:
                won = self._apply(claims, sent)
                break
            except (OperationalError, InterfaceError) as exc:
                self._drop_connection()
                if attempt == self.ATTEMPTS - 1:
                    return _fail(round_, exc)
                log.warning("group commit round failed; trying again", extra={"error": type(exc).__name__})
                time.sleep(0.2 * 2 ** attempt)
            except Exception as exc:
                self._drop_connection()
                return _fail(round_, exc)
        taken: set[int] = set()
        for entry in round_:
            if entry.store is None:
                entry.answer(True)
            else:
                # The same nudge asked for twice in one round (a job RQ ran again) is won only once.
                entry.answer(entry.nudge_id in won and entry.nudge_id not in taken)
                taken.add(entry.nudge_id)

    def _drop_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.invalidate()
                self._connection.close()
            self._connection = None


def _fail(round_: list[_Entry], exc: BaseException) -> None:
    for entry in round_:
        entry.answer(error=exc)


_group_commits: dict[tuple[int, int], GroupCommit] = {}
_lock = threading.Lock()


def group_commit_for(database: Database) -> GroupCommit:
    """This process' group commit on `database` (a forked child starts its own: the parent's thread stayed behind)."""
    with _lock:
        key = (os.getpid(), id(database))
        if key not in _group_commits:
            _group_commits[key] = GroupCommit(database)
        return _group_commits[key]
