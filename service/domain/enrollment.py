"""Enrolling couples: each partner confirms for themselves, and the program starts once both have.

We start only when both partners have confirmed (on at least one channel each), so neither is nudged
into a shared log the other never agreed to. The invited partner gets at most two gentle reminders.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from service.domain.consent import set_consent
from service.domain.scheduling import first_program_date, send_instant
from service.models import (
    Channel,
    ConsentAction,
    ConsentState,
    Enrollment,
    EnrollmentStatus,
    Partner,
    PartnerSchedule,
)

# An enrollment still under way: waiting for both partners to confirm, or running.
OPEN_STATUSES = (EnrollmentStatus.PENDING, EnrollmentStatus.ACTIVE)


def open_enrollments(couple_id: int) -> Select[Enrollment]:
    """A couple's open (pending or active) enrollments, newest first: a select to run or compose."""
    return (select(Enrollment)
            .where(Enrollment.couple_id == couple_id, Enrollment.status.in_(OPEN_STATUSES))
            .order_by(Enrollment.id.desc()))


def open_enrollment(session: Session, couple_id: int) -> Enrollment | None:
    """A couple's newest open (pending or active) enrollment, if any."""
    return session.scalars(open_enrollments(couple_id).limit(1)).first()


def pending_enrollment(session: Session, couple_id: int) -> Enrollment | None:
    return session.scalars(
        select(Enrollment)
        .where(Enrollment.couple_id == couple_id, Enrollment.status == EnrollmentStatus.PENDING)
        .order_by(Enrollment.id.desc())
    ).first()


def confirm_channel(
    session: Session, partner: Partner, channel: Channel, *, source: str, source_detail: str | None, now: datetime
) -> bool:
    """Record a partner's confirmation; True when it changed anything."""
    if partner.consent(channel) is not ConsentState.PENDING:
        return False
    set_consent(session, partner, channel, ConsentState.CONFIRMED, action=ConsentAction.CONFIRMED, source=source,
                source_detail=source_detail, now=now)
    enrollment = pending_enrollment(session, partner.couple_id)
    if enrollment is not None:
        maybe_start(session, enrollment, now)
    return True


def maybe_start(session: Session, enrollment: Enrollment, now: datetime) -> bool:
    partners = enrollment.couple.partners
    if enrollment.status != EnrollmentStatus.PENDING or not all(p.is_confirmed for p in partners):
        return False
    enrollment.status = EnrollmentStatus.ACTIVE
    enrollment.started_at = now
    for partner in partners:
        first = first_program_date(partner, now)
        session.add(
            PartnerSchedule(
                enrollment=enrollment, partner=partner, next_day=1, first_local_date=first,
                next_send_at=send_instant(partner, first),
            )
        )
    session.flush()
    return True
