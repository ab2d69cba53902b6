"""Operators: who may log in to /ops (from OPERATOR_USERS), and the actions they take, each recorded.

Operators act on delivery state only; nothing here reads a couple's words.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from redis import Redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from service.db import affected_rows
from service.domain.planner import SENDING_PAUSED_FLAG
from service.models import ControlFlag, Nudge, NudgeStatus, OperatorAction
from service.settings import SettingsError

OPERATOR_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
WERKZEUG_METHODS = ("scrypt", "pbkdf2")
MIN_PASSWORD_LENGTH = 12
CLOSE_OUTCOMES = (NudgeStatus.SENT, NudgeStatus.FAILED, NudgeStatus.CANCELLED)
MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class Operator:
    name: str
    password_hash: str

    @property
    def fingerprint(self) -> str:
        """Kept in the session: changing or removing this operator's hash ends their sessions."""
        return hashlib.sha256(self.password_hash.encode()).hexdigest()[:16]


def _is_werkzeug_hash(value: str) -> bool:
    method, _, rest = value.partition("$")
    salt, _, digest = rest.partition("$")
    return method.split(":", 1)[0] in WERKZEUG_METHODS and bool(salt) and bool(digest) and "$" not in digest


def parse_operator_users(entries: Sequence[str]) -> dict[str, Operator]:
    """OPERATOR_USERS entries (already split on commas) as `name:werkzeug-hash`.

    A werkzeug hash holds colons itself ("scrypt:32768:8:1$salt$hash"), so only the first colon
    separates the name. Argon2 hashes are not accepted: their parameters contain commas, which
    OPERATOR_USERS uses between entries.
    """
    operators: dict[str, Operator] = {}
    for position, entry in enumerate(entries, start=1):
        name, colon, password_hash = entry.strip().partition(":")
        name, password_hash = name.strip(), password_hash.strip()
        if not colon or not OPERATOR_NAME.fullmatch(name) or not _is_werkzeug_hash(password_hash):
            raise SettingsError(
                f"OPERATOR_USERS entry {position} is not `name:password-hash` (a name of letters, digits and "
                "._@- and a werkzeug scrypt or pbkdf2 hash). Make one with `closer operators hash NAME`."
            )
        if name in operators:
            raise SettingsError(f"OPERATOR_USERS names {name!r} twice.")
        operators[name] = Operator(name=name, password_hash=password_hash)
    return operators


@functools.lru_cache(maxsize=8)
def operators_from(entries: tuple[str, ...]) -> dict[str, Operator]:
    return parse_operator_users(entries)


@functools.lru_cache(maxsize=8)
def _decoy_hash(method: str) -> str:
    return generate_password_hash(secrets.token_urlsafe(16), method=method)


def authenticate(operators: dict[str, Operator], name: str, password: str) -> Operator | None:
    """The operator these credentials belong to, or None.

    An unknown name is checked against a decoy hash of the same kind, so the answer takes as long
    whether or not the name exists; the digest comparison itself is constant-time (hmac.compare_digest).
    """
    operator = operators.get(name)
    if operator is not None:
        candidate = operator.password_hash
    else:
        sample = next(iter(operators.values()), None)
        candidate = _decoy_hash(sample.password_hash.split("$", 1)[0] if sample else "scrypt")
    matches = check_password_hash(candidate, password)
    return operator if operator is not None and matches else None


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"use at least {MIN_PASSWORD_LENGTH} characters")
    return generate_password_hash(password)


# --- sessions -----------------------------------------------------------------------------------
# A login opens a server-side session: a random id goes in the signed cookie, and Redis holds its
# SHA-256 (never the id itself) with the operator's name, for as long as a session may last. Logout
# deletes it, so a copied cookie is worthless afterwards. Redis errors propagate: the caller fails closed.

OPERATOR_SESSION_PREFIX = "closer:ops-session:"


def _session_key(session_id: str) -> str:
    return OPERATOR_SESSION_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


def open_operator_session(redis: Redis, operator: str, ttl_seconds: int) -> str:
    """A new session id for this operator, recorded for `ttl_seconds`."""
    session_id = secrets.token_urlsafe(32)
    redis.set(_session_key(session_id), operator, ex=ttl_seconds)
    return session_id


def operator_of_session(redis: Redis, session_id: str) -> str | None:
    """The operator a live session belongs to; None once it has ended or expired."""
    value = redis.get(_session_key(session_id))
    return value.decode() if isinstance(value, bytes) else None


def end_operator_session(redis: Redis, session_id: str) -> None:
    redis.delete(_session_key(session_id))


# --- actions ------------------------------------------------------------------------------------


def record_action(session: Session, operator: str, action: str, target: str | None, now: datetime) -> None:
    session.add(OperatorAction(operator=operator, action=action, target=(target or "")[:255] or None,
                               created_at=now))


def recent_actions(session: Session, limit: int = 20) -> list[OperatorAction]:
    return list(session.scalars(select(OperatorAction).order_by(OperatorAction.id.desc()).limit(limit)))


def set_sending_paused(session: Session, paused: bool, *, operator: str, now: datetime) -> bool:
    """Flip the kill switch; True when it changed. Scheduler passes and send jobs read the flag."""
    flag = session.get(ControlFlag, SENDING_PAUSED_FLAG, with_for_update=True)
    value = "1" if paused else "0"
    if flag is not None and flag.value == value:
        return False
    if not paused and flag is None:
        return False
    if flag is None:
        session.add(ControlFlag(key=SENDING_PAUSED_FLAG, value=value, updated_at=now))
    else:
        flag.value, flag.updated_at = value, now
    record_action(session, operator, "pause_sending" if paused else "resume_sending", None, now)
    session.flush()
    return True


class ReviewError(ValueError):
    """The nudge is not (or no longer) waiting for an operator's decision."""


def resend_reviewed(session: Session, nudge_id: int, *, operator: str, now: datetime) -> int:
    """Put a nudge under review back in the queue; returns the id to enqueue after the commit.

    The update is conditional on `needs_review`, so two operators resolving the same nudge at once
    cannot both resend it.
    """
    result = session.execute(
        update(Nudge)
        .where(Nudge.id == nudge_id, Nudge.needs_review.is_(True))
        .values(status=NudgeStatus.QUEUED, needs_review=False, queued_at=now, sending_at=None,
                status_reason=f"resent by operator {operator}"[:255])
    )
    if not affected_rows(result):
        raise ReviewError(f"nudge {nudge_id} is not awaiting review")
    record_action(session, operator, "resend_nudge", f"nudge:{nudge_id}", now)
    return nudge_id


def close_reviewed(
    session: Session, nudge_id: int, outcome: str, reason: str, *, operator: str, now: datetime
) -> None:
    """Settle a nudge under review without sending it again."""
    if outcome not in CLOSE_OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(CLOSE_OUTCOMES)}")
    reason = " ".join(reason.split())[:MAX_REASON_CHARS] or "no reason given"
    values: dict[str, object] = {
        "status": outcome, "needs_review": False,
        "status_reason": f"closed by operator {operator}: {reason}"[:255],
    }
    if outcome == NudgeStatus.SENT:
        # The operator found it at the provider: it left when we handed it over.
        values["sent_at"] = Nudge.sending_at
    result = session.execute(
        update(Nudge).where(Nudge.id == nudge_id, Nudge.needs_review.is_(True)).values(**values)
    )
    if not affected_rows(result):
        raise ReviewError(f"nudge {nudge_id} is not awaiting review")
    record_action(session, operator, f"close_nudge_{outcome}", f"nudge:{nudge_id}", now)
