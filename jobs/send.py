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
import uuid
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from queue import Empty, SimpleQueue
from typing import Protocol

from rq import Queue, Retry
from sqlalchemy.engine import Connection
from sqlalchemy.exc import InterfaceError, OperationalError

from jobs.runtime import QUEUE_SEND, job, queue
from jobs.throttle import admit, hold, throttle
from service.db import Database
from service.domain.outbound import (
    Claim,
    SendOutcome,
    SendPlan,
    apply_guard,
    claim_many,
    claim_rows,
    compose,
    explain_failed_claim,
    fail_unsendable,
    load_plans,
    record_failure,
    record_sent_many,
    record_sent_rows,
    release_claim,
    remember_jobs,
    seal,
    send_time_guard,
)
from service.domain.planner import sending_paused
from service.providers import OutboundEmail, OutboundSms, ProviderError, SendResult
from service.providers.transport import GateClosed, admission
from service.runtime import Runtime, current_runtime
from service.telemetry import count_nudge_outcomes

log = logging.getLogger(__name__)

SEND_JOB_TIMEOUT = 300
SWITCH_INTERVAL = 0.001
# A failed or abandoned send job goes straight back on the queue: a retry scheduled for later needs RQ's
# scheduler, whose lock a killed worker holds for a minute. Claims make an immediate re-run safe, and
# the scheduler pass enqueues again whatever a job that failed for good left queued.
SEND_JOB_RETRY = Retry(max=3)


def enqueue_nudges(nudge_ids: Iterable[int], *, queue_name: str = QUEUE_SEND, runtime: Runtime | None = None) -> int:
    """Enqueue send jobs for nudges already committed as `queued`. Call only after the commit.

    Returns the number of jobs. Each nudge remembers its job, so the scheduler can tell a nudge whose
    job is still waiting in Redis from one whose job was lost.
    """
    ids = sorted(set(nudge_ids))
    if not ids:
        return 0
    runtime = runtime or current_runtime()
    size = max(1, runtime.settings.send_batch_size)
    batches = [(f"send-{uuid.uuid4().hex}", ids[i:i + size]) for i in range(0, len(ids), size)]
    queue(queue_name, runtime).enqueue_many([
        Queue.prepare_data(
            send_batch, args=(batch,), job_id=job_id, timeout=SEND_JOB_TIMEOUT, retry=SEND_JOB_RETRY,
            result_ttl=600, failure_ttl=7 * 86400, description=f"send {len(batch)} nudges",
        )
        for job_id, batch in batches
    ])
    try:
        with runtime.database.transaction() as session:
            remember_jobs(session, [(nudge_id, job_id) for job_id, batch in batches for nudge_id in batch])
    except (OperationalError, InterfaceError):
        # The jobs are in Redis already; a nudge that forgot its job is only enqueued once more later.
        log.warning("could not note the send jobs of enqueued nudges", extra={"nudges": len(ids)})
    return len(batches)


@dataclass
class _Gate:
    """Shared by a batch's threads: once one claim meets the kill switch, the rest stop claiming."""

    paused: bool = False


class _Settled(Protocol):
    def wait(self) -> bool: ...


class _Done:
    def wait(self) -> bool:
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

    def wait(self) -> bool:
        self.done.acquire()
        if self.error is not None:
            raise self.error
        return self.result


