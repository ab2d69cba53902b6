"""sign_up and confirmation reminders, on the real database (each test rolled back)."""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from rq import Queue
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from jobs.scheduler import run_pass
from jobs.send import send_batch
from service.domain.consent import DISCLOSURE_VERSION
from service.domain.enrollment import confirm_channel
from service.domain.inbound import InboundSms, receive_sms
from service.domain.signup import (
    SIGNUP_EXPIRES_AFTER,
    PartnerRequest,
    SignupBlocked,
    SignupError,
    SignupRequest,
    SignupResult,
    confirmation_sms,
    expire_unconfirmed_signups,
    plan_confirmation_reminders,
    sign_up,
)
from service.domain.tokens import read_token
from service.models import (
    Channel,
    ConsentRecord,
    ConsentState,
    Couple,
    EnrollmentStatus,
    LogEntry,
    Nudge,
    NudgeKind,
    NudgeStatus,
    OutboxMessage,
    Partner,
    PartnerSchedule,
)
from service.programs import fits_one_segment, sms_name
from service.providers.twilio_sms import TWILIO
from service.queues import QUEUE_SEND
from service.runtime import Runtime
from service.web.context import runtime_of
from tests.factories import make_couple, make_sent_prompt, next_phone

# 11:00 in New York (EDT), 10:00 in Chicago: daytime for both partners, as are the same times 1 and 3 days on.
NOW = datetime(2026, 6, 10, 15, 0, tzinfo=UTC)


_emails = itertools.count(1)


def request_for(
    *, signer_phone: str | None = None, invited_phone: str | None = None,
    signer_email: str | None = "", invited_email: str | None = "", program: str = "sampler",
) -> SignupRequest:
    """A signup; each call's default emails are new addresses (a person is in at most one open couple)."""
    n = next(_emails)
    signer_email = f"alex.{n}@example.com" if signer_email == "" else signer_email
    invited_email = f"sam.{n}@example.com" if invited_email == "" else invited_email
    return SignupRequest(
        signer=PartnerRequest("Alex", signer_phone, signer_email, "America/New_York"),
        invited=PartnerRequest("Sam", invited_phone, invited_email, "America/Chicago"),
        preferred_time=time(19, 0), program_key=program, ip="203.0.113.7", user_agent="Mozilla/5.0 (Test)",
    )


def do_sign_up(db: Session, runtime: Runtime, request: SignupRequest, now: datetime = NOW):  # type: ignore[no-untyped-def]
    return sign_up(db, request, settings=runtime.settings, programs=runtime.programs, now=now)


def confirmations(db: Session, partner: Partner, kind: NudgeKind = NudgeKind.CONFIRMATION) -> list[Nudge]:
    return list(db.scalars(select(Nudge).where(Nudge.partner_id == partner.id, Nudge.kind == kind)
                           .order_by(Nudge.step_day, Nudge.channel)))


