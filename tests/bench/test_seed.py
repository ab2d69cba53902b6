"""bench/seed.py: bulk-generated couples are the rows the product itself would read and plan."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bench.seed import PartnerSpec, email_for, phone_for, seed_couples
from service.crypto import active_cipher
from service.domain.planner import PassReport, plan_due_steps
from service.models import ConsentState, Couple, Nudge, NudgeStatus, Partner, PartnerSchedule
from service.runtime import Runtime
from tests.factories import make_couple


def _spec(now: datetime):  # type: ignore[no-untyped-def]
    def spec_for(index: int, position: int) -> PartnerSpec:
        if position == 1:
            return PartnerSpec("America/Chicago", time(9, 0), sms=ConsentState.CONFIRMED,
                               email=ConsentState.CONFIRMED, next_send_at=now - timedelta(minutes=1))
        return PartnerSpec("America/Chicago", time(9, 0), sms=ConsentState.OPTED_OUT, email=ConsentState.NONE,
                           next_send_at=now + timedelta(hours=5))
    return spec_for


def test_seeded_couples_are_complete_and_readable(db: Session) -> None:
    now = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
    seeded = seed_couples(db.connection(), 30, _spec(now), cipher=active_cipher(), now=now, progress=False)

    assert db.scalar(select(func.count()).select_from(Couple).where(Couple.id.in_(seeded.couple_ids))) == 30
    partners = db.scalars(select(Partner).where(Partner.couple_id.in_(seeded.couple_ids)).order_by(Partner.id)).all()
    assert [p.id for p in partners] == list(seeded.partner_ids)
    first, second = partners[0], partners[1]
    assert (first.first_name, first.phone_e164, first.email) == ("Sam", phone_for(first.id), email_for(first.id))
    assert (first.sms_consent, first.email_consent) == (ConsentState.CONFIRMED, ConsentState.CONFIRMED)
    assert (second.sms_consent, second.email, second.position) == (ConsentState.OPTED_OUT, None, 2)
    schedule = db.scalars(select(PartnerSchedule).where(PartnerSchedule.partner_id == first.id)).one()
    assert schedule.enrollment.status == "active" and schedule.enrollment.couple_id == first.couple_id
    assert (schedule.next_day, schedule.first_local_date) == (1, date(2026, 3, 10))


def test_the_planner_plans_exactly_the_seeded_partners_who_are_due(db: Session, runtime: Runtime) -> None:
    now = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)  # 10:00 in Chicago: outside quiet hours
    seeded = seed_couples(db.connection(), 40, _spec(now), cipher=active_cipher(), now=now, progress=False)

    report = PassReport()
    plan_due_steps(db, runtime.programs, now, report, limit=1000)

    nudges = db.scalars(select(Nudge).where(Nudge.partner_id.in_(seeded.partner_ids))).all()
    assert sorted((n.partner_id, n.channel) for n in nudges) == sorted(
        (pid, channel) for pid in seeded.partner_ids[::2] for channel in ("sms", "email"))
    assert {n.status for n in nudges} == {NudgeStatus.QUEUED}


def test_rows_made_after_a_seed_get_fresh_ids(db: Session) -> None:
    now = datetime.now(UTC)
    seeded = seed_couples(db.connection(), 5, _spec(now), cipher=active_cipher(), now=now, progress=False)

    couple = make_couple(db)

    assert couple.id > seeded.couple_ids[-1]
    assert min(p.id for p in couple.partners) > seeded.partner_ids[-1]
