"""What a failed send means for its nudge: a provider call that failed is retried later with exponential
backoff and jitter (never sooner than Retry-After), ended as `failed` with the provider's code (a
provider-reported opt-out also stops that channel for the partner), or, when the outcome is unknown, handed
to operator review and never resent; a nudge that cannot be rendered fails before any claim.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.db import affected_rows
from service.domain.consent import PROVIDER_STOPS, provider_stop
from service.domain.send_plans import SendOutcome, SendPlan
from service.models import Channel, Nudge, NudgeStatus, Partner
from service.providers import ProviderError, SendFailure

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 10
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 900.0
_NO_SYNC = {"synchronize_session": False}


def fail_unsendable(session: Session, plan: SendPlan, reason: str) -> SendOutcome:
    """A nudge that cannot be rendered (its program or step is gone) ends here, before any claim."""
    result = session.execute(
        update(Nudge).where(Nudge.id == plan.nudge_id, Nudge.status == NudgeStatus.QUEUED)
        .values(status=NudgeStatus.FAILED, error_code="unrenderable", status_reason=reason[:255]),
        execution_options=_NO_SYNC,
    )
    return SendOutcome.FAILED if affected_rows(result) else SendOutcome.GONE


def backoff(attempts: int, retry_after: float | None) -> timedelta:
    """Exponential backoff with jitter, never sooner than the provider's Retry-After."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * (2 ** max(0, attempts - 1)))
    delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security
    return timedelta(seconds=max(delay, retry_after or 0.0))


def record_failure(session: Session, plan: SendPlan, exc: Exception, now: datetime) -> SendOutcome:
    """What a failed provider call means for the nudge (it is `sending`, and this job holds it).

    Decided by the failure's meaning (`SendFailure`) alone; the provider's own code is only recorded.
    An exception that is no `ProviderError` says nothing about whether the message went: review it."""
    attempts = plan.attempts + 1
    sending = (Nudge.id == plan.nudge_id, Nudge.status == NudgeStatus.SENDING)
    failure = exc.failure if isinstance(exc, ProviderError) else SendFailure.OUTCOME_UNKNOWN
    if not isinstance(exc, ProviderError) or failure is SendFailure.OUTCOME_UNKNOWN:
        code = exc.code if isinstance(exc, ProviderError) else "error"
        session.execute(
            update(Nudge).where(*sending).values(
                needs_review=True, error_code=code,
                status_reason="the provider may have sent this: review before resending"),
            execution_options=_NO_SYNC,
        )
        log.warning("send outcome unknown", extra={"nudge_id": plan.nudge_id, "channel": plan.channel.value,
                                                   "error": type(exc).__name__})
        return SendOutcome.REVIEW
    if failure.retryable and attempts < MAX_ATTEMPTS:
        session.execute(
            update(Nudge).where(*sending).values(
                status=NudgeStatus.SCHEDULED, scheduled_for=now + backoff(attempts, exc.retry_after),
                error_code=exc.code, status_reason=f"retrying after provider error {exc.code}"),
            execution_options=_NO_SYNC,
        )
        return SendOutcome.RETRY
    reason = f"provider error {exc.code}" + (" after retries" if failure.retryable else "")
    if failure is SendFailure.INVALID_ADDRESS:
        what = "invalid or non-mobile number" if plan.channel is Channel.SMS else "invalid address"
        reason = f"{what} ({exc.code})"
    session.execute(
        update(Nudge).where(*sending).values(status=NudgeStatus.FAILED, error_code=exc.code, status_reason=reason),
        execution_options=_NO_SYNC,
    )
    partner = session.get(Partner, plan.partner_id) if failure in PROVIDER_STOPS else None
    if partner is not None:
        provider_stop(session, partner, plan.channel, failure, detail=exc.detail, now=now)
    log.info("send failed", extra={"nudge_id": plan.nudge_id, "channel": plan.channel.value, "code": exc.code,
                                   "failure": failure.value})
    return SendOutcome.FAILED