def test_sign_up_creates_a_pending_couple_with_consent_records_and_confirmations(
    db: Session, runtime: Runtime
) -> None:
    signer_phone, invited_phone = next_phone(), next_phone()
    result = do_sign_up(db, runtime, request_for(signer_phone=signer_phone, invited_phone=invited_phone,
                                                 invited_email=None))
    signer, invited = result.couple.partners
    assert (signer.position, invited.position) == (1, 2)
    assert (signer.first_name, invited.first_name) == ("Alex", "Sam")
    assert (signer.phone_e164, invited.phone_e164) == (signer_phone, invited_phone)
    assert (signer.timezone, invited.timezone) == ("America/New_York", "America/Chicago")
    assert signer.preferred_time == invited.preferred_time == time(19, 0)
    assert re.fullmatch(r"[0-9a-f]{24}", signer.reply_token) and signer.reply_token != invited.reply_token
    assert signer.log_token and signer.log_token_hash and signer.log_token != invited.log_token
    assert result.couple.signup_ip == "203.0.113.7"
    assert result.enrollment.status == EnrollmentStatus.PENDING and result.enrollment.program_key == "sampler"
    assert signer.consent(Channel.SMS) is ConsentState.PENDING
    assert signer.consent(Channel.EMAIL) is ConsentState.PENDING
    assert invited.consent(Channel.SMS) is ConsentState.PENDING
    assert invited.consent(Channel.EMAIL) is ConsentState.NONE
    assert not signer.is_confirmed and not invited.is_confirmed

    records = db.scalars(select(ConsentRecord).order_by(ConsentRecord.id)).all()
    assert [(r.partner_id, r.channel) for r in records] == [
        (signer.id, "sms"), (signer.id, "email"), (invited.id, "sms")]
    for record in records:
        assert (record.action, record.source, record.disclosure_version) == ("requested", "web", DISCLOSURE_VERSION)
        assert record.source_detail == "ip=203.0.113.7; ua=Mozilla/5.0 (Test)"
        assert record.occurred_at == NOW

    nudges = db.scalars(select(Nudge).order_by(Nudge.id)).all()
    assert sorted(result.nudge_ids) == [n.id for n in nudges]
    assert [(n.partner_id, n.channel) for n in nudges] == [
        (signer.id, "sms"), (signer.id, "email"), (invited.id, "sms")]
    for nudge in nudges:
        assert (nudge.kind, nudge.step_day, nudge.status) == (NudgeKind.CONFIRMATION, 0, NudgeStatus.QUEUED)
        assert nudge.queued_at == NOW and nudge.body_text
    assert result.channels == {Channel.SMS, Channel.EMAIL}


def test_confirmation_sms_says_who_what_how_often_and_how_to_stop(db: Session, runtime: Runtime) -> None:
    result = do_sign_up(db, runtime, request_for(signer_phone=next_phone(), invited_phone=next_phone()))
    signer, invited = result.couple.partners
    to_invited = next(n for n in confirmations(db, invited) if n.channel == Channel.SMS).body_text
    to_signer = next(n for n in confirmations(db, signer) if n.channel == Channel.SMS).body_text
    assert to_invited is not None and to_signer is not None
    assert to_invited.startswith("Closer: Alex invited you to A month of closeness")
    assert "Alex, you signed up for A month of closeness with Sam" in to_signer
    for text in (to_invited, to_signer):
        assert "Reply YES" in text
        assert "7 msgs/wk" in text
        assert "Msg&data rates may apply" in text
        assert "Reply STOP to cancel, HELP for help" in text
        assert fits_one_segment(text)


@pytest.mark.parametrize("signer,other", [
    ("Maximiliana-Josefine", "Bartholomew-Alexander"),
    ("Zoë", "Łukasz"),
    ("🙂", "Sam"),
    ("Анастасия-Екатерина", "李小龍"),
])
@pytest.mark.parametrize("to_signer", [True, False])
@pytest.mark.parametrize("reminder", [True, False])
def test_every_confirmation_text_fits_one_gsm7_segment(
    runtime: Runtime, signer: str, other: str, to_signer: bool, reminder: bool
) -> None:
    for program in runtime.programs:
        text = confirmation_sms("Closer", program, sms_name(signer), sms_name(other), to_signer=to_signer,
                                reminder=reminder)
        assert fits_one_segment(text), text
        assert "Reply YES" in text or "reply YES" in text
        assert "Msg&data rates may apply. Reply STOP to cancel, HELP for help." in text
        assert f"{program.messages_per_week} msgs/wk" in text


def test_confirmation_email_links_to_a_signed_confirm_token(db: Session, runtime: Runtime) -> None:
    request = request_for()
    request = replace(request, invited=replace(request.invited, first_name="O'Brien"))
    result = do_sign_up(db, runtime, request)
    _signer, invited = result.couple.partners
    email = next(n for n in confirmations(db, invited) if n.channel == Channel.EMAIL)
    assert email.subject == "Alex invited you to A month of closeness"
    assert email.body_text is not None and email.body_html is not None
    match = re.search(r"https://closer\.example\.test/confirm/([A-Za-z0-9_.\-]+)", email.body_text)
    assert match, email.body_text
    assert read_token(runtime.settings.secret_key, "confirm", match.group(1)) == invited.id
    assert f'href="https://closer.example.test/confirm/{match.group(1)}"' in email.body_html
    assert "O&#39;Brien" in email.body_html and "O'Brien" not in email.body_html
    # The shared layout's CAN-SPAM footer: unsubscribe link and postal address.
    assert "/unsubscribe/" in email.body_text and runtime.settings.sender_postal_address in email.body_text
    assert "/unsubscribe/" in email.body_html


