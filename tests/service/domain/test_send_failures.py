"""Send failures: what each provider answer means for the nudge (a retry with backoff, `failed`, or
operator review)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.domain.claims import claim
from service.domain.send_failures import BACKOFF_CAP_SECONDS, MAX_ATTEMPTS, backoff, record_failure
from service.domain.send_plans import SendOutcome
from service.models import Channel, ConsentRecord, ConsentState, NudgeStatus
from service.providers import OutcomeUnknown, ProviderError, SendFailure
from service.runtime import Runtime
from tests.factories import make_couple
from tests.service.domain.queued_nudges import NOW, plan_of, queued, status_of


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


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    for attempts in range(1, MAX_ATTEMPTS + 1):
        ceiling = min(BACKOFF_CAP_SECONDS, 5.0 * 2 ** (attempts - 1))
        delays = {backoff(attempts, None).total_seconds() for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1, "jittered"
    assert backoff(1, 600).total_seconds() == 600
