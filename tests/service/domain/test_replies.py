"""The one-statement path for inbound texts (PostgreSQL) against the ORM path it stands in for.

Each case builds the same rows, runs both paths in savepoints, and compares what they answered and
what they stored: the dedupe record, the log entry, the prompt it is tied to, the reply counter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.domain import inbound
from service.domain.inbound import InboundSms
from service.domain.keywords import classify
from service.domain.replies import PENDING_REPLIES_KEY
from service.models import (
    ConsentState,
    Couple,
    Enrollment,
    EnrollmentStatus,
    InboundMessage,
    LogEntry,
    Partner,
)
from service.programs import ProgramLibrary
from service.runtime import Runtime
from tests.factories import make_couple, make_sent_prompt, next_phone

NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
SID = "SM" + "c" * 32


@pytest.fixture(autouse=True)
def _postgresql_only(db: Session) -> None:
    if db.get_bind().dialect.name != "postgresql":
        pytest.skip("the one-statement path is PostgreSQL's; SQLite takes the ORM path")


def _sms(phone: str | None, body: str = "The way you laughed at dinner", sid: str = SID, media: int = 0) -> InboundSms:
    assert phone is not None
    return InboundSms(message_sid=sid, from_number=phone, to_number="+15550000000", body=body, num_media=media,
                      media_types=("image/png",) * media)


def _fast(db: Session, runtime: Runtime, message: InboundSms, programs: ProgramLibrary) -> inbound.InboundResult:
    assert classify(message.body) is None or (message.num_media and not message.body.strip())
    return inbound.receive_sms(db, message, settings=runtime.settings, programs=programs, now=NOW)


def _orm(db: Session, runtime: Runtime, message: InboundSms, programs: ProgramLibrary) -> inbound.InboundResult:
    return inbound._receive_with_orm(db, message, None, settings=runtime.settings, programs=programs, now=NOW)


def _stored(db: Session) -> dict[str, Any]:
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


def _both_paths(db: Session, runtime: Runtime, messages: list[InboundSms],
                programs: ProgramLibrary | None = None) -> tuple[Any, Any]:
    """Run `messages` through each path in a savepoint that is rolled back; what each answered and stored."""
    programs = programs or runtime.programs
    outcomes = []
    for path in (_fast, _orm):
        db.info.pop(PENDING_REPLIES_KEY, None)
        savepoint = db.begin_nested()
        results = [path(db, runtime, message, programs) for message in messages]
        db.flush()
        outcomes.append(([dataclasses.astuple(r) for r in results], _stored(db)))
        savepoint.rollback()
    db.info.pop(PENDING_REPLIES_KEY, None)
    return outcomes[0], outcomes[1]


Setup = Callable[[Session], list[InboundSms]]


def _reply_to_latest_prompt(db: Session) -> list[InboundSms]:
    alex = make_couple(db, start=NOW - timedelta(days=3)).partners[0]
    make_sent_prompt(db, alex, step_day=1, sent_at=NOW - timedelta(days=1, hours=2))
    make_sent_prompt(db, alex, step_day=2, sent_at=NOW - timedelta(hours=2))
    return [_sms(alex.phone_e164), _sms(alex.phone_e164)]  # the second is Twilio's retry


def _reply_after_the_window(db: Session) -> list[InboundSms]:
    alex = make_couple(db, start=NOW - timedelta(days=3)).partners[0]
    make_sent_prompt(db, alex, step_day=1, sent_at=NOW - timedelta(hours=30))
    return [_sms(alex.phone_e164, "  late, but here  ")]


def _reply_with_no_prompt(db: Session) -> list[InboundSms]:
    return [_sms(make_couple(db).partners[1].phone_e164)]


def _photo_without_words(db: Session) -> list[InboundSms]:
    alex = make_couple(db, start=NOW - timedelta(days=1)).partners[0]
    make_sent_prompt(db, alex, step_day=1, sent_at=NOW - timedelta(hours=1))
    return [_sms(alex.phone_e164, "", media=2)]


def _long_reply(db: Session) -> list[InboundSms]:
    alex = make_couple(db).partners[0]
    return [_sms(alex.phone_e164, "word " * 1200)]


def _unknown_number(db: Session) -> list[InboundSms]:
    return [_sms(next_phone()), _sms(next_phone(), sid="SM" + "d" * 32)]


def _unknown_number_retried(db: Session) -> list[InboundSms]:
    phone = next_phone()
    return [_sms(phone), _sms(phone)]


def _partner_not_confirmed_yet(db: Session) -> list[InboundSms]:
    return [_sms(make_couple(db, confirmed=False).partners[0].phone_e164)]


def _partner_opted_out(db: Session) -> list[InboundSms]:
    alex = make_couple(db).partners[0]
    alex.sms_consent = ConsentState.OPTED_OUT
    return [_sms(alex.phone_e164)]


def _same_number_in_an_old_and_a_new_couple(db: Session) -> list[InboundSms]:
    old = make_couple(db, start=NOW - timedelta(days=40)).partners[0]
    make_sent_prompt(db, old, step_day=3, sent_at=NOW - timedelta(hours=3))
    new = make_couple(db, confirmed=False).partners[0]
    new.phone_e164 = old.phone_e164  # the newer couple is still waiting for confirmations
    return [_sms(old.phone_e164)]


def _same_number_after_the_old_program_ended(db: Session) -> list[InboundSms]:
    old = make_couple(db, start=NOW - timedelta(days=40)).partners[0]
    for enrollment in db.scalars(select(Enrollment).where(Enrollment.couple_id == old.couple_id)):
        enrollment.status = EnrollmentStatus.COMPLETED
    new = make_couple(db, start=NOW - timedelta(days=1)).partners[1]
    new.phone_e164 = old.phone_e164
    make_sent_prompt(db, new, step_day=1, sent_at=NOW - timedelta(hours=1))
    return [_sms(old.phone_e164)]


def _newest_of_two_inactive_couples(db: Session) -> list[InboundSms]:
    first = make_couple(db).partners[0]
    second = make_couple(db).partners[0]
    second.phone_e164 = first.phone_e164
    for couple_id in (first.couple_id, second.couple_id):
        for enrollment in db.scalars(select(Enrollment).where(Enrollment.couple_id == couple_id)):
            enrollment.status = EnrollmentStatus.CANCELLED
    return [_sms(first.phone_e164)]


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
def test_one_statement_path_answers_and_stores_what_the_orm_path_does(
    db: Session, runtime: Runtime, case: str
) -> None:
    messages = CASES[case](db)
    db.flush()
    fast, orm = _both_paths(db, runtime, messages)
    assert fast == orm
    assert fast[1]["claims"], "every text leaves its dedupe record"


def test_the_reply_window_is_each_programs_own(db: Session, runtime: Runtime) -> None:
    """A prompt 30 hours old is still open under a 48-hour window and closed under the usual 20 hours."""
    alex = make_couple(db, start=NOW - timedelta(days=3)).partners[0]
    prompt = make_sent_prompt(db, alex, step_day=1, sent_at=NOW - timedelta(hours=30))
    longer = ProgramLibrary(
        dataclasses.replace(p, reply_window_hours=48) if p.key == "appreciation" else p for p in runtime.programs
    )
    for programs, tied in ((runtime.programs, None), (longer, prompt.id)):
        fast, orm = _both_paths(db, runtime, [_sms(alex.phone_e164)], programs)
        assert fast == orm
        assert [entry[2] for entry in fast[1]["entries"]] == [tied]


def test_the_reply_is_encrypted_at_rest_and_counted_once_committed(db: Session, runtime: Runtime) -> None:
    alex = make_couple(db).partners[0]
    inbound.receive_sms(db, _sms(alex.phone_e164, "only for Sam to read"), settings=runtime.settings,
                        programs=runtime.programs, now=NOW)
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
    result = inbound.receive_sms(db, _sms(alex.phone_e164), settings=runtime.settings, programs=runtime.programs,
                                 now=NOW)
    assert result.kind == "reply" and not result.duplicate
    assert db.scalar(select(LogEntry.partner_id)) == alex.id