def test_broken_requests_are_refused_by_the_domain(db: Session, runtime: Runtime) -> None:
    phone = next_phone()
    with pytest.raises(SignupError):
        do_sign_up(db, runtime, request_for(program="no-such-program"))
    with pytest.raises(SignupError):
        do_sign_up(db, runtime, request_for(invited_email=None))
    with pytest.raises(SignupError):
        do_sign_up(db, runtime, request_for(signer_phone=phone, invited_phone=phone))
    with pytest.raises(SignupError):
        do_sign_up(db, runtime, request_for(signer_email="Same@example.com", invited_email="same@example.com"))


def test_the_daily_cap_counts_confirmations_per_number(db: Session, runtime: Runtime) -> None:
    cap = runtime.settings.confirmation_texts_per_number_per_day
    target = next_phone()
    for _ in range(cap):
        earlier = do_sign_up(db, runtime, request_for(invited_phone=target, signer_email=None, invited_email=None,
                                                      signer_phone=next_phone()))
        earlier.enrollment.status = EnrollmentStatus.CANCELLED  # else the one-couple rule holds the next one
    with pytest.raises(SignupBlocked) as blocked:
        do_sign_up(db, runtime, request_for(invited_phone=target, signer_phone=next_phone(), signer_email=None,
                                            invited_email=None))
    assert "cap" in blocked.value.reason and target not in blocked.value.reason
    # A day later the number may be asked again.
    do_sign_up(db, runtime, request_for(invited_phone=target, signer_phone=next_phone(), signer_email=None,
                                        invited_email=None), now=NOW + timedelta(days=1, minutes=1))


def test_confirmations_never_handed_to_a_provider_do_not_count(db: Session, runtime: Runtime) -> None:
    target = next_phone()
    for _ in range(runtime.settings.confirmation_texts_per_number_per_day + 2):
        result = do_sign_up(db, runtime, request_for(invited_phone=target, signer_phone=next_phone(),
                                                     signer_email=None, invited_email=None))
        assert confirmations(db, result.couple.partners[1])
        for nudge in confirmations(db, result.couple.partners[1]):
            nudge.status = NudgeStatus.CANCELLED
        result.enrollment.status = EnrollmentStatus.CANCELLED  # else the one-couple rule holds the next one
        db.flush()


def test_a_number_that_texted_stop_is_not_texted_by_someone_elses_signup(db: Session, runtime: Runtime) -> None:
    earlier = make_couple(db, confirmed=True, email=False)
    stopped = earlier.partners[0]
    assert stopped.phone_e164 is not None
    stopped.sms_consent = ConsentState.OPTED_OUT
    db.flush()
    result = do_sign_up(db, runtime, request_for(invited_phone=stopped.phone_e164, signer_phone=next_phone()))
    invited = result.couple.partners[1]
    sms = [n for n in confirmations(db, invited) if n.channel == Channel.SMS]
    assert len(sms) == 1 and sms[0].status == NudgeStatus.CANCELLED
    assert sms[0].id not in result.nudge_ids
    assert any(n.channel == Channel.EMAIL and n.id in result.nudge_ids for n in confirmations(db, invited))


def test_nothing_but_the_confirmation_is_sent_before_both_confirm(db: Session, runtime: Runtime) -> None:
    result = do_sign_up(db, runtime, request_for(signer_phone=next_phone(), invited_phone=next_phone()))
    db.commit()
    for days in (0, 1, 2, 5):
        run_pass(runtime, NOW + timedelta(days=days, hours=5))
    kinds = set(db.scalars(select(Nudge.kind).where(Nudge.enrollment_id == result.enrollment.id)))
    assert kinds == {NudgeKind.CONFIRMATION, NudgeKind.CONFIRMATION_REMINDER}
    signer, invited = result.couple.partners
    confirm_channel(db, signer, Channel.SMS, source="sms", source_detail="SMtest", now=NOW)
    assert result.enrollment.status == EnrollmentStatus.PENDING, "one partner's yes does not start the program"
    confirm_channel(db, invited, Channel.EMAIL, source="email", source_detail="link", now=NOW)
    assert result.enrollment.status == EnrollmentStatus.ACTIVE
    assert len(result.enrollment.schedules) == 2


