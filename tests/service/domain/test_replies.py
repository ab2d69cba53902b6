"""Replies: a text through the one statement that claims it, finds its sender and stores it
(`replies.claim_sms`), an email through the statement that shares its prompt lookup and stored entry
(`replies.store_reply`).

Each case builds rows, receives its texts and checks what they were answered and what was stored: the
dedupe record, the log entry, the prompt it is tied to, the reply counter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.domain import inbound, replies
from service.domain.inbound import UNCONFIRMED_TEXT, InboundSms
from service.domain.keywords import classify
from service.domain.replies import MAX_REPLY_CHARS, PENDING_REPLIES_KEY
from service.models import (
    Channel,
    ConsentState,
    Couple,
    Enrollment,
    EnrollmentStatus,
    InboundMessage,
    LogEntry,
    Nudge,
    NudgeKind,
    Partner,
)
from service.programs import ProgramLibrary
from service.providers.twilio_sms import TWILIO
from service.runtime import Runtime
from service.settings import Settings
from tests.factories import make_couple, make_sent_prompt, next_phone

NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
SID = "SM" + "c" * 32
OTHER_SID = "SM" + "d" * 32
BODY = "The way you laughed at dinner"
REVEAL_DAY = 5  # appreciation day 5 is a reveal step


def _sms(phone: str | None, body: str = BODY, sid: str = SID, media: int = 0) -> InboundSms:
    assert phone is not None
    return InboundSms(message_sid=sid, from_number=phone, to_number="+15550000000", body=body, num_media=media,
                      media_types=("image/png",) * media, provider=TWILIO)


def _receive(db: Session, runtime: Runtime, message: InboundSms,
             programs: ProgramLibrary | None = None) -> inbound.InboundResult:
    return inbound.receive_sms(db, message, settings=runtime.settings, programs=programs or runtime.programs,
                               now=NOW)


def _stored(db: Session) -> dict[str, Any]:
    db.flush()
    db.expire_all()
    claims = db.scalars(select(InboundMessage).order_by(InboundMessage.id)).all()
    entries = db.scalars(select(LogEntry).order_by(LogEntry.id)).all()
    return {
        "claims": [(m.provider, m.provider_message_id, m.channel, m.partner_id, m.kind, m.keyword, m.received_at)
                   for m in claims],
        "entries": [(e.couple_id, e.partner_id, e.nudge_id, e.channel, e.provider_message_id, e.body, e.media_count,
                     e.media_types, e.received_at) for e in entries],
        "counted": dict(db.info.get(PENDING_REPLIES_KEY) or {}),
    }


@dataclasses.dataclass
class Expected:
    """What a case's texts should get back, in order, and what should be stored."""

    answers: list[tuple[str | None, bool, str]]  # per text: (the answer in TwiML, duplicate, kind)
    claims: list[tuple[str, Partner | None, str]]  # per dedupe record: (MessageSid, the partner it names, kind)
    # per log entry: (MessageSid, partner, the prompt it answers, body, media count, media types)
    entries: list[tuple[str, Partner, Nudge | None, str, int, str | None]] = dataclasses.field(default_factory=list)


Setup = Callable[[Session, Settings], tuple[list[InboundSms], Expected]]


def _reply_to_latest_prompt(db: Session, settings: Settings) -> tuple[list[InboundSms], Expected]:
    alex = make_couple(db, start=NOW - timedelta(days=3)).partners[0]
    make_sent_prompt(db, alex, step_day=1, sent_at=NOW - timedelta(days=1, hours=2))
    latest = make_sent_prompt(db, alex, step_day=2, sent_at=NOW - timedelta(hours=2))
    return [_sms(alex.phone_e164), _sms(alex.phone_e164)], Expected(  # the second is Twilio's retry
        answers=[(None, False, "reply"), (None, True, "reply")],
        claims=[(SID, alex, "reply")],
        entries=[(SID, alex, latest, BODY, 0, None)],
    )


def _reply_after_the_window(db: Session, settings: Settings) -> tuple[list[InboundSms], Expected]:
    alex = make_couple(db, start=NOW - timedelta(days=3)).partners[0]
    make_sent_prompt(db, alex, step_day=1, sent_at=NOW - timedelta(hours=30))
    return [_sms(alex.phone_e164, "  late, but here  ")], Expected(
        answers=[(None, False, "reply")],
        claims=[(SID, alex, "reply")],
        entries=[(SID, alex, None, "late, but here", 0, None)],
    )


