"""Consent is about the number: a STOP from a number we don't know is recorded, and a later signup that
invites that number does not text it; START from that number lifts it."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.domain.inbound import InboundSms, receive_sms
from service.domain.signup import PartnerRequest, SignupRequest, sign_up
from service.models import Channel, Nudge, NudgeKind, NudgeStatus
from service.providers.twilio_sms import TWILIO
from service.runtime import Runtime
from tests.factories import next_phone

NOW = datetime(2026, 6, 10, 15, 0, tzinfo=UTC)


def _text(db: Session, runtime: Runtime, phone: str, body: str, sid: str) -> str | None:
    message = InboundSms(message_sid=sid, from_number=phone, to_number="+15550000000", body=body, provider=TWILIO)
    return receive_sms(db, message, settings=runtime.settings, programs=runtime.programs, now=NOW).reply


def _invite(db: Session, runtime: Runtime, phone: str) -> list[Nudge]:
    request = SignupRequest(
        signer=PartnerRequest("Alex", next_phone(), "alex@example.com", "America/New_York"),
        invited=PartnerRequest("Sam", phone, "sam@example.com", "America/Chicago"),
        preferred_time=time(19, 0), program_key="sampler", ip="203.0.113.7", user_agent="Mozilla/5.0 (Test)",
    )
    result = sign_up(db, request, settings=runtime.settings, programs=runtime.programs, now=NOW + timedelta(days=1))
    invited = result.couple.partners[1]
    return list(db.scalars(select(Nudge).where(Nudge.partner_id == invited.id, Nudge.kind == NudgeKind.CONFIRMATION,
                                               Nudge.channel == Channel.SMS)))


def test_a_stop_from_an_unknown_number_keeps_later_signups_from_texting_it(db: Session, runtime: Runtime) -> None:
    phone = next_phone()
    reply = _text(db, runtime, phone, "STOP", "SMo1" + "0" * 30)
    assert reply is not None and "unsubscribed" in reply and "START" in reply
    assert "don't have your number" not in reply
    sms = _invite(db, runtime, phone)
    assert len(sms) == 1 and sms[0].status == NudgeStatus.CANCELLED


def test_the_opt_out_is_stored_as_a_keyed_hash_never_the_number(db: Session, runtime: Runtime) -> None:
    phone = next_phone()
    _text(db, runtime, phone, "stop please", "SMo2" + "0" * 30)
    rows = db.execute(text("SELECT number_hash, opted_out_at, source_detail FROM number_opt_outs")).all()
    assert len(rows) == 1
    number_hash, opted_out_at, source = rows[0]
    assert phone not in number_hash and phone.lstrip("+") not in number_hash and len(number_hash) == 64
    assert opted_out_at == NOW and source == "SMo2" + "0" * 30


def test_start_from_that_number_lifts_the_opt_out(db: Session, runtime: Runtime) -> None:
    phone = next_phone()
    _text(db, runtime, phone, "STOP", "SMo3" + "0" * 30)
    _text(db, runtime, phone, "START", "SMo4" + "0" * 30)
    sms = _invite(db, runtime, phone)
    assert len(sms) == 1 and sms[0].status == NudgeStatus.QUEUED


def test_an_unknown_number_that_texts_anything_else_is_not_recorded(db: Session, runtime: Runtime) -> None:
    phone = next_phone()
    _text(db, runtime, phone, "hello who is this", "SMo5" + "0" * 30)
    sms = _invite(db, runtime, phone)
    assert len(sms) == 1 and sms[0].status == NudgeStatus.QUEUED