def test_two_gentle_reminders_then_silence(db: Session, runtime: Runtime) -> None:
    result = do_sign_up(db, runtime, request_for(signer_phone=next_phone(), invited_phone=next_phone()))
    signer, invited = result.couple.partners
    confirm_channel(db, signer, Channel.SMS, source="sms", source_detail="SMtest", now=NOW)

    def remind(at: datetime) -> list[int]:
        return plan_confirmation_reminders(db, settings=runtime.settings, programs=runtime.programs,
                                           now=at).nudge_ids

    assert remind(NOW + timedelta(hours=23)) == []
    first = remind(NOW + timedelta(days=1))
    reminders = confirmations(db, invited, NudgeKind.CONFIRMATION_REMINDER)
    assert sorted(first) == sorted(n.id for n in reminders) and len(reminders) == 2  # SMS and email
    assert {(n.step_day, n.status) for n in reminders} == {(1, NudgeStatus.QUEUED)}
    sms = next(n for n in reminders if n.channel == Channel.SMS)
    assert sms.body_text is not None and sms.body_text.startswith("Closer: Reminder: Alex invited you")
    assert fits_one_segment(sms.body_text)
    assert confirmations(db, signer, NudgeKind.CONFIRMATION_REMINDER) == [], "a confirmed partner is not reminded"
    assert remind(NOW + timedelta(days=2)) == []
    second = remind(NOW + timedelta(days=3))
    assert len(second) == 2
    assert {n.step_day for n in confirmations(db, invited, NudgeKind.CONFIRMATION_REMINDER)} == {1, 2}
    assert remind(NOW + timedelta(days=5)) == [] and remind(NOW + timedelta(days=30)) == []
    assert invited.confirm_reminder_due_at is None


def test_a_signup_nobody_confirmed_expires_with_its_links(db: Session, runtime: Runtime) -> None:
    waiting = do_sign_up(db, runtime, request_for(signer_phone=next_phone(), invited_phone=next_phone()))
    started = do_sign_up(db, runtime, request_for(signer_phone=next_phone(), invited_phone=next_phone()))
    for partner in started.couple.partners:
        for channel in (Channel.SMS, Channel.EMAIL):
            confirm_channel(db, partner, channel, source="sms", source_detail="SMtest", now=NOW)
    signer, invited = waiting.couple.partners
    confirm_channel(db, signer, Channel.SMS, source="sms", source_detail="SMtest", now=NOW)

    expire_unconfirmed_signups(db, NOW + SIGNUP_EXPIRES_AFTER - timedelta(minutes=1))
    assert waiting.enrollment.status == EnrollmentStatus.PENDING, "the links still work: nothing expires yet"
    assert expire_unconfirmed_signups(db, NOW + SIGNUP_EXPIRES_AFTER + timedelta(minutes=1)) >= 1
    assert waiting.enrollment.status == EnrollmentStatus.CANCELLED and waiting.enrollment.ended_at is not None
    assert started.enrollment.status == EnrollmentStatus.ACTIVE
    unsent = [n for n in confirmations(db, invited, NudgeKind.CONFIRMATION) if n.status != NudgeStatus.CANCELLED]
    assert unsent == [] and invited.confirm_reminder_due_at is None
    assert invited.consent(Channel.SMS) is ConsentState.PENDING, "the consent history is kept as it was"
    later = NOW + timedelta(days=30)
    assert plan_confirmation_reminders(db, settings=runtime.settings, programs=runtime.programs,
                                       now=later).nudge_ids == []
    assert invited.phone_e164 is not None
    late_yes = InboundSms(message_sid="SM" + "e" * 32, from_number=invited.phone_e164, to_number="+15005550006",
                          body="YES", provider=TWILIO)
    answer = receive_sms(db, late_yes, settings=runtime.settings, programs=runtime.programs, now=later)
    assert answer.reply is not None and "expired" in answer.reply and runtime.settings.public_base_url in answer.reply
    assert invited.consent(Channel.SMS) is ConsentState.PENDING and waiting.enrollment.status == "cancelled"


