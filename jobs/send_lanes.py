"""Send lanes: the worker's sending threads, shared by its send jobs.

Why: a provider call is mostly waiting for the provider, so a worker keeps many in flight, each on a
thread of its own. The threads outlive a job, and so do their keep-alive connections (no handshake per
job, or per message), and a thread takes the next nudge waiting whichever job it came from. When more
send jobs wait, a job returns as soon as each of its nudges is claimed and leaves its last provider
calls to the threads: the next job's nudges start as threads come free, instead of most threads idling
while one batch's last calls finish.

What it guarantees:
- every claim is taken before its provider call (`send_one` does both, on a lane), and no more calls
  are in flight in a process than its lanes (SEND_CONCURRENCY), so a kill -9 leaves no more nudges in
  doubt when jobs hand off than when they wait;
- a job waits until each of its nudges is past its claim (claimed, or settled without one), so a
  failure up to there still fails the job and RQ retries it; after a hand-off, a failure is logged,
  and whoever settles a batch's last nudge counts its outcomes;
- in a forked child (`closer worker --fork`, whose work horse exits with its job) a job always waits
  for its whole batch;
- the lanes are not daemon threads: a worker that exits normally waits for the calls in flight.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from queue import Empty, SimpleQueue

from rq import Queue, get_current_job

from jobs.group_commit import Settled, Writer
from service.domain.send_plans import SendOutcome, SendPlan
from service.runtime import Runtime
from service.telemetry import count_nudge_outcomes

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.001

Label = tuple[str, str, str]  # (outcome, channel, kind), as /metrics labels a nudge outcome


def label(outcome: SendOutcome, plan: SendPlan) -> Label:
    return outcome.value, plan.channel.value, plan.kind.value


@dataclass
class Gate:
    """Shared by a batch's threads: once one claim meets the kill switch, the rest stop claiming."""

    paused: bool = False


# jobs.send.send_one: (runtime, plan, gate, writer, records, claimed) -> outcome. It hands its "sent"
# record to `records` instead of waiting for it, and calls `claimed` once its claim is won.
SendOne = Callable[[Runtime, SendPlan, Gate, Writer, list[Settled], Callable[[], None]], SendOutcome]


class Batch:
    """One send job's nudges as the process' sending threads work through them: `claimed` is set once
    each is past its claim, `settled` once each is settled. After `detach` (the job has ended), whoever
    settles the last one counts the batch's outcomes and logs its failures."""

    def __init__(self, runtime: Runtime, size: int) -> None:
        self.runtime = runtime
        self.gate = Gate()
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


def send_in_lanes(runtime: Runtime, plans: list[SendPlan], batch: Batch, *, send: SendOne, writer: Writer,
                  size: int) -> bool:
    """Send `plans` on the process' `size` sending threads, claims and records through `writer`.

    Returns once each nudge is past its claim and, unless the job hands off its tail, once every nudge is
    settled; True when it handed off (the batch's last calls are still in flight)."""
    lanes = sending_threads(size)
    lanes.run(runtime, writer, plans, batch, send)
    batch.claimed.wait()
    if batch.errors or not _more_jobs_waiting(runtime) or not batch.detach():
        batch.settled.wait()
        return False
    return True


class Lanes:
    """The process' sending threads and the nudges waiting for one: the threads outlive a job (and so
    do their keep-alive connections), and take the next nudge whichever job it came from."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="closer-send")
        self.todo: SimpleQueue[tuple[SendPlan, Batch]] = SimpleQueue()
        self.active = 0
        self.lock = threading.Lock()

    def run(self, runtime: Runtime, writer: Writer, plans: list[SendPlan], batch: Batch, send: SendOne) -> None:
        for plan in plans:
            self.todo.put((plan, batch))
        with self.lock:
            start = min(len(plans), self.size - self.active)
            self.active += start
        for _ in range(start):
            self.pool.submit(self._lane, runtime, writer, send)

    def _lane(self, runtime: Runtime, writer: Writer, send: SendOne) -> None:
        records: list[tuple[Settled, Batch, Label]] = []
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
            _send_in_lane(runtime, plan, batch, writer, records, send)
        _harvest(records, block=True)


def _send_in_lane(
    runtime: Runtime, plan: SendPlan, batch: Batch, writer: Writer, records: list[tuple[Settled, Batch, Label]],
    send: SendOne,
) -> None:
    passed = False

    def claimed() -> None:
        nonlocal passed
        passed = True
        batch.passed_claim()

    pending: list[Settled] = []
    try:
        outcome = send(runtime, plan, batch.gate, writer, pending, claimed)
    except Exception as exc:
        batch.settle(error=exc)
        return
    finally:
        # After the error, if any, is recorded: the job reads the batch's errors as soon as its last
        # nudge is past its claim, and an error it has not seen would not fail it.
        if not passed:
            batch.passed_claim()
    if pending:
        records.append((pending[0], batch, label(outcome, plan)))
    else:
        batch.settle(label(outcome, plan))


def _harvest(
    records: list[tuple[Settled, Batch, Label]], *, block: bool
) -> list[tuple[Settled, Batch, Label]]:
    """Settle the sends whose "sent" record the group commit has written (all of them when `block`)."""
    left = []
    for record, batch, label_ in records:
        if not block and not record.ready():
            left.append((record, batch, label_))
            continue
        try:
            record.wait()
        except Exception as exc:
            batch.settle(error=exc)
        else:
            batch.settle(label_)
    return left


_lanes: Lanes | None = None
_lanes_key: tuple[int, int] | None = None
_lock = threading.Lock()


def sending_threads(size: int) -> Lanes:
    """The process' sending threads for this concurrency."""
    global _lanes, _lanes_key
    with _lock:
        key = (os.getpid(), size)
        if _lanes is None or _lanes_key != key:
            _lanes = Lanes(size)
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
