"""Inbound SMS that are not consent keywords: replies, PAUSE/RESUME/SKIP/LOG/NEWLINK, unknown senders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.crypto import token_digest
from service.domain import replies
from service.domain.inbound import PAUSE_FOREVER, InboundSms, receive_sms
from service.domain.keywords import classify
from service.models import LogEntry, PartnerSchedule
from service.providers.twilio_sms import TWILIO
from service.runtime import Runtime
from tests.factories import make_couple, make_sent_prompt

NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


def _sms(phone: str | None, body: str, sid: str = "SM" + "a" * 32, media: int = 0) -> InboundSms:
    assert phone is not None
    return InboundSms(message_sid=sid, from_number=phone, to_number="+15550000000", body=body, num_media=media,
                      media_types=("image/jpeg",) * media, provider=TWILIO)


def _receive(db: Session, runtime: Runtime, message: InboundSms, now: datetime = NOW):  # type: ignore[no-untyped-def]
    return receive_sms(db, message, settings=runtime.settings, programs=runtime.programs, now=now)


def test_reply_is_stored_once_and_tied_to_the_latest_prompt(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db, start=NOW - timedelta(days=3))
    alex = couple.partners[0]
    make_sent_prompt(db, alex, step_day=1, sent_at=NOW - timedelta(days=1, hours=2))
    latest = make_sent_prompt(db, alex, step_day=2, sent_at=NOW - timedelta(hours=2))
    first = _receive(db, runtime, _sms(alex.phone_e164, "The way you made coffee this morning", sid="SM1" + "0" * 31))
    again = _receive(db, runtime, _sms(alex.phone_e164, "The way you made coffee this morning", sid="SM1" + "0" * 31))
    assert first.reply is None and not first.duplicate
    assert again.duplicate
    entries = db.scalars(select(LogEntry)).all()
    assert len(entries) == 1
    assert entries[0].nudge_id == latest.id
    assert entries[0].body == "The way you made coffee this morning"


def test_reply_outside_the_window_is_kept_but_not_tied(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db, start=NOW - timedelta(days=3))
    alex = couple.partners[0]
    make_sent_prompt(db, alex, step_day=1, sent_at=NOW - timedelta(hours=30))
    _receive(db, runtime, _sms(alex.phone_e164, "late thought"))
    entry = db.scalar(select(LogEntry))
    assert entry is not None and entry.nudge_id is None


def test_mms_records_count_and_type_without_fetching(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    alex = couple.partners[0]
    _receive(db, runtime, _sms(alex.phone_e164, "look at this", media=2))
    entry = db.scalar(select(LogEntry))
    assert entry is not None and entry.media_count == 2 and entry.media_types == "image/jpeg,image/jpeg"


def test_unknown_number_gets_a_polite_answer_and_nothing_is_stored(db: Session, runtime: Runtime) -> None:
    result = _receive(db, runtime, _sms("+14155559876", "hello who is this"))
    assert result.reply is not None and "don't have your number" in result.reply
    assert db.scalar(select(func.count(LogEntry.id))) == 0


def test_pause_resume_and_pause_for_days(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    alex = couple.partners[0]
    reply = _receive(db, runtime, _sms(alex.phone_e164, "pause", sid="SMp1" + "0" * 30)).reply
    assert reply is not None and "RESUME" in reply
    assert alex.paused_until == PAUSE_FOREVER
    _receive(db, runtime, _sms(alex.phone_e164, " RESUME ", sid="SMp2" + "0" * 30))
    assert alex.paused_until is None
    _receive(db, runtime, _sms(alex.phone_e164, "PAUSE 7", sid="SMp3" + "0" * 30))
    assert alex.paused_until == NOW + timedelta(days=7)
    assert couple.partners[1].paused_until is None  # the other partner is untouched


def test_skip_moves_todays_step_to_tomorrow(db: Session, runtime: Runtime) -> None:
    start = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # 07:00 in New York: day 1 is today at 09:00
    couple = make_couple(db, start=start)
    alex = couple.partners[0]
    schedule = db.scalar(select(PartnerSchedule).where(PartnerSchedule.partner_id == alex.id))
    assert schedule is not None and schedule.next_day == 1
    due_before = schedule.next_send_at
    reply = _receive(db, runtime, _sms(alex.phone_e164, "skip"), now=start).reply
    assert reply is not None and "skipped" in reply
    assert schedule.next_day == 2
    assert schedule.next_send_at is not None and due_before is not None
    assert schedule.next_send_at - due_before == timedelta(days=1)


def test_log_answers_with_the_partners_own_link(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    alex = couple.partners[0]
    reply = _receive(db, runtime, _sms(alex.phone_e164, "LOG")).reply
    assert reply is not None and f"/log/{alex.log_token}" in reply


def test_newlink_revokes_only_the_askers_link(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    alex, sam = couple.partners
    old, sams = alex.log_token, sam.log_token
    reply = _receive(db, runtime, _sms(alex.phone_e164, "newlink")).reply
    assert reply is not None and alex.log_token in reply and old not in reply
    assert alex.log_token_hash == token_digest(alex.log_token) != token_digest(old)
    assert sam.log_token == sams


@hsettings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=400))
def test_any_text_classifies_without_error(body: str) -> None:
    command = classify(body)
    assert command is None or command.keyword in {"YES", "STOP", "START", "HELP", "LOG", "NEWLINK", "PAUSE",
                                                  "RESUME", "SKIP"}


def test_natural_opt_outs_and_ordinary_answers() -> None:
    assert classify("Please stop texting me").keyword == "STOP"  # type: ignore[union-attr]
    assert classify("remove me").keyword == "STOP"  # type: ignore[union-attr]
    assert classify("Stop.").keyword == "STOP"  # type: ignore[union-attr]
    assert classify("yes!").keyword == "YES"  # type: ignore[union-attr]
    long_answer = "We said we'd stop texting at dinner and actually talk, and it was the best part of the week."
    assert classify(long_answer) is None
    assert classify("I loved the walk") is None


def test_yes_from_a_confirmed_partner_is_an_answer_to_their_prompt(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db, start=NOW - timedelta(days=3))
    alex = couple.partners[0]
    prompt = make_sent_prompt(db, alex, sent_at=NOW - timedelta(hours=1))
    result = _receive(db, runtime, _sms(alex.phone_e164, "Yes!"))
    assert (result.kind, result.reply) == ("reply", None)
    entry = db.scalar(select(LogEntry))
    assert entry is not None and (entry.couple_id, entry.nudge_id, entry.body) == (couple.id, prompt.id, "Yes!")


def test_yes_still_confirms_a_pending_invitation_to_that_number(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db, confirmed=False)
    alex = couple.partners[0]
    result = _receive(db, runtime, _sms(alex.phone_e164, "Yes!"))
    assert result.kind == "keyword" and result.reply is not None and "You're in" in result.reply
    assert db.scalar(select(func.count(LogEntry.id))) == 0


def test_a_reply_goes_to_the_couple_whose_prompt_it_answers_not_the_newest(db: Session, runtime: Runtime) -> None:
    """One number in two active couples (a partner signed up twice before the one-couple rule): the reply, and
    LOG, follow the prompt the partner was sent."""
    old = make_couple(db, start=NOW - timedelta(days=5)).partners[0]
    new = make_couple(db, start=NOW - timedelta(days=1)).partners[0]
    new.phone_e164 = old.phone_e164
    db.flush()
    prompt = make_sent_prompt(db, old, sent_at=NOW - timedelta(hours=1))
    _receive(db, runtime, _sms(old.phone_e164, "the walk by the river", sid="SMr1" + "0" * 30))
    entry = db.scalar(select(LogEntry))
    assert entry is not None and (entry.couple_id, entry.nudge_id) == (old.couple_id, prompt.id)
    log = _receive(db, runtime, _sms(old.phone_e164, "LOG", sid="SMr2" + "0" * 30))
    assert log.reply is not None and old.log_token in log.reply and new.log_token not in log.reply


def test_a_signup_held_for_a_pending_partner_does_not_take_their_texts(db: Session, runtime: Runtime) -> None:
    """A partner still pending in their couple, then named by a newer signup that was held: their texts are
    still theirs in the couple that invited them (HELP names that program, a reply asks them to confirm)."""
    from service.domain.signup import PartnerRequest, SignupRequest, sign_up

    alex = make_couple(db, confirmed=False, program="appreciation").partners[0]
    stranger = SignupRequest(
        signer=PartnerRequest("Kim", None, "kim.stranger@example.com", "America/New_York"),
        invited=PartnerRequest("Alex", alex.phone_e164, None, "America/New_York"),
        preferred_time=alex.preferred_time, program_key="sampler")
    held = sign_up(db, stranger, settings=runtime.settings, programs=runtime.programs, now=NOW).couple.partners[1]
    assert replies.addressed_partner_id(db, alex.phone_e164 or "", now=NOW) == alex.id != held.id
    result = _receive(db, runtime, _sms(alex.phone_e164, "hello?", sid="SMh1" + "0" * 30))
    assert result.kind == "unconfirmed"
    help_reply = _receive(db, runtime, _sms(alex.phone_e164, "HELP", sid="SMh2" + "0" * 30)).reply or ""
    assert runtime.programs.get("appreciation").title in help_reply