def test_reminders_wait_for_the_end_of_quiet_hours(db: Session, runtime: Runtime) -> None:
    result = do_sign_up(db, runtime, request_for(invited_phone=next_phone()))
    invited = result.couple.partners[1]
    chicago = ZoneInfo("America/Chicago")
    night = datetime(2026, 6, 11, 23, 0, tzinfo=chicago).astimezone(UTC)
    report = plan_confirmation_reminders(db, settings=runtime.settings, programs=runtime.programs, now=night)
    assert report.nudge_ids == [] and report.deferred >= 1
    assert invited.confirm_reminder_due_at == datetime(2026, 6, 12, 8, 0, tzinfo=chicago).astimezone(UTC)
    morning = plan_confirmation_reminders(db, settings=runtime.settings, programs=runtime.programs,
                                          now=invited.confirm_reminder_due_at)
    to_invited = confirmations(db, invited, NudgeKind.CONFIRMATION_REMINDER)
    assert len(to_invited) == 2 and {n.id for n in to_invited} <= set(morning.nudge_ids)


def test_reminders_respect_the_daily_cap(db: Session, runtime: Runtime) -> None:
    target = next_phone()
    result = do_sign_up(db, runtime, request_for(invited_phone=target, signer_phone=next_phone(), invited_email=None))
    later = NOW + timedelta(days=1)
    # Other couples' confirmations to the same number within the last day, already sent.
    for _ in range(runtime.settings.confirmation_texts_per_number_per_day):
        other = make_couple(db, confirmed=False)
        other.partners[1].phone_e164 = target
        db.add(Nudge(enrollment=other.enrollments[0], partner=other.partners[1], kind=NudgeKind.CONFIRMATION,
                     step_day=0, channel=Channel.SMS, status=NudgeStatus.SENT,
                     scheduled_for=later - timedelta(hours=1)))
    db.flush()
    report = plan_confirmation_reminders(db, settings=runtime.settings, programs=runtime.programs, now=later)
    reminder = confirmations(db, result.couple.partners[1], NudgeKind.CONFIRMATION_REMINDER)
    assert len(reminder) == 1 and reminder[0].status == NudgeStatus.CANCELLED
    assert reminder[0].id not in report.nudge_ids


def test_the_scheduler_pass_queues_reminders_and_a_worker_sends_them(db: Session, runtime: Runtime) -> None:
    result = do_sign_up(db, runtime, request_for(invited_phone=next_phone(), invited_email=None))
    db.commit()
    queue = Queue(QUEUE_SEND, connection=runtime.redis)
    before = queue.count
    run_pass(runtime, NOW + timedelta(days=1, minutes=1))
    invited = result.couple.partners[1]
    reminder = confirmations(db, invited, NudgeKind.CONFIRMATION_REMINDER)
    assert [n.status for n in reminder] == [NudgeStatus.QUEUED]
    assert queue.count > before
    # The send job delivers a reminder while consent is still pending (console provider: the dev outbox).
    send_batch([reminder[0].id])
    db.expire_all()
    assert db.get(Nudge, reminder[0].id).status == NudgeStatus.SENT  # type: ignore[union-attr]
    sent = db.scalar(select(func.count(OutboxMessage.id)).where(OutboxMessage.recipient == invited.phone_e164))
    assert sent == 1


def test_a_queued_confirmation_is_cancelled_once_the_partner_stopped(db: Session, runtime: Runtime) -> None:
    result = do_sign_up(db, runtime, request_for(invited_phone=next_phone(), invited_email=None))
    invited = result.couple.partners[1]
    invited.sms_consent = ConsentState.OPTED_OUT
    db.commit()
    sms = confirmations(db, invited)[0]
    send_batch([sms.id])
    db.expire_all()
    assert db.get(Nudge, sms.id).status == NudgeStatus.CANCELLED  # type: ignore[union-attr]


