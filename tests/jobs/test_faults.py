"""Faults, each ending with no nudge lost and none doubled, judged from the fake provider's own record:
429 storms, 5xx storms, hung connections, permanent errors, a `closer worker` killed with -9 mid-batch,
and the same batch run twice at once.

"Lost" means a due nudge that neither reached the fake nor ended with a reason: every nudge must end
sent (and received exactly once), failed or skipped with the provider's code, or held for operator
review (received at most once) when its outcome cannot be known.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta

from rq import Queue, Worker
from rq.job import Job
from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.scheduler import run_pass
from jobs.send import send_batch
from service.domain.send_failures import MAX_ATTEMPTS
from service.models import Channel, ConsentState, Nudge, NudgeStatus
from service.providers import Providers
from service.queues import QUEUE_NAMES
from service.runtime import Runtime
from tests.factories import make_couple
from tests.support.fake_providers import FakeProviders
from tests.support.metrics import counted
from tests.support.sending import Scratch, run_worker_burst, sdk_providers, wait_for

UNSETTLED = (NudgeStatus.SCHEDULED, NudgeStatus.QUEUED)


def due_couples(session: Session, count: int, *, email: bool = True) -> datetime:
    now = datetime.now(UTC)
    for _ in range(count):
        couple = make_couple(session, email=email)
        for partner in couple.partners:
            partner.quiet_start = partner.quiet_end = time(0, 0)
        for schedule in couple.enrollments[0].schedules:
            schedule.next_send_at = now
    session.commit()
    return now


def all_nudges(session: Session) -> list[Nudge]:
    session.expire_all()
    return list(session.scalars(select(Nudge).order_by(Nudge.id)))


def drive(runtime: Runtime, start: datetime, session: Session, *, rounds: int = 40) -> int:
    """Scheduler passes (each two minutes later, as of the pass) and worker runs until nothing waits."""
    for n in range(rounds):
        run_pass(runtime, start + timedelta(minutes=2 * n))
        run_worker_burst(runtime.redis)
        if not any(nudge.status in UNSETTLED for nudge in all_nudges(session)):
            return n + 1
    raise AssertionError(f"nudges still waiting after {rounds} rounds")


def assert_none_lost_or_doubled(fake: FakeProviders, nudges: list[Nudge]) -> Counter[str]:
    received = Counter({nudge_id: count for (_, nudge_id), count in fake.sent_counts().items()})
    outcome: Counter[str] = Counter()
    for nudge in nudges:
        assert received[nudge.id] <= 1, f"nudge {nudge.id} reached the provider {received[nudge.id]} times"
        if nudge.status == NudgeStatus.SENT:
            assert received[nudge.id] == 1 and nudge.provider_message_id
            outcome["sent"] += 1
        elif nudge.needs_review:
            assert nudge.status == NudgeStatus.SENDING and nudge.status_reason
            outcome["review"] += 1
        else:
            assert nudge.status in (NudgeStatus.FAILED, NudgeStatus.SKIPPED, NudgeStatus.CANCELLED), nudge.status
            assert nudge.status_reason and received[nudge.id] == 0
            outcome[nudge.status] += 1
    assert set(received) <= {n.id for n in nudges}
    return outcome


def test_a_429_storm_delays_but_loses_and_doubles_nothing(
    db: Session, runtime: Runtime, fake: FakeProviders, use_providers: Callable[[Providers], None]
) -> None:
    use_providers(sdk_providers(runtime.settings, twilio_url=fake.url, sendgrid_url=fake.url))
    fake.storm(429, count=30, retry_after=90)
    start = due_couples(db, 6)
    run_pass(runtime, start)
    run_worker_burst(runtime.redis)
    waiting = [n for n in all_nudges(db) if n.status == NudgeStatus.SCHEDULED]
    assert len(waiting) == 24, "every first attempt met the storm"
    assert all(n.scheduled_for >= start + timedelta(seconds=89) for n in waiting), "Retry-After is honoured"
    drive(runtime, start + timedelta(minutes=2), db)
    nudges = all_nudges(db)
    assert assert_none_lost_or_doubled(fake, nudges) == {"sent": 24}
    assert sum(r.status == 429 for r in fake.records()) == 30
    assert max(n.attempts for n in nudges) <= MAX_ATTEMPTS


def test_a_5xx_storm_loses_and_doubles_nothing(
    db: Session, runtime: Runtime, fake: FakeProviders, use_providers: Callable[[Providers], None]
) -> None:
    use_providers(sdk_providers(runtime.settings, twilio_url=fake.url, sendgrid_url=fake.url))
    fake.storm(503, count=20, every=2)
    fake.storm(500, count=10)
    start = due_couples(db, 6)
    drive(runtime, start, db)
    assert assert_none_lost_or_doubled(fake, all_nudges(db)) == {"sent": 24}
    assert Counter(r.status for r in fake.records() if r.outcome == "rejected") == {503: 20, 500: 10}


def test_hung_connections_go_to_review_and_are_never_resent(
    db: Session, runtime: Runtime, fake: FakeProviders, use_providers: Callable[[Providers], None]
) -> None:
    use_providers(sdk_providers(runtime.settings, twilio_url=fake.url, sendgrid_url=fake.url, timeout=0.5))
    fake.hang(2.0, channel="sms", count=2)
    fake.hang(2.0, channel="email", count=1)
    start = due_couples(db, 3)
    drive(runtime, start, db)
    for later in (timedelta(minutes=30), timedelta(hours=3)):  # stale-sending sweeps, more passes: still once
        run_pass(runtime, start + later)
        run_worker_burst(runtime.redis)
    nudges = all_nudges(db)
    outcome = assert_none_lost_or_doubled(fake, nudges)
    assert outcome == {"sent": 9, "review": 3}
    hung = {r.nudge_id for r in fake.records() if r.outcome == "hung"}
    assert {n.id for n in nudges if n.needs_review} == hung


def test_permanent_errors_end_the_nudge_with_the_providers_code(
    db: Session, runtime: Runtime, fake: FakeProviders, use_providers: Callable[[Providers], None]
) -> None:
    use_providers(sdk_providers(runtime.settings, twilio_url=fake.url, sendgrid_url=fake.url))
    fake.storm(400, channel="sms", count=1, error_code=21610)
    fake.storm(400, channel="email", count=1)
    start = due_couples(db, 2)
    drive(runtime, start, db)
    nudges = all_nudges(db)
    assert assert_none_lost_or_doubled(fake, nudges) == {"sent": 6, NudgeStatus.FAILED: 2}
    failed = {n.channel: n for n in nudges if n.status == NudgeStatus.FAILED}
    assert failed[Channel.SMS].error_code == "21610" and failed[Channel.EMAIL].error_code == "400"
    opted_out = db.get(type(failed[Channel.SMS].partner), failed[Channel.SMS].partner_id)
    assert opted_out is not None and opted_out.consent(Channel.SMS) is ConsentState.OPTED_OUT


# --- real processes, on a committed scratch database --------------------------------------------


def seed_scratch(scratch: Scratch, couples: int, *, email: bool = False) -> datetime:
    with scratch.app.app_context():
        session = scratch.runtime.database.new_session()
        try:
            return due_couples(session, couples, email=email)
        finally:
            session.close()


def scratch_nudges(scratch: Scratch) -> list[Nudge]:
    session = scratch.runtime.database.new_session()
    try:
        return all_nudges(session)
    finally:
        session.close()


def test_a_worker_killed_with_9_mid_batch_loses_and_doubles_nothing(scratch: Scratch) -> None:
    with FakeProviders(latency=0.3) as fake:
        start = seed_scratch(scratch, 60)
        assert run_pass(scratch.runtime, start)["created"] == 120
        env = scratch.worker_env(fake.url, SEND_CONCURRENCY="8", SEND_BATCH_SIZE="40")
        worker = scratch.start_worker(env)
        try:
            assert wait_for(lambda: len(fake.records()) >= 12, timeout=90), "the worker never got going"
        finally:
            scratch.kill_worker(worker, signal.SIGKILL)
        at_kill = Counter(n.status for n in scratch_nudges(scratch))
        assert at_kill[NudgeStatus.SENT] < 120 and at_kill[NudgeStatus.QUEUED] > 0, "killed mid-batch"

        # As of ten minutes later: RQ's abandoned job is handed back; a fresh worker finishes the work.
        run_pass(scratch.runtime, start + timedelta(minutes=10))
        drainer = scratch.start_worker(env)
        try:
            settled = wait_for(lambda: not any(n.status in UNSETTLED for n in scratch_nudges(scratch)), timeout=120)
        finally:
            scratch.kill_worker(drainer, signal.SIGTERM)
        assert settled, Counter(n.status for n in scratch_nudges(scratch))
        run_pass(scratch.runtime, start + timedelta(minutes=30))
        nudges = scratch_nudges(scratch)
        outcome = assert_none_lost_or_doubled(fake, nudges)
    assert outcome["sent"] + outcome["review"] == 120
    assert outcome["review"] <= 8, "at most the killed worker's in-flight sends are in doubt"
    assert len(fake.sent_counts()) >= 112


def test_the_same_batch_run_twice_at_once_sends_each_nudge_once(scratch: Scratch) -> None:
    with FakeProviders(latency=0.05) as fake:
        scratch.runtime.providers = sdk_providers(scratch.settings, twilio_url=fake.url, sendgrid_url=fake.url)
        scratch.runtime.settings = scratch.settings.with_overrides(send_concurrency=8)
        start = seed_scratch(scratch, 20, email=True)
        run_pass(scratch.runtime, start)
        ids = [n.id for n in scratch_nudges(scratch)]
        results: list[dict[str, int]] = []

        def run() -> None:
            results.append(send_batch(ids))

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        nudges = scratch_nudges(scratch)
        assert assert_none_lost_or_doubled(fake, nudges) == {"sent": 80}
    assert sum(r.get("sent", 0) for r in results) == 80


def test_with_more_batches_waiting_a_job_hands_its_last_calls_to_the_sending_threads(scratch: Scratch) -> None:
    """A job ends once each of its nudges is claimed when more jobs wait, so the next job's nudges take
    threads as they come free; every nudge still goes once, and is counted once."""
    with FakeProviders(latency=0.2) as fake:
        scratch.runtime.providers = sdk_providers(scratch.settings, twilio_url=fake.url, sendgrid_url=fake.url)
        scratch.runtime.settings = scratch.settings.with_overrides(send_concurrency=2, send_batch_size=2)
        start = seed_scratch(scratch, 2, email=True)
        before = {c: counted(scratch.runtime, "nudges", "sent", c, "prompt") for c in ("sms", "email")}
        assert run_pass(scratch.runtime, start)["created"] == 8
        job_ids = {n.send_job_id for n in scratch_nudges(scratch)}
        assert len(job_ids) == 4
        run_worker_burst(scratch.runtime.redis)
        assert wait_for(lambda: {n.status for n in scratch_nudges(scratch)} == {NudgeStatus.SENT}, timeout=10)
        results = [Job.fetch(job_id, connection=scratch.runtime.redis).return_value() or {}
                   for job_id in job_ids if job_id]
        assert sum(r.get("in_flight", 0) for r in results) > 0, "no job handed off its last calls"
        assert assert_none_lost_or_doubled(fake, scratch_nudges(scratch)) == {"sent": 8}
        assert wait_for(lambda: {c: counted(scratch.runtime, "nudges", "sent", c, "prompt") - before[c]
                                 for c in before} == {"sms": 4, "email": 4}, timeout=10)


def test_a_forked_work_horse_waits_for_its_whole_batch(scratch: Scratch) -> None:
    """`closer worker --fork`: each job's child exits as soon as the job returns, so a job there must not
    hand calls off to threads that die with it; every nudge is sent, none is left for review."""
    with FakeProviders(latency=0.2) as fake:
        scratch.runtime.providers = sdk_providers(scratch.settings, twilio_url=fake.url, sendgrid_url=fake.url)
        scratch.runtime.settings = scratch.settings.with_overrides(send_concurrency=2, send_batch_size=2)
        start = seed_scratch(scratch, 2, email=True)
        assert run_pass(scratch.runtime, start)["created"] == 8
        job_ids = {n.send_job_id for n in scratch_nudges(scratch)}
        scratch.runtime.database.engine.dispose()  # no pooled connection may be shared with the children
        queues = [Queue(name, connection=scratch.runtime.redis) for name in QUEUE_NAMES]
        Worker(queues, connection=scratch.runtime.redis).work(burst=True, logging_level="WARNING")
        nudges = scratch_nudges(scratch)
        assert {n.status for n in nudges} == {NudgeStatus.SENT}
        assert not [n for n in nudges if n.needs_review]
        results = [Job.fetch(job_id, connection=scratch.runtime.redis).return_value() or {}
                   for job_id in job_ids if job_id]
        assert sum(r.get("sent", 0) for r in results) == 8
        assert not [r for r in results if r.get("in_flight")]
        assert assert_none_lost_or_doubled(fake, nudges) == {"sent": 8}
