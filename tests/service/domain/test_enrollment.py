"""A couple's open enrollment: the newest one still pending or active, never one that has ended."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.domain.enrollment import open_enrollment
from service.models import Enrollment, EnrollmentStatus
from tests.factories import make_couple


def test_the_open_enrollment_is_the_newest_pending_or_active_one(db: Session) -> None:
    couple = make_couple(db)
    running = couple.enrollments[0]
    assert running.status == EnrollmentStatus.ACTIVE
    assert open_enrollment(db, couple.id) is running
    again = Enrollment(couple=couple, program_key="appreciation", status=EnrollmentStatus.PENDING)
    db.add(again)
    assert open_enrollment(db, couple.id) is again  # the query flushes what is not yet in the database


def test_an_ended_enrollment_is_not_open(db: Session) -> None:
    couple = make_couple(db, confirmed=False)
    couple.enrollments[0].status = EnrollmentStatus.CANCELLED
    db.add(Enrollment(couple=couple, program_key="appreciation", status=EnrollmentStatus.COMPLETED))
    assert open_enrollment(db, couple.id) is None