class Ledger:
    """Group commit for a worker process: sending threads hand their claims and "sent" records to one
    thread, which writes whatever has piled up in one go and answers each thread.

    Each claim is still taken by the conditional UPDATE before that nudge's provider call, but a round
    of them costs one statement instead of one transaction each. On PostgreSQL the ledger keeps its own
    autocommit connection (each statement is atomic by itself, so a round is two round trips). A round
    that fails on a dropped connection is tried again on a new one; a claim whose commit was lost that
    way only ever fails safe (the nudge stays `sending` and goes to review).
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
        sealed = seal(store) if self._database.dialect == "postgresql" else None
        entry = _Entry(nudge_id, store=store, sealed=sealed)
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
        if self._database.dialect != "postgresql":
            with self._database.transaction() as session:
                won = claim_many(session, claims, now)
                record_sent_many(session, sent, now)
            return won
        if self._connection is None:
            self._connection = self._database.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        won = claim_rows(self._connection, claims, now)
        record_sent_rows(self._connection, sent, now)
        return won

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


_ledgers: dict[tuple[int, int], Ledger] = {}
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] | None = None
_lock = threading.Lock()
# Settling a failure takes a connection of its own; a storm of failures must not exhaust the pool.
_failure_slots = threading.BoundedSemaphore(4)


def _ledger(database: Database) -> Ledger:
    with _lock:
        key = (os.getpid(), id(database))
        if key not in _ledgers:
            _ledgers[key] = Ledger(database)
        return _ledgers[key]


def _executor(size: int) -> ThreadPoolExecutor:
    """The process' sending threads: they outlive a job, and so do their keep-alive connections."""
    global _pool, _pool_key
    with _lock:
        key = (os.getpid(), size)
        if _pool is None or _pool_key != key:
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="closer-send")
            _pool_key = key
            # With dozens of sending threads, a thread whose answer (or rate-limit admission) just came
            # back would wait up to 5 ms per busy thread for the GIL; a shorter slice keeps that small.
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        return _pool


Label = tuple[str, str, str]  # (outcome, channel, kind), as /metrics labels a nudge outcome


def _label(outcome: SendOutcome, plan: SendPlan) -> Label:
    return outcome.value, plan.channel.value, plan.kind.value


@job
def send_batch(nudge_ids: list[int]) -> dict[str, int]:
    runtime = current_runtime()
    with runtime.database.transaction() as session:
        if sending_paused(session):
            log.info("sending paused: batch left queued", extra={"nudges": len(nudge_ids)})
            return {SendOutcome.PAUSED.value: len(nudge_ids)}
        plans = load_plans(session, nudge_ids, runtime.settings)
    gate = _Gate()
    concurrency = min(len(plans), max(1, runtime.settings.send_concurrency))
    outcomes: Counter[Label] = Counter()
    errors: list[BaseException] = []
    if concurrency <= 1:
        writer = _Direct(runtime.database)
        for plan in plans:
            outcomes[_label(send_one(runtime, plan, gate, writer), plan)] += 1
    else:
        ledger = _ledger(runtime.database)
        pool = _executor(max(1, runtime.settings.send_concurrency))
        todo: SimpleQueue[SendPlan] = SimpleQueue()
        for plan in plans:
            todo.put(plan)
        # `concurrency` long-lived tasks each take the next plan until none is left.
        lanes = [pool.submit(_lane, runtime, todo, gate, ledger) for _ in range(concurrency)]
        wait(lanes)
        for lane in lanes:
            lane_outcomes, lane_errors = lane.result()
            outcomes.update(lane_outcomes)
            errors.extend(lane_errors)
    # Every outcome counted here is committed already, whether or not the batch fails below.
    count_nudge_outcomes(runtime, outcomes)
    if errors:
        # Every other nudge of the batch is settled; failing the job lets RQ retry the rest.
        log.error("send batch failed", extra={"errors": len(errors), "error": type(errors[0]).__name__})
        raise errors[0]
    totals: Counter[str] = Counter()
    for (outcome, _channel, _kind), amount in outcomes.items():
        totals[outcome] += amount
    log.info("batch sent", extra={"nudges": len(nudge_ids), **{f"n_{k}": v for k, v in totals.items()}})
    return dict(totals)


def _lane(
    runtime: Runtime, todo: SimpleQueue[SendPlan], gate: _Gate, writer: _Writer
) -> tuple[Counter[Label], list[BaseException]]:
    outcomes: Counter[Label] = Counter()
    errors: list[BaseException] = []
    records: list[_Settled] = []
    while True:
        try:
            plan = todo.get_nowait()
        except Empty:
            break
        try:
            outcomes[_label(send_one(runtime, plan, gate, writer, records), plan)] += 1
        except Exception as exc:
            errors.append(exc)
    for record in records:
        try:
            record.wait()
        except Exception as exc:
            errors.append(exc)
    return outcomes, errors


def send_one(
    runtime: Runtime, plan: SendPlan, gate: _Gate, writer: _Writer, records: list[_Settled] | None = None
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
