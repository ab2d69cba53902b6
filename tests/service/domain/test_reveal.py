"""Reveal steps stay private until both have answered, then each partner hears once, outside quiet hours."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from flask import Flask
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.domain.inbound import InboundSms, receive_sms
from service.domain.reveal import plan_reply_reminders
from service.domain.scheduling import next_allowed_for
from service.domain.shared_log import build_log
from service.models import Couple, InboundMessage, Nudge, NudgeKind, NudgeStatus, Partner
from service.providers.twilio_sms import TWILIO
from service.runtime import Runtime
from service.web.context import runtime_of
from tests.factories import make_couple, make_sent_prompt

REVEAL_DAY = 5  # appreciation day 5 is a reveal step
AFTERNOON = datetime(2026, 11, 25, 19, 0, tzinfo=UTC)  # 14:00 in New York


def _reply(db: Session, runtime: Runtime, phone: str | None, body: str, sid: str, now: datetime) -> list[int]:
    assert phone
    result = receive_sms(db, InboundSms(sid, phone, "+15550000000", body, provider=TWILIO), settings=runtime.settings,
                         programs=runtime.programs, now=now)
    return result.nudge_ids


def test_answers_stay_private_until_both_answer(db: Session, runtime: Runtime) -> None:
    assert runtime.programs.get("appreciation").step(REVEAL_DAY).reveal
    couple = make_couple(db, start=AFTERNOON - timedelta(days=6))
    alex, sam = couple.partners
    for partner in (alex, sam):
        make_sent_prompt(db, partner, step_day=REVEAL_DAY, sent_at=AFTERNOON - timedelta(hours=5))
    assert _reply(db, runtime, alex.phone_e164, "Your patience on Sunday", "SM" + "1" * 32, AFTERNOON) == []
    sams_view = build_log(db, sam, runtime.programs)
    hidden = [a for day in sams_view for a in day.answers]
    assert [a.body for a in hidden] == [None]  # Sam sees that Alex answered, not what
    alex_view = [a.body for day in build_log(db, alex, runtime.programs) for a in day.answers]
    assert alex_view == ["Your patience on Sunday"]

    queued = _reply(db, runtime, sam.phone_e164, "How you listened", "SM" + "2" * 32, AFTERNOON + timedelta(hours=1))
    reveals = db.scalars(select(Nudge).where(Nudge.kind == NudgeKind.REVEAL)).all()
    assert sorted(n.partner_id for n in reveals) == sorted([alex.id, sam.id])
    assert sorted(queued) == sorted(n.id for n in reveals)
    assert all(n.status == NudgeStatus.QUEUED and n.channel == "sms" for n in reveals)
    to_alex = next(n for n in reveals if n.partner_id == alex.id)
    assert to_alex.body_text is not None and "Sam answered too" in to_alex.body_text
    assert alex.log_token in to_alex.body_text
    both = [a.body for day in build_log(db, sam, runtime.programs) for a in day.answers]
    assert both == ["Your patience on Sunday", "How you listened"]
    # A provider retry of the second answer creates nothing more.
    assert _reply(db, runtime, sam.phone_e164, "How you listened", "SM" + "2" * 32, AFTERNOON) == []
    assert len(db.scalars(select(Nudge).where(Nudge.kind == NudgeKind.REVEAL)).all()) == 2


def test_a_further_answer_after_the_reveal_reveals_nothing_more(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db, start=AFTERNOON - timedelta(days=6))
    alex, sam = couple.partners
    for partner in (alex, sam):
        make_sent_prompt(db, partner, step_day=REVEAL_DAY, sent_at=AFTERNOON - timedelta(hours=5))
    _reply(db, runtime, alex.phone_e164, "first", "SM" + "7" * 32, AFTERNOON)
    assert len(_reply(db, runtime, sam.phone_e164, "second", "SM" + "8" * 32, AFTERNOON)) == 2
    assert _reply(db, runtime, alex.phone_e164, "and one more thing", "SM" + "9" * 32, AFTERNOON) == []
    assert _reply(db, runtime, sam.phone_e164, "me too", "SM" + "a" * 32, AFTERNOON) == []
    assert len(db.scalars(select(Nudge).where(Nudge.kind == NudgeKind.REVEAL)).all()) == 2
    answers = [a.body for day in build_log(db, alex, runtime.programs) for a in day.answers]
    assert sorted(answers) == sorted(["first", "second", "and one more thing", "me too"])


def test_reveal_waits_for_the_end_of_quiet_hours(db: Session, runtime: Runtime) -> None:
    late = datetime(2026, 11, 26, 3, 30, tzinfo=UTC)  # 22:30 in New York, inside 21:30-08:00
    couple = make_couple(db, start=late - timedelta(days=6))
    alex, sam = couple.partners
    for partner in (alex, sam):
        make_sent_prompt(db, partner, step_day=REVEAL_DAY, sent_at=late - timedelta(hours=10))
    _reply(db, runtime, alex.phone_e164, "one", "SM" + "3" * 32, late)
    assert _reply(db, runtime, sam.phone_e164, "two", "SM" + "4" * 32, late) == []
    reveals = db.scalars(select(Nudge).where(Nudge.kind == NudgeKind.REVEAL)).all()
    assert len(reveals) == 2 and all(n.status == NudgeStatus.SCHEDULED for n in reveals)
    assert all(n.scheduled_for == datetime(2026, 11, 26, 13, 0, tzinfo=UTC) for n in reveals)  # 08:00 local
    assert next_allowed_for(alex, late) == datetime(2026, 11, 26, 13, 0, tzinfo=UTC)


def test_non_reveal_steps_send_no_reveal(db: Session, runtime: Runtime) -> None:
    assert not runtime.programs.get("appreciation").step(1).reveal
    couple = make_couple(db, start=AFTERNOON - timedelta(days=1))
    alex, sam = couple.partners
    for partner in (alex, sam):
        make_sent_prompt(db, partner, step_day=1, sent_at=AFTERNOON - timedelta(hours=2))
    _reply(db, runtime, alex.phone_e164, "a", "SM" + "5" * 32, AFTERNOON)
    assert _reply(db, runtime, sam.phone_e164, "b", "SM" + "6" * 32, AFTERNOON) == []
    assert db.scalars(select(Nudge).where(Nudge.kind == NudgeKind.REVEAL)).all() == []


def test_one_soft_reminder_halfway_through_the_window(db: Session, runtime: Runtime) -> None:
    sent = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)  # 09:00 New York
    couple = make_couple(db, start=sent - timedelta(days=6))
    alex, sam = couple.partners
    for partner in (alex, sam):
        make_sent_prompt(db, partner, step_day=REVEAL_DAY, sent_at=sent)
    _reply(db, runtime, alex.phone_e164, "answer", "SM" + "7" * 32, sent + timedelta(hours=1))
    early = plan_reply_reminders(db, settings=runtime.settings, programs=runtime.programs,
                                 now=sent + timedelta(hours=2))
    assert early == []  # before half of the 20-hour window
    halfway = sent + timedelta(hours=10, minutes=30)  # 19:30 local, outside quiet hours
    reminders = plan_reply_reminders(db, settings=runtime.settings, programs=runtime.programs, now=halfway)
    assert [n.partner_id for n in reminders] == [sam.id]
    text = reminders[0].body_text or ""
    assert "Alex shared an answer" in text and "late" not in text.lower() and "forgot" not in text.lower()
    again = plan_reply_reminders(db, settings=runtime.settings, programs=runtime.programs,
                                 now=halfway + timedelta(minutes=5))
    assert again == []  # at most one


def test_two_answers_at_the_same_moment_reveal_once(session_app: Flask) -> None:
    """Committed transactions on separate connections: the second answer waits for the first to commit,
    then sees it and queues both reveals (without the lock, neither would see the other's answer)."""
    database = runtime_of(session_app).database
    runtime = runtime_of(session_app)
    with database.transaction() as session:
        couple = make_couple(session, start=AFTERNOON - timedelta(days=6))
        alex, sam = couple.partners
        for partner in (alex, sam):
            make_sent_prompt(session, partner, step_day=REVEAL_DAY, sent_at=AFTERNOON - timedelta(hours=5))
        couple_id, phones = couple.id, (alex.phone_e164 or "", sam.phone_e164 or "")
    sids = ("SM" + "5" * 32, "SM" + "6" * 32)
    second: dict[str, list[int]] = {}

    def answer(session: Session, index: int) -> list[int]:
        message = InboundSms(sids[index], phones[index], "+15550000000", f"answer {index}", provider=TWILIO)
        return receive_sms(session, message, settings=runtime.settings, programs=runtime.programs,
                           now=AFTERNOON).nudge_ids

    def answer_second() -> None:
        with database.transaction() as session:
            second["queued"] = answer(session, 1)

    first = database.new_session()
    try:
        assert answer(first, 0) == []
        waiting = threading.Thread(target=answer_second)
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive(), "the second answer must wait for the first one's transaction"
        first.commit()
        first.close()
        waiting.join(20)
        assert not waiting.is_alive()
        with database.transaction() as session:
            reveals = session.scalars(select(Nudge).join(Partner).where(
                Partner.couple_id == couple_id, Nudge.kind == NudgeKind.REVEAL)).all()
            assert sorted(second["queued"]) == sorted(n.id for n in reveals)
            assert len(reveals) == 2
    finally:
        first.close()  # rolls back when an assertion stopped the test before its commit
        with database.transaction() as session:
            session.execute(delete(InboundMessage).where(InboundMessage.provider_message_id.in_(sids)))
            session.execute(delete(Couple).where(Couple.id == couple_id))
