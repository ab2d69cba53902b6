"""Send jobs: each job sends a batch of nudges concurrently, each claimed in the database before its call.

One RQ job per message tops out near 130 jobs/s on this kind of machine, so a job carries a batch of
ids and sends them through a thread pool that lives as long as the worker process; every thread keeps
its own keep-alive connection to the provider. A nudge moves `queued -> sending` in one conditional
UPDATE right before its provider call, so:
- a retried job, or one RQ runs again after a worker died (RQ is at-least-once), finds the nudges it
  already sent no longer `queued` and skips them;
- a worker killed with -9 leaves at most its in-flight nudges in `sending`, which the scheduler hands
  to operator review rather than resending.
While the kill switch is on nothing is claimed: the nudges stay `queued` for the scheduler to enqueue
again once sending resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from queue import Empty, SimpleQueue
from typing import Protocol

from rq import Queue, get_current_job
from sqlalchemy.engine import Connection
from sqlalchemy.exc import InterfaceError, OperationalError

from jobs.runtime import job, job_runtime
from jobs.throttle import admit, hold, throttle
from service.db import Database
from service.domain.outbound import (
    Claim,
    SendOutcome,
    SendPlan,
    apply_guard,
    claim_and_record_rows,
    claim_many,
    compose,
    explain_failed_claim,
    fail_unsendable,
    load_plans,
    record_failure,
    record_sent_many,
    release_claim,
    seal,
    send_time_guard,
)
from service.domain.planner import sending_paused
from service.providers import OutboundEmail, OutboundSms, ProviderError, SendResult
from service.providers.transport import GateClosed, admission
from service.runtime import Runtime
from service.telemetry import count_nudge_outcomes

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.001


@dataclass
class _Gate:
    """Shared by a batch's threads: once one claim meets the kill switch, the rest stop claiming."""

    paused: bool = False


class _Settled(Protocol):
    def wait(self) -> bool: ...

    def ready(self) -> bool: ...


class _Done:
    def wait(self) -> bool:
        return True

    def ready(self) -> bool:
        return True


class _Writer(Protocol):
    def claim(self, nudge_id: int, store: dict[str, str | None]) -> bool: ...

    def record_sent(self, nudge_id: int, provider_message_id: str) -> _Settled: ...


