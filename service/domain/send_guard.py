"""The send-time guard: scheduled content (prompts, the invitation to a next program) that can no longer
go out as planned when its send job reaches it, because it is a whole day late or would land in the
partner's quiet hours, is skipped or rescheduled here instead of being claimed. Transactional messages
pass untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.db import affected_rows
from service.domain.planner import OVERDUE_AFTER
from service.domain.scheduling import UnknownTimeZone, is_quiet_now, next_allowed_instant
from service.domain.send_plans import TIMED_KINDS, SendOutcome, SendPlan
from service.models import Nudge, NudgeKind, NudgeStatus

_NO_SYNC = {"synchronize_session": False}


@dataclass(frozen=True)
class GuardDecision:
    outcome: SendOutcome
    reason: str
    retry_at: datetime | None = None


def send_time_guard(plan: SendPlan, now: datetime) -> GuardDecision | None:
    """Scheduled content that can no longer go out as planned; None when it may go now."""
    if plan.kind not in TIMED_KINDS:
        return None
    if now - plan.scheduled_for >= OVERDUE_AFTER:
        return GuardDecision(SendOutcome.SKIPPED, "a whole day overdue at send time")
    try:
        quiet = is_quiet_now(plan.timezone, plan.quiet_start, plan.quiet_end, now)
    except UnknownTimeZone:
        return GuardDecision(SendOutcome.SKIPPED, "unknown time zone")
    if not quiet:
        return None
    if plan.kind is NudgeKind.PROGRAM_COMPLETE:
        return GuardDecision(SendOutcome.RESCHEDULED, "waiting for the end of quiet hours",
                             next_allowed_instant(plan.timezone, plan.quiet_start, plan.quiet_end, now))
    return GuardDecision(SendOutcome.SKIPPED, "would have landed in quiet hours")


def apply_guard(session: Session, plan: SendPlan, decision: GuardDecision) -> SendOutcome:
    """Settle a still-queued nudge as the guard decided (skipped, or scheduled again); GONE if it moved on."""
    values: dict[str, object] = {"status_reason": decision.reason}
    if decision.outcome is SendOutcome.RESCHEDULED:
        values.update(status=NudgeStatus.SCHEDULED, scheduled_for=decision.retry_at)
    else:
        values.update(status=NudgeStatus.SKIPPED)
    result = session.execute(
        update(Nudge).where(Nudge.id == plan.nudge_id, Nudge.status == NudgeStatus.QUEUED).values(**values),
        execution_options=_NO_SYNC,
    )
    return decision.outcome if affected_rows(result) else SendOutcome.GONE