def _text(db: Session, runtime: Runtime, phone: str | None, body: str, sid: str, now: datetime = NOW):  # type: ignore[no-untyped-def]
    assert phone is not None
    message = InboundSms(message_sid=sid, from_number=phone, to_number="+15550000000", body=body, provider=TWILIO)
    return receive_sms(db, message, settings=runtime.settings, programs=runtime.programs, now=now)


def test_a_strangers_signup_never_reaches_a_partner_already_in_a_couple(db: Session, runtime: Runtime) -> None:
    """A stranger invites a confirmed partner's number: no invitation, and the partner's "Yes!" to a prompt,
    their replies and their LOG link all stay with their own couple."""
    couple = make_couple(db, email=False, start=NOW - timedelta(days=3))
    partner = couple.partners[0]
    stranger_phone = next_phone()
    result = do_sign_up(db, runtime, request_for(signer_phone=stranger_phone, signer_email=None,
                                                 invited_phone=partner.phone_e164, invited_email=None))
    stranger, held = result.couple.partners
    assert confirmations(db, held) == [] and held.sms_consent is ConsentState.NONE
    assert [n.channel for n in confirmations(db, stranger)] == [Channel.SMS]
    assert result.channels == frozenset({Channel.SMS}), "the signer is told what any signup is told"
    _text(db, runtime, stranger_phone, "YES", "SMst" + "0" * 30)

    prompt = make_sent_prompt(db, partner, sent_at=NOW - timedelta(hours=1))
    answer = _text(db, runtime, partner.phone_e164, "Yes!", "SMya" + "0" * 30)
    more = _text(db, runtime, partner.phone_e164, "and the walk home", "SMyb" + "0" * 30)
    log = _text(db, runtime, partner.phone_e164, "LOG", "SMyc" + "0" * 30)
    assert (answer.kind, more.kind) == ("reply", "reply")
    entries = db.scalars(select(LogEntry).order_by(LogEntry.id)).all()
    assert [(e.couple_id, e.partner_id, e.nudge_id, e.body) for e in entries] == [
        (couple.id, partner.id, prompt.id, "Yes!"), (couple.id, partner.id, prompt.id, "and the walk home")]
    assert log.reply is not None and partner.log_token in log.reply and held.log_token not in log.reply
    assert held.sms_consent is ConsentState.NONE and result.enrollment.status == EnrollmentStatus.PENDING
    assert db.scalar(select(func.count(PartnerSchedule.id)).where(PartnerSchedule.partner_id == held.id)) == 0
    # The stranger's signup simply expires with its links.
    assert expire_unconfirmed_signups(db, NOW + SIGNUP_EXPIRES_AFTER + timedelta(minutes=1)) == 1
    assert result.enrollment.status == EnrollmentStatus.CANCELLED


def test_a_partner_signed_up_twice_is_asked_once(db: Session, runtime: Runtime) -> None:
    """The same rule without malice, on any address: an email already in a pending couple is not asked again."""
    first = do_sign_up(db, runtime, request_for(signer_phone=next_phone(), invited_email="sam.twice@example.com"))
    second = do_sign_up(db, runtime, request_for(signer_phone=next_phone(), signer_email="alex.two@example.com",
                                                 invited_email="sam.twice@example.com"))
    assert [n.channel for n in confirmations(db, first.couple.partners[1])] == [Channel.EMAIL]
    assert confirmations(db, second.couple.partners[1]) == []
    assert second.channels == first.channels


def test_a_signer_already_in_a_couple_is_not_asked_again_and_the_invited_still_is(
    db: Session, runtime: Runtime
) -> None:
    enrolled = make_couple(db, email=False).partners[0]
    result = do_sign_up(db, runtime, request_for(signer_phone=enrolled.phone_e164, signer_email=None,
                                                 invited_phone=next_phone(), invited_email=None))
    signer, invited = result.couple.partners
    assert confirmations(db, signer) == [] and signer.sms_consent is ConsentState.NONE
    assert [n.channel for n in confirmations(db, invited)] == [Channel.SMS]
    assert enrolled.sms_consent is ConsentState.CONFIRMED