class _Direct:
    """One transaction per claim and per record (a batch sent one nudge at a time)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def claim(self, nudge_id: int, store: dict[str, str | None]) -> bool:
        with self._database.transaction() as session:
            return nudge_id in claim_many(session, [Claim(nudge_id, store)], datetime.now(UTC))

    def record_sent(self, nudge_id: int, provider_message_id: str) -> _Settled:
        with self._database.transaction() as session:
            record_sent_many(session, [(nudge_id, provider_message_id)], datetime.now(UTC))
        return _Done()


class _Entry:
    """One claim or record handed to the ledger; the sending thread waits on `done`."""

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


class Ledger:
    """Group commit for a worker process: sending threads hand their claims and "sent" records to one
    thread, which writes whatever has piled up in one go and answers each thread.

    Each claim is still taken by the conditional UPDATE before that nudge's provider call, but a round
    of them costs one statement instead of one transaction each. The ledger keeps its own
    autocommit connection (each statement is atomic by itself), and a round's claims and records go in
    one statement. A round that fails on a dropped connection is tried again on a new one; a claim whose
    commit was lost that way only ever fails safe (the nudge stays `sending` and goes to review).
    """

    MAX_ROUND = 500
    ATTEMPTS = 5

    def __init__(self, database: Database) -> None:
        self._database = database
        self._connection: Connection | None = None
        self._queue: SimpleQueue[_Entry] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="closer-ledger", daemon=True)
        self._thread.start()

    def claim(self, nudge_id: int, store: dict[str, str | None]) -> bool:
        # Encrypted here, on the sending thread: the ledger's one thread is what every claim waits for.
        entry = _Entry(nudge_id, store=store, sealed=seal(store))
        self._queue.put(entry)
        return entry.wait()

    def record_sent(self, nudge_id: int, provider_message_id: str) -> _Settled:
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
                log.warning("ledger round failed; trying again", extra={"error": type(exc).__name__})
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


Label = tuple[str, str, str]  # (outcome, channel, kind), as /metrics labels a nudge outcome


def _label(outcome: SendOutcome, plan: SendPlan) -> Label:
    return outcome.value, plan.channel.value, plan.kind.value


class _Batch:
    """One send job's nudges as the process' sending threads work through them.

    The job waits until each of its nudges is past its claim (claimed, or settled without one), so a
    claim that failed still fails the job and RQ retries it. With more send jobs waiting it then hands
    its last provider calls to the threads and ends: the next job's nudges start as soon as a thread
    is free, instead of most threads idling while a batch's last calls finish. Every claim is still
    taken before its call and no more calls are in flight than `SEND_CONCURRENCY`, so a kill -9 leaves
    no more nudges in doubt than before. Whoever settles a batch's last nudge counts its outcomes.
    """

    def __init__(self, runtime: Runtime, size: int) -> None:
        self.runtime = runtime
        self.gate = _Gate()
        self.outcomes: Counter[Label] = Counter()
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._unclaimed = self._unsettled = size
        self._detached = False
        self.claimed = threading.Event()
        self.settled = threading.Event()
        if size == 0:
            self.claimed.set()
            self.settled.set()

    def passed_claim(self) -> None:
        with self._lock:
            self._unclaimed -= 1
            if self._unclaimed == 0:
                self.claimed.set()

    def settle(self, label: Label | None = None, error: BaseException | None = None) -> None:
        with self._lock:
            if label is not None:
                self.outcomes[label] += 1
            if error is not None:
                self.errors.append(error)
            self._unsettled -= 1
            last = self._unsettled == 0
            count = last and self._detached
        if last:
            self.settled.set()
        if count:
            self.count()
            if self.errors:
                # Only failures after a claim get here, and the job has ended: the nudge stays `sending`
                # (review), or Redis failed the admission and it went back to `queued`, which the scheduler
                # enqueues again once it has waited STALE_QUEUED_AFTER with no live job.
                log.error("send batch tail failed", extra={"errors": len(self.errors),
                                                           "error": type(self.errors[0]).__name__})

    def so_far(self) -> tuple[Counter[Label], list[BaseException]]:
        with self._lock:
            return Counter(self.outcomes), list(self.errors)

    def detach(self) -> bool:
        """Leave the rest to the sending threads; False when there is no rest (the job counts it all)."""
        with self._lock:
            self._detached = self._unsettled > 0
            return self._detached

    def count(self) -> None:
        try:
            count_nudge_outcomes(self.runtime, self.outcomes)
        except Exception:
            log.exception("could not count a batch's outcomes")


class _Lanes:
    """The process' sending threads and the nudges waiting for one: the threads outlive a job (and so
    do their keep-alive connections), and take the next nudge whichever job it came from."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="closer-send")
        self.todo: SimpleQueue[tuple[SendPlan, _Batch]] = SimpleQueue()
        self.active = 0
        self.lock = threading.Lock()

    def run(self, runtime: Runtime, ledger: Ledger, plans: list[SendPlan], batch: _Batch) -> None:
        for plan in plans:
            self.todo.put((plan, batch))
        with self.lock:
            start = min(len(plans), self.size - self.active)
            self.active += start
        for _ in range(start):
            self.pool.submit(self._lane, runtime, ledger)

    def _lane(self, runtime: Runtime, ledger: Ledger) -> None:
        records: list[tuple[_Settled, _Batch, Label]] = []
        while True:
            records = _harvest(records, block=False)
            try:
                plan, batch = self.todo.get_nowait()
            except Empty:
                with self.lock:
                    # Checked under the lock a new batch takes to count the running threads: a nudge put
                    # after this check is seen by that count and gets a thread of its own.
                    if self.todo.empty():
                        self.active -= 1
                        break
                continue
            _send_in_lane(runtime, plan, batch, ledger, records)
        _harvest(records, block=True)


def _send_in_lane(
    runtime: Runtime, plan: SendPlan, batch: _Batch, writer: _Writer, records: list[tuple[_Settled, _Batch, Label]]
) -> None:
    passed = False

    def claimed() -> None:
        nonlocal passed
        passed = True
        batch.passed_claim()

    pending: list[_Settled] = []
    try:
        outcome = send_one(runtime, plan, batch.gate, writer, pending, claimed=claimed)
    except Exception as exc:
        batch.settle(error=exc)
        return
    finally:
        # After the error, if any, is recorded: the job reads the batch's errors as soon as its last
        # nudge is past its claim, and an error it has not seen would not fail it.
        if not passed:
            batch.passed_claim()
    if pending:
        records.append((pending[0], batch, _label(outcome, plan)))
    else:
        batch.settle(_label(outcome, plan))


def _harvest(
    records: list[tuple[_Settled, _Batch, Label]], *, block: bool
) -> list[tuple[_Settled, _Batch, Label]]:
    """Settle the sends whose "sent" record the ledger has written (all of them when `block`)."""
    left = []
    for record, batch, label in records:
        if not block and not record.ready():
            left.append((record, batch, label))
            continue
        try:
            record.wait()
        except Exception as exc:
            batch.settle(error=exc)
        else:
            batch.settle(label)
    return left


_ledgers: dict[tuple[int, int], Ledger] = {}
_lanes: _Lanes | None = None
_lanes_key: tuple[int, int] | None = None
_lock = threading.Lock()
# Settling a failure takes a connection of its own; a storm of failures must not exhaust the pool.
_failure_slots = threading.BoundedSemaphore(4)


def _ledger(database: Database) -> Ledger:
    with _lock:
        key = (os.getpid(), id(database))
        if key not in _ledgers:
            _ledgers[key] = Ledger(database)
        return _ledgers[key]


