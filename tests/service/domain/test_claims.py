"""Claims and "sent" records: a claim is won once, and only while consent, pause and the kill switch allow;
a lost claim is explained and settled; what the provider accepted is recorded."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from service.domain.claims import (
    Claim,
    claim,
    claim_many,
    explain_failed_claim,
    record_sent,
    record_sent_many,
    release_claim,
    seal,
)
from service.domain.planner import SENDING_PAUSED_FLAG
from service.domain.send_plans import SendOutcome
from service.models import Channel, ConsentState, ControlFlag, NudgeKind, NudgeStatus
from service.providers import SendResult
from service.runtime import Runtime
from tests.factories import make_couple
from tests.service.domain.queued_nudges import NOW, plan_of, queued, status_of


def test_a_claim_is_won_once(db: Session, runtime: Runtime) -> None:
    nudge = queued(db, make_couple(db))
    plan = plan_of(db, runtime, nudge)
    assert claim(db, plan, NOW, {"body_text": "hello"}) is True
    assert claim(db, plan, NOW, {"body_text": "hello"}) is False, "a re-run job finds it taken"
    assert explain_failed_claim(db, plan, NOW) is SendOutcome.GONE
    db.refresh(nudge)
    assert (nudge.status, nudge.attempts, nudge.sending_at, nudge.body_text) == (NudgeStatus.SENDING, 1, NOW, "hello")


def test_texts_sealed_ahead_by_a_sending_thread_are_stored_as_sent(db: Session, runtime: Runtime) -> None:
    nudge = queued(db, make_couple(db), channel=Channel.EMAIL)
    store: dict[str, str | None] = {"subject": 'A "quoted" subject, {braced}', "body_text": "back\\slash\nline"}
    assert claim_many(db, [Claim(nudge.id, store, seal(store))], NOW) == {nudge.id}
    # A provider id with every character an array literal has to quote.
    record_sent_many(db, [(nudge.id, 'id "with" \\ {odd}, chars')], NOW)
    db.refresh(nudge)
    assert (nudge.subject, nudge.body_text, nudge.body_html) == (store["subject"], store["body_text"], None)
    assert (nudge.status, nudge.provider_message_id) == (NudgeStatus.SENT, 'id "with" \\ {odd}, chars')


def test_claim_many_wins_what_may_be_sent(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    ok, withdrawn = queued(db, couple, position=0), queued(db, couple, position=1)
    couple.partners[1].sms_consent = ConsentState.OPTED_OUT  # (a STOP would also have cancelled it)
    db.flush()
    assert claim_many(db, [Claim(ok.id), Claim(withdrawn.id)], NOW) == {ok.id}


def test_the_kill_switch_stops_claims_and_leaves_nudges_queued(db: Session, runtime: Runtime) -> None:
    nudge = queued(db, make_couple(db))
    db.add(ControlFlag(key=SENDING_PAUSED_FLAG, value="1"))
    db.flush()
    plan = plan_of(db, runtime, nudge)
    assert claim(db, plan, NOW, {}) is False
    assert explain_failed_claim(db, plan, NOW) is SendOutcome.PAUSED
    assert status_of(db, nudge).status == NudgeStatus.QUEUED


def test_consent_withdrawn_after_queueing_cancels_at_send_time(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    nudge = queued(db, couple)
    couple.partners[0].sms_consent = ConsentState.OPTED_OUT
    db.flush()
    plan = plan_of(db, runtime, nudge)
    assert claim(db, plan, NOW, {}) is False
    assert explain_failed_claim(db, plan, NOW) is SendOutcome.CANCELLED
    nudge = status_of(db, nudge)
    assert nudge.status == NudgeStatus.CANCELLED and nudge.status_reason == "sms consent is opted_out"


def test_a_confirmation_goes_only_to_a_partner_who_has_not_said_yes(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db, confirmed=False)
    nudge = queued(db, couple, kind=NudgeKind.CONFIRMATION)
    assert claim(db, plan_of(db, runtime, nudge), NOW, {}) is True


def test_a_paused_partner_gets_no_prompt_but_their_invitation_waits(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    couple.partners[0].paused_until = NOW + timedelta(days=2)
    prompt = queued(db, couple)
    invitation = queued(db, couple, channel=Channel.EMAIL, kind=NudgeKind.PROGRAM_COMPLETE, step_day=99)
    outcomes = []
    for nudge in (prompt, invitation):
        plan = plan_of(db, runtime, nudge)
        assert claim(db, plan, NOW, {}) is False
        outcomes.append(explain_failed_claim(db, plan, NOW))
    assert outcomes == [SendOutcome.SKIPPED, SendOutcome.RESCHEDULED]
    invitation = status_of(db, invitation)
    assert invitation.status == NudgeStatus.SCHEDULED
    assert invitation.scheduled_for == NOW + timedelta(days=3), "09:00 on the first day after the pause"


def test_a_claim_released_before_any_call_goes_back_to_the_queue(db: Session, runtime: Runtime) -> None:
    nudge = queued(db, make_couple(db))
    plan = plan_of(db, runtime, nudge)
    claim(db, plan, NOW, {})
    release_claim(db, nudge.id)
    nudge = status_of(db, nudge)
    assert (nudge.status, nudge.attempts) == (NudgeStatus.QUEUED, 0)


def test_recording_a_send_keeps_a_status_a_callback_already_set(db: Session, runtime: Runtime) -> None:
    nudge = queued(db, make_couple(db))
    plan = plan_of(db, runtime, nudge)
    claim(db, plan, NOW, {})
    nudge.status = NudgeStatus.DELIVERED
    db.flush()
    record_sent(db, nudge.id, SendResult("SM" + "b" * 32), NOW)
    nudge = status_of(db, nudge)
    assert (nudge.status, nudge.provider_message_id) == (NudgeStatus.DELIVERED, "SM" + "b" * 32)
