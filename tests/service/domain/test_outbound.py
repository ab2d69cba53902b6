"""Turning a queued nudge into a provider call: the claim, the rules checked at send time, and what each
provider answer means for the nudge."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.domain.outbound import (
    BACKOFF_CAP_SECONDS,
    MAX_ATTEMPTS,
    Claim,
    SendOutcome,
    SendPlan,
    apply_guard,
    backoff,
    claim,
    claim_many,
    compose,
    explain_failed_claim,
    load_plans,
    record_failure,
    record_sent,
    release_claim,
    send_time_guard,
)
from service.domain.planner import SENDING_PAUSED_FLAG
from service.models import (
    Channel,
    ConsentRecord,
    ConsentState,
    ControlFlag,
    Couple,
    Nudge,
    NudgeKind,
    NudgeStatus,
)
from service.providers import OutboundEmail, OutboundSms, OutcomeUnknown, ProviderError, SendFailure, SendResult
from service.runtime import Runtime
from tests.factories import make_couple

NOW = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # 09:00 in New York


def queued(db: Session, couple: Couple, *, channel: Channel = Channel.SMS, kind: NudgeKind = NudgeKind.PROMPT,
           position: int = 0, scheduled_for: datetime = NOW, step_day: int = 1) -> Nudge:
    nudge = Nudge(enrollment=couple.enrollments[0], partner=couple.partners[position], kind=kind,
                  step_day=step_day, channel=channel, status=NudgeStatus.QUEUED, scheduled_for=scheduled_for,
                  queued_at=scheduled_for)
    db.add(nudge)
    db.flush()
    return nudge


def plan_of(db: Session, runtime: Runtime, nudge: Nudge) -> SendPlan:
    [plan] = load_plans(db, [nudge.id], runtime.settings)
    return plan


def status_of(db: Session, nudge: Nudge) -> Nudge:
    db.expire(nudge)
    return nudge


def test_a_plan_holds_what_the_send_needs(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db, names=("Alex", "Sam"))
    plan = plan_of(db, runtime, queued(db, couple))
    assert (plan.name, plan.other_name, plan.address) == ("Alex", "Sam", couple.partners[0].phone_e164)
    assert plan.reply_to == f"reply+{couple.partners[0].reply_token}@{runtime.settings.inbound_email_domain}"
    assert load_plans(db, [plan.nudge_id + 1000], runtime.settings) == []


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


def test_a_claim_is_won_once(db: Session, runtime: Runtime) -> None:
    nudge = queued(db, make_couple(db))
    plan = plan_of(db, runtime, nudge)
    assert claim(db, plan, NOW, {"body_text": "hello"}) is True
    assert claim(db, plan, NOW, {"body_text": "hello"}) is False, "a re-run job finds it taken"
    assert explain_failed_claim(db, plan, NOW) is SendOutcome.GONE
    db.refresh(nudge)
    assert (nudge.status, nudge.attempts, nudge.sending_at, nudge.body_text) == (NudgeStatus.SENDING, 1, NOW, "hello")


def test_texts_sealed_ahead_by_a_sending_thread_are_stored_as_sent(db: Session, runtime: Runtime) -> None:
    from service.domain.outbound import record_sent_many, seal

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


@pytest.mark.parametrize(("kind", "now", "outcome"), [
    (NudgeKind.PROMPT, NOW + timedelta(days=1), SendOutcome.SKIPPED),  # a whole day late
    (NudgeKind.PROMPT, NOW + timedelta(hours=13), SendOutcome.SKIPPED),  # 22:00: quiet hours
    (NudgeKind.PROGRAM_COMPLETE, NOW + timedelta(hours=13), SendOutcome.RESCHEDULED),
    (NudgeKind.PROMPT, NOW + timedelta(hours=3), None),
    (NudgeKind.CONFIRMATION, NOW + timedelta(hours=13), None),  # asked for now: not held to quiet hours
])
def test_send_time_rules_for_scheduled_content(db: Session, runtime: Runtime, kind: NudgeKind, now: datetime,
                                               outcome: SendOutcome | None) -> None:
    couple = make_couple(db, confirmed=kind is not NudgeKind.CONFIRMATION)
    nudge = queued(db, couple, kind=kind, step_day=1 if kind is NudgeKind.PROMPT else 99)
    plan = plan_of(db, runtime, nudge)
    decision = send_time_guard(plan, now)
    assert (decision.outcome if decision else None) is outcome
    if decision is not None:
        assert apply_guard(db, plan, decision) is outcome
        nudge = status_of(db, nudge)
        if outcome is SendOutcome.RESCHEDULED:
            assert nudge.status == NudgeStatus.SCHEDULED
            assert nudge.scheduled_for == NOW + timedelta(days=1, hours=-1), "08:00 the next morning"
        else:
            assert nudge.status == NudgeStatus.SKIPPED


def test_a_retryable_error_schedules_a_retry_no_sooner_than_retry_after(db: Session, runtime: Runtime) -> None:
    nudge = queued(db, make_couple(db))
    plan = plan_of(db, runtime, nudge)
    claim(db, plan, NOW, {})
    error = ProviderError("429", provider="twilio", code="20429", failure=SendFailure.RATE_LIMITED, retry_after=120)
    outcome = record_failure(db, plan, error, NOW)
    assert outcome is SendOutcome.RETRY
    nudge = status_of(db, nudge)
    assert nudge.status == NudgeStatus.SCHEDULED and nudge.error_code == "20429"
    assert nudge.scheduled_for >= NOW + timedelta(seconds=120)


def test_retries_end_as_failed(db: Session, runtime: Runtime) -> None:
    nudge = queued(db, make_couple(db))
    nudge.attempts = MAX_ATTEMPTS - 1
    db.flush()
    plan = plan_of(db, runtime, nudge)
    claim(db, plan, NOW, {})
    error = ProviderError("503", provider="twilio", code="20503", failure=SendFailure.TEMPORARY)
    assert record_failure(db, plan, error, NOW) is SendOutcome.FAILED
    nudge = status_of(db, nudge)
    assert nudge.status == NudgeStatus.FAILED and nudge.status_reason == "provider error 20503 after retries"


def test_an_opted_out_number_fails_the_nudge_and_marks_the_number_opted_out(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    nudge = queued(db, couple)
    later = queued(db, couple, step_day=2)
    plan = plan_of(db, runtime, nudge)
    claim(db, plan, NOW, {})
    error = ProviderError("stop", provider="twilio", code="21610", failure=SendFailure.OPTED_OUT)
    assert record_failure(db, plan, error, NOW) is SendOutcome.FAILED
    alex = couple.partners[0]
    db.refresh(alex)
    assert alex.consent(Channel.SMS) is ConsentState.OPTED_OUT
    assert alex.consent(Channel.EMAIL) is ConsentState.CONFIRMED
    assert status_of(db, later).status == NudgeStatus.CANCELLED
    record = db.scalars(select(ConsentRecord).order_by(ConsentRecord.id.desc())).first()
    assert record is not None and record.source_detail == "twilio 21610"


@pytest.mark.parametrize("code", ["21211", "21614"])
def test_an_invalid_or_landline_number_fails_with_the_reason(db: Session, runtime: Runtime, code: str) -> None:
    nudge = queued(db, make_couple(db))
    plan = plan_of(db, runtime, nudge)
    claim(db, plan, NOW, {})
    record_failure(db, plan, ProviderError("bad number", provider="twilio", code=code,
                                           failure=SendFailure.INVALID_ADDRESS), NOW)
    nudge = status_of(db, nudge)
    assert (nudge.status, nudge.error_code) == (NudgeStatus.FAILED, code)
    assert nudge.status_reason == f"invalid or non-mobile number ({code})"


def test_the_failure_meaning_decides_not_the_vendor_code(db: Session, runtime: Runtime) -> None:
    """Any provider's opt-out stops that channel, named on the consent record as the provider names it."""
    couple = make_couple(db)
    nudge = queued(db, couple, channel=Channel.EMAIL)
    plan = plan_of(db, runtime, nudge)
    claim(db, plan, NOW, {})
    error = ProviderError("stop", provider="acme", code="E-77", failure=SendFailure.OPTED_OUT)
    assert record_failure(db, plan, error, NOW) is SendOutcome.FAILED
    alex = couple.partners[0]
    db.refresh(alex)
    assert (alex.consent(Channel.EMAIL), alex.consent(Channel.SMS)) == (ConsentState.OPTED_OUT, ConsentState.CONFIRMED)
    record = db.scalars(select(ConsentRecord).order_by(ConsentRecord.id.desc())).first()
    assert record is not None and (record.source, record.source_detail) == ("provider", "acme E-77")
    assert status_of(db, nudge).status_reason == "provider error E-77"