def _sending_threads(size: int) -> _Lanes:
    """The process' sending threads for this concurrency."""
    global _lanes, _lanes_key
    with _lock:
        key = (os.getpid(), size)
        if _lanes is None or _lanes_key != key:
            _lanes = _Lanes(size)
            _lanes_key = key
            # With dozens of sending threads, a thread whose answer (or rate-limit admission) just came
            # back would wait up to 5 ms per busy thread for the GIL; a shorter slice keeps that small.
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        return _lanes


_forked = False


def _note_fork() -> None:
    global _forked
    _forked = True


# A forking RQ worker (`closer worker --fork`) runs each job in a child that exits with os._exit as soon as
# the job returns, taking the sending threads and their calls in flight with it (each such nudge would end
# up held for review). In any forked child, then, a job waits for its whole batch.
os.register_at_fork(after_in_child=_note_fork)


def _more_jobs_waiting(runtime: Runtime) -> bool:
    """True when this runs as an RQ job in a process that outlives it, and more jobs wait in its queue
    (one LLEN a batch)."""
    current = get_current_job()
    if current is None or _forked:
        return False
    try:
        return Queue(current.origin, connection=runtime.redis).count > 0
    except Exception:
        return False


@job
def send_batch(nudge_ids: list[int]) -> dict[str, int]:
    runtime = job_runtime()
    with runtime.database.transaction() as session:
        if sending_paused(session):
            log.info("sending paused: batch left queued", extra={"nudges": len(nudge_ids)})
            return {SendOutcome.PAUSED.value: len(nudge_ids)}
        plans = load_plans(session, nudge_ids, runtime.settings)
    batch = _Batch(runtime, len(plans))
    detached = False
    if min(len(plans), max(1, runtime.settings.send_concurrency)) <= 1:
        writer = _Direct(runtime.database)
        for plan in plans:
            batch.settle(_label(send_one(runtime, plan, batch.gate, writer), plan))
    else:
        lanes = _sending_threads(max(1, runtime.settings.send_concurrency))
        lanes.run(runtime, _ledger(runtime.database), plans, batch)
        batch.claimed.wait()
        if batch.errors or not _more_jobs_waiting(runtime) or not batch.detach():
            batch.settled.wait()
        else:
            detached = True
    outcomes, errors = batch.so_far()
    if not detached:
        # Every outcome counted here is committed already, whether or not the batch fails below.
        batch.count()
    if errors:
        # Every other nudge of the batch is settled; failing the job lets RQ retry the rest.
        log.error("send batch failed", extra={"errors": len(errors), "error": type(errors[0]).__name__})
        raise errors[0]
    totals: Counter[str] = Counter()
    for (outcome, _channel, _kind), amount in outcomes.items():
        totals[outcome] += amount
    if detached:
        totals["in_flight"] = len(plans) - sum(outcomes.values())
    log.info("batch sent", extra={"nudges": len(nudge_ids), **{f"n_{k}": v for k, v in totals.items()}})
    return dict(totals)


def send_one(
    runtime: Runtime, plan: SendPlan, gate: _Gate, writer: _Writer, records: list[_Settled] | None = None,
    claimed: Callable[[], None] | None = None,
) -> SendOutcome:
    if gate.paused:
        return SendOutcome.PAUSED
    database, settings = runtime.database, runtime.settings
    decision = send_time_guard(plan, datetime.now(UTC))
    if decision is not None:
        with _failure_slots, database.transaction() as session:
            return apply_guard(session, plan, decision)
    try:
        composed = compose(plan, runtime.programs, settings)
    except (KeyError, IndexError, ValueError) as exc:
        log.error("nudge cannot be rendered", extra={"nudge_id": plan.nudge_id, "error": type(exc).__name__})
        with _failure_slots, database.transaction() as session:
            return fail_unsendable(session, plan, "its program step could not be rendered")
    throttle(runtime, plan.channel)
    if gate.paused:
        return SendOutcome.PAUSED
    if not writer.claim(plan.nudge_id, composed.store):
        with _failure_slots, database.transaction() as session:
            outcome = explain_failed_claim(session, plan, datetime.now(UTC))
        if outcome is SendOutcome.PAUSED:
            gate.paused = True
        return outcome
    if claimed is not None:
        claimed()
    try:
        # The rate admission runs inside the transport, right before the request is written.
        with admission(lambda: admit(runtime, plan.channel)):
            result = _call(runtime, composed.message)
    except GateClosed:
        # Nothing reached the provider (Redis failed us): the nudge goes back to the queue.
        with _failure_slots, database.transaction() as session:
            release_claim(session, plan.nudge_id)
        raise
    except Exception as exc:
        with _failure_slots, database.transaction() as session:
            outcome = record_failure(session, plan, exc, datetime.now(UTC))
        if isinstance(exc, ProviderError) and exc.retry_after:
            hold(runtime, plan.channel, exc.retry_after)
        return outcome
    settled = writer.record_sent(plan.nudge_id, result.provider_message_id)
    if records is None:
        settled.wait()
    else:
        records.append(settled)
    return SendOutcome.SENT


def _call(runtime: Runtime, message: OutboundSms | OutboundEmail) -> SendResult:
    if isinstance(message, OutboundSms):
        return runtime.providers.sms.send_sms(message)
    return runtime.providers.email.send_email(message)
