"""Send jobs: each job sends a batch of nudges, each claimed in the database before its provider call.

A job carries a batch of ids rather than one (RQ's own cost per job is more than a send's). Each nudge
then takes the same steps, in this order (`send_one`):
1. guard: a timed nudge that can no longer go as planned (quiet hours by now, a whole day overdue) is
   skipped or rescheduled; once a claim of the batch has met the kill switch, the rest are not claimed;
2. compose its message (a program step that cannot be rendered fails the nudge);
3. admit: wait for the channel's next slot under the rate shared by every worker (jobs.throttle);
4. claim: `queued -> sending` in one conditional UPDATE, which re-checks consent, pause and the kill
   switch; a lost claim is explained, and settled if it must be;
5. call the provider; the rate limit's own admission runs in the transport right before the request is
   written (if that fails, nothing was sent and the claim is given back);
6. record `sent` with the provider's id, or what the failure means: a retry with backoff, `failed`, or
   operator review when the outcome is unknown.
So:
- a retried job, or one RQ runs again after a worker died (RQ is at-least-once), finds the nudges it
  already sent no longer `queued` and skips them;
- a worker killed with -9 leaves at most its in-flight nudges in `sending`, which the scheduler hands
  to operator review rather than resending.
While the kill switch is on nothing is claimed: the nudges stay `queued` for the scheduler to enqueue
again once sending resumes.

A batch of one nudge, or any batch when SEND_CONCURRENCY is 1, is sent in turn on the job's thread,
each claim and record a transaction of its own (jobs.group_commit.Direct). Any other goes to the worker's
sending threads (jobs.send_lanes), whose claims and records the worker's group commit writes a round at a
time (jobs.group_commit.GroupCommit).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from jobs.group_commit import Direct, Settled, Writer, group_commit_for
from jobs.runtime import job, job_runtime
from jobs.send_lanes import Batch, Gate, label, send_in_lanes
from jobs.throttle import admit, hold, throttle
from service.domain.claims import explain_failed_claim, release_claim
from service.domain.composing import Composed, compose
from service.domain.planner import sending_paused
from service.domain.send_failures import fail_unsendable, record_failure
from service.domain.send_guard import apply_guard, send_time_guard
from service.domain.send_plans import SendOutcome, SendPlan, load_plans
from service.providers import OutboundEmail, OutboundSms, ProviderError, SendResult
from service.providers.admission import GateClosed, admission
from service.runtime import Runtime

log = logging.getLogger(__name__)

# Settling a failure takes a connection of its own; a storm of failures must not exhaust the pool.
_failure_slots = threading.BoundedSemaphore(4)


@job
def send_batch(nudge_ids: list[int]) -> dict[str, int]:
    runtime = job_runtime()
    with runtime.database.transaction() as session:
        if sending_paused(session):
            log.info("sending paused: batch left queued", extra={"nudges": len(nudge_ids)})
            return {SendOutcome.PAUSED.value: len(nudge_ids)}
        plans = load_plans(session, nudge_ids, runtime.settings)
    batch = Batch(runtime, len(plans))
    concurrency = max(1, runtime.settings.send_concurrency)
    if min(len(plans), concurrency) <= 1:
        _send_in_turn(runtime, plans, batch)
        detached = False
    else:
        detached = send_in_lanes(runtime, plans, batch, send=send_one, writer=group_commit_for(runtime.database),
                                 size=concurrency)
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


def _send_in_turn(runtime: Runtime, plans: list[SendPlan], batch: Batch) -> None:
    """One nudge after the other on this thread, each claim and record a transaction of its own."""
    writer = Direct(runtime.database)
    for plan in plans:
        batch.settle(label(send_one(runtime, plan, batch.gate, writer), plan))


def send_one(
    runtime: Runtime, plan: SendPlan, gate: Gate, writer: Writer, records: list[Settled] | None = None,
    claimed: Callable[[], None] | None = None,
) -> SendOutcome:
    """Send one nudge, or settle why not. With `records`, its "sent" record is handed over there instead of
    waited for; `claimed` is called once its claim is won."""
    if gate.paused:
        return SendOutcome.PAUSED
    held_back = _guard(runtime, plan)
    if held_back is not None:
        return held_back
    composed = _compose(runtime, plan)
    if composed is None:
        return _unrenderable(runtime, plan)
    throttle(runtime, plan.channel)  # admit: this channel's next slot under the shared rate
    if gate.paused:
        return SendOutcome.PAUSED
    if not writer.claim(plan.nudge_id, composed.store):
        return _lost_claim(runtime, plan, gate)
    if claimed is not None:
        claimed()
    try:
        result = _call(runtime, plan, composed.message)
    except GateClosed:
        _give_back(runtime, plan)
        raise
    except Exception as exc:
        return _failed_call(runtime, plan, exc)
    _record_sent(writer, plan, result, records)
    return SendOutcome.SENT


@contextmanager
def _settling(runtime: Runtime) -> Iterator[Session]:
    """A transaction of its own, to settle a nudge that is not sent now."""
    with _failure_slots, runtime.database.transaction() as session:
        yield session


def _guard(runtime: Runtime, plan: SendPlan) -> SendOutcome | None:
    """The send-time guard: a timed nudge that can no longer go out as planned is settled here (None: it
    may go now)."""
    decision = send_time_guard(plan, datetime.now(UTC))
    if decision is None:
        return None
    with _settling(runtime) as session:
        return apply_guard(session, plan, decision)


def _compose(runtime: Runtime, plan: SendPlan) -> Composed | None:
    try:
        return compose(plan, runtime.programs, runtime.settings)
    except (KeyError, IndexError, ValueError) as exc:
        log.error("nudge cannot be rendered", extra={"nudge_id": plan.nudge_id, "error": type(exc).__name__})
        return None


def _unrenderable(runtime: Runtime, plan: SendPlan) -> SendOutcome:
    with _settling(runtime) as session:
        return fail_unsendable(session, plan, "its program step could not be rendered")


def _lost_claim(runtime: Runtime, plan: SendPlan, gate: Gate) -> SendOutcome:
    """Why the claim was lost, settled if it must be; the kill switch closes the batch's gate."""
    with _settling(runtime) as session:
        outcome = explain_failed_claim(session, plan, datetime.now(UTC))
    if outcome is SendOutcome.PAUSED:
        gate.paused = True
    return outcome