def _reply_with_no_prompt(db: Session, settings: Settings) -> tuple[list[InboundSms], Expected]:
    sam = make_couple(db).partners[1]
    return [_sms(sam.phone_e164)], Expected(
        answers=[(None, False, "reply")], claims=[(SID, sam, "reply")], entries=[(SID, sam, None, BODY, 0, None)],
    )


def _photo_without_words(db: Session, settings: Settings) -> tuple[list[InboundSms], Expected]:
    alex = make_couple(db, start=NOW - timedelta(days=1)).partners[0]
    prompt = make_sent_prompt(db, alex, step_day=1, sent_at=NOW - timedelta(hours=1))
    return [_sms(alex.phone_e164, "", media=2)], Expected(
        answers=[(None, False, "reply")],
        claims=[(SID, alex, "reply")],
        entries=[(SID, alex, prompt, "", 2, "image/png,image/png")],
    )


def _long_reply(db: Session, settings: Settings) -> tuple[list[InboundSms], Expected]:
    alex = make_couple(db).partners[0]
    words = "word " * 1200
    return [_sms(alex.phone_e164, words)], Expected(
        answers=[(None, False, "reply")],
        claims=[(SID, alex, "reply")],
        entries=[(SID, alex, None, words.strip()[:MAX_REPLY_CHARS], 0, None)],
    )


def _unknown_number(db: Session, settings: Settings) -> tuple[list[InboundSms], Expected]:
    sign_up = inbound._unknown_sender_text(settings)
    return [_sms(next_phone()), _sms(next_phone(), sid=OTHER_SID)], Expected(
        answers=[(sign_up, False, "unknown_sender"), (sign_up, False, "unknown_sender")],
        claims=[(SID, None, "unknown_sender"), (OTHER_SID, None, "unknown_sender")],
    )


def _unknown_number_retried(db: Session, settings: Settings) -> tuple[list[InboundSms], Expected]:
    phone = next_phone()
    return [_sms(phone), _sms(phone)], Expected(
        answers=[(inbound._unknown_sender_text(settings), False, "unknown_sender"), (None, True, "unknown_sender")],
        claims=[(SID, None, "unknown_sender")],
    )


def _partner_not_confirmed_yet(db: Session, settings: Settings) -> tuple[list[InboundSms], Expected]:
    alex = make_couple(db, confirmed=False).partners[0]
    return [_sms(alex.phone_e164)], Expected(
        answers=[(UNCONFIRMED_TEXT, False, "unconfirmed")], claims=[(SID, alex, "reply")],
    )


def _partner_opted_out(db: Session, settings: Settings) -> tuple[list[InboundSms], Expected]:
    alex = make_couple(db).partners[0]
    alex.sms_consent = ConsentState.OPTED_OUT
    return [_sms(alex.phone_e164)], Expected(answers=[(None, False, "ignored")], claims=[(SID, alex, "reply")])


def _same_number_in_an_old_and_a_new_couple(db: Session, settings: Settings) -> tuple[list[InboundSms], Expected]:
    old = make_couple(db, start=NOW - timedelta(days=40)).partners[0]
    prompt = make_sent_prompt(db, old, step_day=3, sent_at=NOW - timedelta(hours=3))
    new = make_couple(db, confirmed=False).partners[0]
    new.phone_e164 = old.phone_e164  # the newer couple is still waiting for confirmations
    return [_sms(old.phone_e164)], Expected(
        answers=[(None, False, "reply")], claims=[(SID, old, "reply")], entries=[(SID, old, prompt, BODY, 0, None)],
    )


def _same_number_after_the_old_program_ended(db: Session, settings: Settings) -> tuple[list[InboundSms], Expected]:
    old = make_couple(db, start=NOW - timedelta(days=40)).partners[0]
    for enrollment in db.scalars(select(Enrollment).where(Enrollment.couple_id == old.couple_id)):
        enrollment.status = EnrollmentStatus.COMPLETED
    new = make_couple(db, start=NOW - timedelta(days=1)).partners[1]
    new.phone_e164 = old.phone_e164
    prompt = make_sent_prompt(db, new, step_day=1, sent_at=NOW - timedelta(hours=1))
    return [_sms(old.phone_e164)], Expected(
        answers=[(None, False, "reply")], claims=[(SID, new, "reply")], entries=[(SID, new, prompt, BODY, 0, None)],
    )


def _newest_of_two_inactive_couples(db: Session, settings: Settings) -> tuple[list[InboundSms], Expected]:
    first = make_couple(db).partners[0]
    second = make_couple(db).partners[0]
    second.phone_e164 = first.phone_e164
    for couple_id in (first.couple_id, second.couple_id):
        for enrollment in db.scalars(select(Enrollment).where(Enrollment.couple_id == couple_id)):
            enrollment.status = EnrollmentStatus.CANCELLED
    return [_sms(first.phone_e164)], Expected(
        answers=[(None, False, "reply")], claims=[(SID, second, "reply")],
        entries=[(SID, second, None, BODY, 0, None)],
    )