def test_an_unknown_outcome_goes_to_review_and_is_never_resent(db: Session, runtime: Runtime) -> None:
    nudge = queued(db, make_couple(db))
    plan = plan_of(db, runtime, nudge)
    claim(db, plan, NOW, {})
    assert record_failure(db, plan, OutcomeUnknown("read timeout", provider="twilio"), NOW) is SendOutcome.REVIEW
    nudge = status_of(db, nudge)
    assert nudge.status == NudgeStatus.SENDING and nudge.needs_review and nudge.error_code == "outcome_unknown"
    assert claim(db, plan, NOW, {}) is False


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


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    for attempts in range(1, MAX_ATTEMPTS + 1):
        ceiling = min(BACKOFF_CAP_SECONDS, 5.0 * 2 ** (attempts - 1))
        delays = {backoff(attempts, None).total_seconds() for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1, "jittered"
    assert backoff(1, 600).total_seconds() == 600


def test_quiet_hours_use_the_partners_own_zone(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db, timezones=("Australia/Sydney", "Asia/Kolkata"))
    sydney = plan_of(db, runtime, queued(db, couple, position=0))
    kolkata = plan_of(db, runtime, queued(db, couple, position=1))
    at = datetime(2026, 7, 1, 13, 0, tzinfo=UTC)  # 23:00 in Sydney, 18:30 in Kolkata
    assert (sydney.quiet_start, sydney.quiet_end) == (time(21, 30), time(8, 0))
    sydney_decision = send_time_guard(sydney.__class__(**{**sydney.__dict__, "scheduled_for": at}), at)
    kolkata_decision = send_time_guard(kolkata.__class__(**{**kolkata.__dict__, "scheduled_for": at}), at)
    assert sydney_decision is not None and sydney_decision.outcome is SendOutcome.SKIPPED
    assert kolkata_decision is None


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