def _call(runtime: Runtime, plan: SendPlan, message: OutboundSms | OutboundEmail) -> SendResult:
    """The provider call. The rate admission runs inside the transport, right before the request is
    written; if it fails, GateClosed says nothing reached the provider."""
    with admission(lambda: admit(runtime, plan.channel)):
        if isinstance(message, OutboundSms):
            return runtime.providers.sms.send_sms(message)
        return runtime.providers.email.send_email(message)


def _give_back(runtime: Runtime, plan: SendPlan) -> None:
    """Nothing reached the provider (Redis failed the admission): the nudge goes back to the queue."""
    with _settling(runtime) as session:
        release_claim(session, plan.nudge_id)


def _failed_call(runtime: Runtime, plan: SendPlan, exc: Exception) -> SendOutcome:
    """A retry with backoff, `failed`, or review when the provider may have sent it (record_failure); a
    Retry-After holds the channel for every worker."""
    with _settling(runtime) as session:
        outcome = record_failure(session, plan, exc, datetime.now(UTC))
    if isinstance(exc, ProviderError) and exc.retry_after:
        hold(runtime, plan.channel, exc.retry_after)
    return outcome


def _record_sent(writer: Writer, plan: SendPlan, result: SendResult, records: list[Settled] | None) -> None:
    settled = writer.record_sent(plan.nudge_id, result.provider_message_id)
    if records is None:
        settled.wait()
    else:
        records.append(settled)
