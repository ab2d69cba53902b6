"""Send jobs on real Redis with an in-process RQ worker: batches, claims, the kill switch, and the
official SDKs talking to the local fake providers (whose own record says what arrived)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta

from rq import Queue
from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.scheduler import run_pass
from jobs.send import send_batch
from service.domain.planner import SENDING_PAUSED_FLAG
from service.models import ControlFlag, Couple, Nudge, NudgeStatus
from service.providers import Providers
from service.queues import QUEUE_SEND, enqueue_nudges
from service.runtime import Runtime
from service.settings import Settings
from tests.factories import make_couple
from tests.support.fake_providers import FakeProviders
from tests.support.metrics import counted
from tests.support.sending import run_worker_burst, sdk_providers


def due_couples(db: Session, count: int = 1, **kwargs: object) -> tuple[list[Couple], datetime]:
    """Couples whose first prompt is due within the next minute, with no quiet hours to depend on."""
    now = datetime.now(UTC)
    couples = [make_couple(db, **kwargs) for _ in range(count)]  # type: ignore[arg-type]
    for couple in couples:
        for partner in couple.partners:
            partner.quiet_start = partner.quiet_end = time(0, 0)
        for schedule in couple.enrollments[0].schedules:
            schedule.next_send_at = now
    db.commit()
    return couples, now


def nudges_of(db: Session, couples: list[Couple]) -> list[Nudge]:
    db.expire_all()
    ids = [c.enrollments[0].id for c in couples]
    return list(db.scalars(select(Nudge).where(Nudge.enrollment_id.in_(ids)).order_by(Nudge.id)))


def test_a_batch_sends_each_nudge_once_even_when_rq_runs_it_again(
    db: Session, runtime: Runtime, fake: FakeProviders, use_providers: Callable[[Providers], None]
) -> None:
    use_providers(sdk_providers(runtime.settings, twilio_url=fake.url, sendgrid_url=fake.url))
    couples, now = due_couples(db, 2)
    assert run_pass(runtime, now)["created"] == 8
    run_worker_burst(runtime.redis)
    sent = nudges_of(db, couples)
    assert {n.status for n in sent} == {NudgeStatus.SENT}
    enqueue_nudges(runtime, [n.id for n in sent])  # RQ is at-least-once: the same work may come back
    send_batch([n.id for n in sent])
    run_worker_burst(runtime.redis)
    assert set(fake.sent_counts().values()) == {1} and len(fake.sent_counts()) == 8
    by_id = {r.nudge_id: r for r in fake.records()}
    assert all(n.provider_message_id == by_id[n.id].provider_id for n in nudges_of(db, couples))


def test_each_send_is_counted_once_for_metrics(
    db: Session, runtime: Runtime, fake: FakeProviders, use_providers: Callable[[Providers], None]
) -> None:
    use_providers(sdk_providers(runtime.settings, twilio_url=fake.url, sendgrid_url=fake.url))
    before = {c: counted(runtime, "nudges", "sent", c, "prompt") for c in ("sms", "email")}
    couples, now = due_couples(db, 2)
    run_pass(runtime, now)
    run_worker_burst(runtime.redis)
    send_batch([n.id for n in nudges_of(db, couples)])  # RQ ran it again: nothing more is sent or counted
    assert {c: counted(runtime, "nudges", "sent", c, "prompt") - before[c] for c in before} == {"sms": 4, "email": 4}


def test_enqueue_makes_batches_and_each_nudge_remembers_its_job(
    db: Session, runtime: Runtime, use_settings: Callable[..., Settings]
) -> None:
    use_settings(send_batch_size=3)
    couples, now = due_couples(db, 2)
    run_pass(runtime, now)
    queue = Queue(QUEUE_SEND, connection=runtime.redis)
    jobs = {job.id: job.args[0] for job in queue.jobs}
    assert sorted(len(ids) for ids in jobs.values()) == [2, 3, 3]
    for nudge in nudges_of(db, couples):
        assert nudge.send_job_id in jobs and nudge.id in jobs[nudge.send_job_id]


def test_the_kill_switch_leaves_everything_queued_until_sending_resumes(
    db: Session, runtime: Runtime, fake: FakeProviders, use_providers: Callable[[Providers], None]
) -> None:
    use_providers(sdk_providers(runtime.settings, twilio_url=fake.url, sendgrid_url=fake.url))
    couples, now = due_couples(db)
    run_pass(runtime, now)
    flag = ControlFlag(key=SENDING_PAUSED_FLAG, value="1")
    db.add(flag)
    db.commit()
    run_worker_burst(runtime.redis)
    assert {n.status for n in nudges_of(db, couples)} == {NudgeStatus.QUEUED}
    assert fake.records() == []
    assert run_pass(runtime, now + timedelta(minutes=5))["status"] == "sending paused by an operator"
    flag.value = "0"
    db.commit()
    report = run_pass(runtime, now + timedelta(minutes=5))
    assert report["requeued"] == 4, "their job ran (and left them queued): they are enqueued again"
    run_worker_burst(runtime.redis)
    assert {n.status for n in nudges_of(db, couples)} == {NudgeStatus.SENT}
    assert sorted(fake.sent_counts().values()) == [1, 1, 1, 1]


def test_a_stop_that_lands_after_queueing_still_wins(
    db: Session, runtime: Runtime, fake: FakeProviders, use_providers: Callable[[Providers], None]
) -> None:
    from service.domain.consent import set_consent
    from service.models import Channel, ConsentState

    use_providers(sdk_providers(runtime.settings, twilio_url=fake.url, sendgrid_url=fake.url))
    couples, now = due_couples(db, email=False)
    run_pass(runtime, now)
    alex = couples[0].partners[0]
    set_consent(db, alex, Channel.SMS, ConsentState.OPTED_OUT, action="withdrawn", source="sms",
                source_detail="SMstop", now=now)
    db.commit()
    run_worker_burst(runtime.redis)
    statuses = {n.partner_id: n.status for n in nudges_of(db, couples)}
    assert statuses == {alex.id: NudgeStatus.CANCELLED, couples[0].partners[1].id: NudgeStatus.SENT}
    assert [r.to for r in fake.records()] == [couples[0].partners[1].phone_e164]
