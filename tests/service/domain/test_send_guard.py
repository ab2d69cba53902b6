"""The send-time guard: scheduled content late or landing in quiet hours is skipped or rescheduled."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from sqlalchemy.orm import Session

from service.domain.send_guard import apply_guard, send_time_guard
from service.domain.send_plans import SendOutcome
from service.models import NudgeKind, NudgeStatus
from service.runtime import Runtime
from tests.factories import make_couple
from tests.service.domain.queued_nudges import NOW, plan_of, queued, status_of


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
