"""Delivery rules that act on a partner's schedule."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.domain.scheduling import local_date, send_instant
from service.models import EnrollmentStatus, Partner, PartnerSchedule


def skip_today(session: Session, partner: Partner, now: datetime) -> bool:
    """Skip the step due later today (local), moving the schedule to the next day's step."""
    schedules = session.scalars(
        select(PartnerSchedule).where(
            PartnerSchedule.partner_id == partner.id, PartnerSchedule.next_send_at.is_not(None)
        )
    ).all()
    today = local_date(partner, now)
    skipped = False
    for schedule in schedules:
        if schedule.enrollment.status != EnrollmentStatus.ACTIVE or schedule.next_send_at is None:
            continue
        if local_date(partner, schedule.next_send_at) == today:
            schedule.next_day += 1
            schedule.next_send_at = send_instant(partner, today + timedelta(days=1))
            skipped = True
    return skipped