def test_a_partner_who_left_by_stop_can_be_invited_again(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db, email=False, start=NOW - timedelta(days=3))
    partner = couple.partners[0]
    wanted = {"invited_phone": partner.phone_e164, "invited_email": "sam.again@example.com"}
    held = do_sign_up(db, runtime, request_for(signer_phone=next_phone(), **wanted)).couple.partners[1]
    assert confirmations(db, held) == []
    _text(db, runtime, partner.phone_e164, "STOP", "SMlv" + "0" * 30)
    assert partner.sms_consent is ConsentState.OPTED_OUT
    again = do_sign_up(db, runtime, request_for(signer_phone=next_phone(), **wanted))
    signer, invited = again.couple.partners
    email = [n for n in confirmations(db, invited) if n.channel == Channel.EMAIL]
    assert len(email) == 1 and email[0].id in again.nudge_ids
    confirm_channel(db, signer, Channel.EMAIL, source="email", source_detail="link", now=NOW)
    confirm_channel(db, invited, Channel.EMAIL, source="email", source_detail="link", now=NOW)
    assert again.enrollment.status == EnrollmentStatus.ACTIVE


def test_start_after_being_invited_again_does_not_rejoin_the_couple_left(db: Session, runtime: Runtime) -> None:
    """Left by STOP, invited again, then START and YES: the partner ends in the new couple only."""
    couple = make_couple(db, email=False, start=NOW - timedelta(days=3))
    partner = couple.partners[0]
    _text(db, runtime, partner.phone_e164, "STOP", "SMs1" + "0" * 30)
    again = do_sign_up(db, runtime, request_for(signer_phone=next_phone(), invited_phone=partner.phone_e164))
    invited = again.couple.partners[1]
    _text(db, runtime, partner.phone_e164, "START", "SMs2" + "0" * 30)
    _text(db, runtime, partner.phone_e164, "YES", "SMs3" + "0" * 30)
    assert invited.sms_consent is ConsentState.CONFIRMED
    assert partner.sms_consent is ConsentState.OPTED_OUT, "the couple left stays left"
    # With nothing waiting for the number, START comes back to the couple it left.
    other = make_couple(db, email=False, start=NOW - timedelta(days=3)).partners[0]
    _text(db, runtime, other.phone_e164, "STOP", "SMs4" + "0" * 30)
    _text(db, runtime, other.phone_e164, "START", "SMs5" + "0" * 30)
    assert other.sms_consent is ConsentState.CONFIRMED


def test_two_signups_at_once_invite_a_person_once(session_app: Flask) -> None:
    """Committed transactions on separate connections: the second signup naming the same number waits on the
    address lock for the first to commit, then sees the invitation and holds its own side."""
    runtime = runtime_of(session_app)
    database = runtime.database
    target = next_phone()
    second: dict[str, int] = {}

    def sign(session: Session) -> SignupResult:
        return do_sign_up(session, runtime, request_for(signer_phone=next_phone(), invited_phone=target,
                                                        invited_email=None))

    def sign_second() -> None:
        with database.transaction() as session:
            result = sign(session)
            second["couple"], second["asked"] = result.couple.id, len(confirmations(session, result.couple.partners[1]))

    first = database.new_session()
    couple_ids = []
    try:
        result = sign(first)
        couple_ids.append(result.couple.id)
        waiting = threading.Thread(target=sign_second)
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive(), "the second signup must wait for the first one's transaction"
        first.commit()
        waiting.join(20)
        assert not waiting.is_alive()
        couple_ids.append(second["couple"])
        assert second["asked"] == 0
        with database.transaction() as session:
            asked = session.scalar(select(func.count(Nudge.id)).join(Partner, Partner.id == Nudge.partner_id)
                                   .where(Partner.phone_e164 == target))
            assert asked == 1
    finally:
        first.close()
        with database.transaction() as session:
            session.execute(delete(Couple).where(Couple.id.in_(couple_ids)))
