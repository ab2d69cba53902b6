"""End to end: a couple confirms, `closer tick --now <their send time>` plans, an RQ worker (in this process,
on real Redis) sends through the official Twilio and SendGrid SDKs to Prism mocks of both specs, once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta

from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.cli import main as closer
from service.domain.enrollment import confirm_channel
from service.models import Channel, EnrollmentStatus, Nudge, NudgeStatus
from service.providers import Providers
from service.queues import enqueue_nudges
from service.runtime import Runtime
from tests.factories import make_couple
from tests.support.fake_providers import FakeProviders
from tests.support.prism import PrismPair
from tests.support.sending import queued_jobs, run_worker_burst, sdk_providers


def tick(app: Flask, now: datetime) -> dict[str, int | str]:
    """`closer tick` in this process: it runs on the runtime the `app` fixture set for it."""
    result = CliRunner().invoke(closer, ["tick", "--now", now.isoformat()])
    assert result.exit_code == 0, result.output
    report: dict[str, int | str] = json.loads(result.output.strip().splitlines()[-1])
    return report


def test_after_both_confirm_each_partner_gets_their_prompt_by_sms_and_email_once(
    app: Flask, db: Session, runtime: Runtime, prism: PrismPair, use_providers: Callable[[Providers], None]
) -> None:
    couple = make_couple(db, names=("Alex", "Sam"), confirmed=False, timezones=("America/New_York", "Europe/London"),
                         preferred=(time(9, 0), time(19, 30)))
    # The worker checks quiet hours against the real clock, whatever instant the tick was told: this test
    # must not depend on the hour it runs at.
    signup = datetime.now(UTC) - timedelta(hours=2)
    for partner in couple.partners:
        partner.quiet_start = partner.quiet_end = time(0, 0)
    for partner in couple.partners:
        for channel in (Channel.SMS, Channel.EMAIL):
            confirm_channel(db, partner, channel, source="sms" if channel is Channel.SMS else "email",
                            source_detail="test", now=signup)
    enrollment = couple.enrollments[0]
    assert enrollment.status == EnrollmentStatus.ACTIVE
    db.commit()
    due = sorted(s.next_send_at for s in enrollment.schedules if s.next_send_at is not None)

    with FakeProviders(upstream={"sms": prism.twilio.url, "email": prism.sendgrid.url}) as relay:
        use_providers(sdk_providers(runtime.settings, twilio_url=relay.url, sendgrid_url=relay.url))
        for moment in due:
            report = tick(app, moment)
            assert report["status"] == "ok" and report["created"] == 2
            assert queued_jobs(runtime.redis) >= 1
            run_worker_burst(runtime.redis)
        # The same instant again, and RQ running the same jobs again (it is at-least-once): nothing more.
        assert tick(app, due[-1])["created"] == 0
        ids = list(db.scalars(select(Nudge.id).where(Nudge.enrollment_id == enrollment.id)))
        enqueue_nudges(runtime, ids)
        run_worker_burst(runtime.redis)
        records = relay.records()

    assert [r.status for r in records if r.channel == "sms"] == [201, 201], "Prism accepted both texts"
    assert [r.status for r in records if r.channel == "email"] == [202, 202], "and both emails"
    received = Counter((r.channel, r.to) for r in records)
    alex, sam = couple.partners
    assert received == {("sms", alex.phone_e164): 1, ("sms", sam.phone_e164): 1,
                        ("email", alex.email): 1, ("email", sam.email): 1}
    db.expire_all()
    nudges = db.scalars(select(Nudge).where(Nudge.enrollment_id == enrollment.id)).all()
    assert len(nudges) == 4 and {n.status for n in nudges} == {NudgeStatus.SENT}
    assert {n.step_day for n in nudges} == {1}
    assert {n.provider_message_id for n in nudges if n.channel == Channel.SMS} <= {r.provider_id for r in records}
    assert {r.nudge_id for r in records} == {n.id for n in nudges}
    assert all(n.sent_at is not None and n.body_text for n in nudges), "the words sent are kept, encrypted"


def test_tick_refuses_an_instant_without_a_time_zone(app: Flask) -> None:
    result = CliRunner().invoke(closer, ["tick", "--now", "2026-03-02T09:00:00"])
    assert result.exit_code == 2 and "time zone" in result.output
