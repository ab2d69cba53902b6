"""Composing: the provider message for a plan, prompts and invitations rendered per partner."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.domain.claims import claim
from service.domain.composing import compose
from service.models import Channel, NudgeKind, NudgeStatus
from service.providers import OutboundEmail, OutboundSms
from service.runtime import Runtime
from tests.factories import make_couple
from tests.service.domain.queued_nudges import NOW, plan_of, queued


def test_an_sms_prompt_is_rendered_for_its_partner_with_its_nudge_id(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db, names=("Alex", "Sam"))
    nudge = queued(db, couple)
    composed = compose(plan_of(db, runtime, nudge), runtime.programs, runtime.settings)
    assert isinstance(composed.message, OutboundSms)
    assert "Alex" in composed.message.body or "Sam" in composed.message.body
    assert composed.message.nudge_id == nudge.id, "the provider's status webhook is told which nudge it reports"
    assert composed.message.status_callback is None, "the provider names its own status webhook"
    assert composed.store["body_text"] == composed.message.body, "the words sent are stored (encrypted)"


def test_the_invitation_to_a_next_program_names_the_program_and_links_to_the_choice(
    db: Session, runtime: Runtime
) -> None:
    couple = make_couple(db, names=("Alex", "Sam"))
    title = runtime.programs.get(couple.enrollments[0].program_key).title
    for channel in (Channel.SMS, Channel.EMAIL):
        nudge = queued(db, couple, channel=channel, kind=NudgeKind.PROGRAM_COMPLETE, step_day=99)
        message = compose(plan_of(db, runtime, nudge), runtime.programs, runtime.settings).message
        text = message.body if isinstance(message, OutboundSms) else message.text
        assert title in text and f"{runtime.settings.public_base_url}/programs" in text
        if isinstance(message, OutboundEmail):
            assert "Unsubscribe" in message.text and "/unsubscribe/" in message.html


def test_a_retried_email_goes_out_in_full_and_keeps_the_first_record(db: Session, runtime: Runtime) -> None:
    nudge = queued(db, make_couple(db), channel=Channel.EMAIL)
    first = compose(plan_of(db, runtime, nudge), runtime.programs, runtime.settings)
    assert claim(db, plan_of(db, runtime, nudge), NOW, first.store) and first.store["body_text"]
    db.refresh(nudge)
    nudge.status = NudgeStatus.QUEUED  # as after a retryable error, its time come again
    db.flush()
    again = compose(plan_of(db, runtime, nudge), runtime.programs, runtime.settings)
    assert again.store == {}, "what was sent is recorded once"
    assert isinstance(again.message, OutboundEmail) and isinstance(first.message, OutboundEmail)
    assert again.message.html == first.message.html and again.message.text == first.message.text