CASES: dict[str, Setup] = {
    "reply to the latest prompt, then its retry": _reply_to_latest_prompt,
    "reply after the reply window": _reply_after_the_window,
    "reply with no prompt out": _reply_with_no_prompt,
    "a photo without words": _photo_without_words,
    "a reply longer than the log keeps": _long_reply,
    "unknown numbers": _unknown_number,
    "an unknown number's retry": _unknown_number_retried,
    "a partner who has not confirmed": _partner_not_confirmed_yet,
    "a partner who opted out": _partner_opted_out,
    "one number in an active and a pending couple": _same_number_in_an_old_and_a_new_couple,
    "one number after its old program ended": _same_number_after_the_old_program_ended,
    "one number in two inactive couples": _newest_of_two_inactive_couples,
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_text_is_answered_claimed_once_and_stored_for_the_partner_it_is_from(
    db: Session, runtime: Runtime, case: str
) -> None:
    messages, expected = CASES[case](db, runtime.settings)
    db.flush()
    for message in messages:
        assert classify(message.body) is None or (message.num_media and not message.body.strip())
    results = [_receive(db, runtime, message) for message in messages]
    assert [(r.reply, r.duplicate, r.kind) for r in results] == expected.answers
    assert all(r.nudge_ids == [] for r in results)
    claims = [("twilio", sid, "sms", partner.id if partner else None, kind, None, NOW)
              for sid, partner, kind in expected.claims]
    entries = [(partner.couple_id, partner.id, prompt.id if prompt else None, "sms", sid, body, count, types, NOW)
               for sid, partner, prompt, body, count, types in expected.entries]
    stored = _stored(db)
    assert stored["claims"] == claims, "every text leaves its dedupe record, once"
    assert stored["entries"] == entries
    assert stored["counted"] == ({"sms": len(entries)} if entries else {})


def test_the_reply_window_is_each_programs_own(db: Session, runtime: Runtime) -> None:
    """A prompt 30 hours old is still open under a 48-hour window and closed under the usual 20 hours."""
    alex = make_couple(db, start=NOW - timedelta(days=3)).partners[0]
    prompt = make_sent_prompt(db, alex, step_day=1, sent_at=NOW - timedelta(hours=30))
    longer = ProgramLibrary(
        dataclasses.replace(p, reply_window_hours=48) if p.key == "appreciation" else p for p in runtime.programs
    )
    _receive(db, runtime, _sms(alex.phone_e164, sid=SID), runtime.programs)
    _receive(db, runtime, _sms(alex.phone_e164, sid=OTHER_SID), longer)
    assert [entry[2] for entry in _stored(db)["entries"]] == [None, prompt.id]


def test_the_reply_is_encrypted_at_rest_and_counted_once_committed(db: Session, runtime: Runtime) -> None:
    alex = make_couple(db).partners[0]
    _receive(db, runtime, _sms(alex.phone_e164, "only for Sam to read"))
    raw = db.execute(text("SELECT body FROM log_entries WHERE provider_message_id = :sid"), {"sid": SID}).scalar()
    assert raw is not None and b"only for Sam" not in bytes(raw)
    assert db.scalar(select(LogEntry.body).where(LogEntry.provider_message_id == SID)) == "only for Sam to read"
    assert dict(db.info[PENDING_REPLIES_KEY]) == {"sms": 1}


def test_rows_added_but_not_flushed_are_seen(db: Session, runtime: Runtime) -> None:
    couple = Couple()
    db.add(couple)
    alex = Partner(couple=couple, position=1, first_name="Alex", phone_e164=next_phone(), timezone="UTC",
                   preferred_time=NOW.time(), sms_consent=ConsentState.CONFIRMED, reply_token="r" * 24,
                   log_token_hash="h" * 64, log_token="t")
    db.add(alex)
    result = _receive(db, runtime, _sms(alex.phone_e164))
    assert result.kind == "reply" and not result.duplicate
    assert db.scalar(select(LogEntry.partner_id)) == alex.id


# --- keywords share the claim and the partner lookup, and store no entry ---------------------------------


def test_a_keyword_is_claimed_with_its_keyword_and_stores_nothing_for_the_log(db: Session, runtime: Runtime) -> None:
    alex = make_couple(db).partners[0]
    make_sent_prompt(db, alex, step_day=1, sent_at=NOW - timedelta(hours=1))
    first = _receive(db, runtime, _sms(alex.phone_e164, "pause"))
    retry = _receive(db, runtime, _sms(alex.phone_e164, "pause"))
    assert first.kind == "keyword" and not first.duplicate and first.reply and first.reply.startswith("Paused")
    assert (retry.reply, retry.duplicate, retry.kind) == (None, True, "keyword")
    stored = _stored(db)
    assert stored["claims"] == [("twilio", SID, "sms", alex.id, "keyword", "PAUSE", NOW)]
    assert stored["entries"] == [] and stored["counted"] == {}


def test_a_keyword_from_an_unknown_number_gets_the_sign_up_answer(db: Session, runtime: Runtime) -> None:
    result = _receive(db, runtime, _sms(next_phone(), "HELP"))
    sign_up = inbound._unknown_sender_text(runtime.settings)
    assert (result.reply, result.duplicate, result.kind) == (sign_up, False, "keyword")
    assert _stored(db)["claims"] == [("twilio", SID, "sms", None, "keyword", "HELP", NOW)]


def test_a_keyword_acts_for_the_partner_a_reply_would_be_stored_for(db: Session, runtime: Runtime) -> None:
    """One number in an active couple and a newer pending one: LOG answers with the active partner's link."""
    old = make_couple(db, start=NOW - timedelta(days=4)).partners[0]
    new = make_couple(db, confirmed=False).partners[0]
    new.phone_e164 = old.phone_e164
    db.flush()
    assert replies.addressed_partner_id(db, old.phone_e164 or "", now=NOW) == old.id
    result = _receive(db, runtime, _sms(old.phone_e164, "LOG"))
    assert result.reply is not None and old.log_token in result.reply and new.log_token not in result.reply
    assert _stored(db)["claims"] == [("twilio", SID, "sms", old.id, "keyword", "LOG", NOW)]


def test_an_unknown_number_addresses_no_one(db: Session) -> None:
    assert replies.addressed_partner_id(db, next_phone(), now=NOW) is None


# --- email replies: the same prompt lookup and stored entry ----------------------------------------


def _email(db: Session, runtime: Runtime, partner: Partner, body: str, message_id: str) -> replies.ReplyOutcome:
    return replies.store_reply(db, partner, channel=Channel.EMAIL, provider_message_id=message_id, body=body,
                               programs=runtime.programs, settings=runtime.settings, now=NOW)


def test_an_email_reply_is_tied_to_the_latest_prompt_on_any_channel(db: Session, runtime: Runtime) -> None:
    alex, sam = make_couple(db, start=NOW - timedelta(days=3)).partners
    prompt = make_sent_prompt(db, alex, step_day=2, sent_at=NOW - timedelta(hours=2))  # sent by SMS
    make_sent_prompt(db, sam, step_day=2, channel="email", sent_at=NOW - timedelta(hours=30))  # window closed
    tied = _email(db, runtime, alex, "  cooking together  ", "<a@mail.example.com>")
    late = _email(db, runtime, sam, "late", "<b@mail.example.com>")
    assert tied.nudge_ids == [] and late.nudge_ids == []
    stored = _stored(db)
    assert stored["entries"] == [
        (alex.couple_id, alex.id, prompt.id, "email", "<a@mail.example.com>", "cooking together", 0, None, NOW),
        (sam.couple_id, sam.id, None, "email", "<b@mail.example.com>", "late", 0, None, NOW),
    ]
    assert list(db.scalars(select(LogEntry.id).order_by(LogEntry.id))) == [tied.entry_id, late.entry_id]
    assert stored["counted"] == {"email": 2}


def test_an_email_answer_completes_a_reveal_a_text_began(db: Session, runtime: Runtime) -> None:
    assert runtime.programs.get("appreciation").step(REVEAL_DAY).reveal
    alex, sam = make_couple(db, start=NOW - timedelta(days=6)).partners
    for partner in (alex, sam):
        make_sent_prompt(db, partner, step_day=REVEAL_DAY, sent_at=NOW - timedelta(hours=5))
    assert _receive(db, runtime, _sms(alex.phone_e164, "your patience")).nudge_ids == []
    outcome = _email(db, runtime, sam, "how you listened", "<c@mail.example.com>")
    reveals = db.scalars(select(Nudge).where(Nudge.kind == NudgeKind.REVEAL)).all()
    assert sorted(n.partner_id for n in reveals) == sorted([alex.id, sam.id])
    assert sorted(outcome.nudge_ids) == sorted(n.id for n in reveals)
