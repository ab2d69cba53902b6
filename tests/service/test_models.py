"""Enum columns: stored as the lowercase values in plain VARCHAR columns, read back as enum members."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from service.models import (
    Channel,
    ConsentState,
    Enrollment,
    EnrollmentStatus,
    Nudge,
    NudgeKind,
    NudgeStatus,
    Partner,
)
from tests.factories import make_couple, make_sent_prompt


def test_enum_columns_store_their_values_and_read_back_members(db: Session) -> None:
    couple = make_couple(db)
    alex = couple.partners[0]
    nudge = make_sent_prompt(db, alex)
    stored = db.execute(text("SELECT kind, channel, status FROM nudges WHERE id = :id"), {"id": nudge.id}).one()
    assert tuple(stored) == ("prompt", "sms", "sent")
    db.expire_all()
    again = db.get(Nudge, nudge.id)
    assert again is not None
    assert (again.kind, again.channel) == (NudgeKind.PROMPT, Channel.SMS) and again.status is NudgeStatus.SENT
    assert db.scalar(select(Partner.sms_consent).where(Partner.id == alex.id)) is ConsentState.CONFIRMED
    assert db.scalar(select(Enrollment.status).where(Enrollment.couple_id == couple.id)) is EnrollmentStatus.ACTIVE


def test_a_string_that_is_not_a_value_is_refused_before_the_database(db: Session) -> None:
    couple = make_couple(db)
    with pytest.raises(StatementError, match="not among the defined enum values"):
        db.execute(update(Enrollment).where(Enrollment.couple_id == couple.id).values(status="ACTIVE"))
