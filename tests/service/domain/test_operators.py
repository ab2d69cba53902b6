from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import generate_password_hash

from service.domain.operators import (
    ReviewError,
    authenticate,
    close_reviewed,
    hash_password,
    parse_operator_users,
    resend_reviewed,
    set_sending_paused,
)
from service.domain.planner import SENDING_PAUSED_FLAG, sending_paused
from service.models import ControlFlag, Nudge, NudgeKind, NudgeStatus, OperatorAction
from service.settings import SettingsError
from tests.factories import make_couple

NOW = datetime(2026, 3, 9, 14, 0, tzinfo=UTC)
FAST = "pbkdf2:sha256:1000"


def test_a_werkzeug_hash_keeps_its_colons() -> None:
    scrypt = generate_password_hash("a long enough password")
    assert scrypt.startswith("scrypt:") and scrypt.count(":") >= 3
    operators = parse_operator_users([f"alice:{scrypt}", f" bob : {generate_password_hash('x', method=FAST)} "])
    assert operators["alice"].password_hash == scrypt
    assert set(operators) == {"alice", "bob"}
    assert authenticate(operators, "alice", "a long enough password") is operators["alice"]


@pytest.mark.parametrize(
    "entry",
    [
        "alice",  # no hash
        "alice:",  # empty hash
        "alice:plaintext-password",  # not a hash
        "al ice:pbkdf2:sha256:1000$salt$abc",  # a space in the name
        ":pbkdf2:sha256:1000$salt$abc",  # no name
        "alice:$argon2id$v=19$m=65536",  # argon2 (split by the comma in its parameters)
        "alice:md5$salt$abc",  # a method werkzeug does not check
    ],
)
def test_malformed_entries_are_refused_without_echoing_them(entry: str) -> None:
    with pytest.raises(SettingsError) as raised:
        parse_operator_users([entry])
    assert "OPERATOR_USERS entry 1" in str(raised.value)
    assert "abc" not in str(raised.value)


def test_a_name_may_appear_once() -> None:
    hashed = generate_password_hash("x", method=FAST)
    with pytest.raises(SettingsError, match="twice"):
        parse_operator_users([f"alice:{hashed}", f"alice:{hashed}"])


def test_authenticate_refuses_wrong_passwords_and_unknown_names() -> None:
    operators = parse_operator_users([f"alice:{generate_password_hash('right password', method=FAST)}"])
    assert authenticate(operators, "alice", "wrong password") is None
    assert authenticate(operators, "mallory", "right password") is None
    assert authenticate({}, "alice", "right password") is None
    assert authenticate(operators, "alice", "right password") is not None


def test_fingerprint_changes_with_the_hash() -> None:
    one = parse_operator_users([f"alice:{generate_password_hash('one', method=FAST)}"])["alice"]
    two = parse_operator_users([f"alice:{generate_password_hash('two', method=FAST)}"])["alice"]
    assert one.fingerprint != two.fingerprint


def test_hash_password_wants_a_long_password() -> None:
    with pytest.raises(ValueError, match="12"):
        hash_password("short")
    assert hash_password("twelve chars ok").startswith("scrypt:")


def test_pause_and_resume_are_recorded(db: Session) -> None:
    assert set_sending_paused(db, True, operator="alice", now=NOW) is True
    assert sending_paused(db) is True
    assert set_sending_paused(db, True, operator="alice", now=NOW) is False
    assert set_sending_paused(db, False, operator="bob", now=NOW) is True
    assert sending_paused(db) is False
    assert db.get(ControlFlag, SENDING_PAUSED_FLAG).value == "0"
    actions = db.scalars(select(OperatorAction).order_by(OperatorAction.id)).all()
    assert [(a.operator, a.action, a.created_at) for a in actions] == [
        ("alice", "pause_sending", NOW), ("bob", "resume_sending", NOW)]


def test_resuming_when_never_paused_changes_nothing(db: Session) -> None:
    assert set_sending_paused(db, False, operator="alice", now=NOW) is False
    assert db.get(ControlFlag, SENDING_PAUSED_FLAG) is None


def _nudge_under_review(db: Session) -> Nudge:
    couple = make_couple(db)
    nudge = Nudge(enrollment=couple.enrollments[0], partner=couple.partners[0], kind=NudgeKind.PROMPT, step_day=1,
                  channel="sms", status=NudgeStatus.SENDING, sending_at=NOW, attempts=1, needs_review=True,
                  error_code="outcome_unknown", status_reason="the provider did not answer")
    db.add(nudge)
    db.flush()
    return nudge


def test_resend_queues_the_nudge_once(db: Session) -> None:
    nudge = _nudge_under_review(db)
    assert resend_reviewed(db, nudge.id, operator="alice", now=NOW) == nudge.id
    db.refresh(nudge)
    assert (nudge.status, nudge.needs_review, nudge.queued_at) == (NudgeStatus.QUEUED, False, NOW)
    with pytest.raises(ReviewError):
        resend_reviewed(db, nudge.id, operator="bob", now=NOW)
    target = db.scalar(select(OperatorAction.target).where(OperatorAction.action == "resend_nudge"))
    assert target == f"nudge:{nudge.id}"


@pytest.mark.parametrize("outcome", [NudgeStatus.CANCELLED, NudgeStatus.FAILED, NudgeStatus.SENT])
def test_close_settles_the_nudge_with_the_reason(db: Session, outcome: NudgeStatus) -> None:
    nudge = _nudge_under_review(db)
    close_reviewed(db, nudge.id, outcome, "  checked   the Twilio console ", operator="alice", now=NOW)
    db.refresh(nudge)
    assert nudge.status == outcome and nudge.needs_review is False
    assert nudge.status_reason == "closed by operator alice: checked the Twilio console"
    assert (nudge.sent_at == NOW) if outcome == NudgeStatus.SENT else nudge.sent_at is None
    with pytest.raises(ReviewError):
        close_reviewed(db, nudge.id, outcome, "again", operator="alice", now=NOW)


def test_close_refuses_other_outcomes(db: Session) -> None:
    nudge = _nudge_under_review(db)
    with pytest.raises(ValueError, match="outcome"):
        close_reviewed(db, nudge.id, NudgeStatus.QUEUED, "", operator="alice", now=NOW)
