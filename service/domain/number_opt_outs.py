"""Opt-outs of numbers no partner has: consent is about the number, not the couple.

A number that texts STOP while we know no partner with it is remembered here, so a later signup that
invites it does not text it; START from that number forgets it. Only a keyed hash of the E.164 number is
kept (HMAC-SHA256 under a key derived from SECRET_KEY): the table holds no phone number in clear, and the
hash cannot be reversed by trying every number without the key.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from service.crypto import derived_key
from service.db import affected_rows
from service.models import NumberOptOut


def number_hash(secret_key: str, phone_e164: str) -> str:
    """The keyed hash (64 hex characters) a number's opt-out is stored under."""
    return hmac.new(derived_key(secret_key, "closer number opt-outs"), phone_e164.encode(), hashlib.sha256).hexdigest()


def record_number_opt_out(session: Session, secret_key: str, phone_e164: str, *, message_sid: str,
                          now: datetime) -> None:
    """Remember that this number texted STOP (a second STOP keeps the first one's time and MessageSid)."""
    session.execute(
        insert(NumberOptOut)
        .values(number_hash=number_hash(secret_key, phone_e164), opted_out_at=now, source_detail=message_sid)
        .on_conflict_do_nothing(index_elements=["number_hash"])
    )


def clear_number_opt_out(session: Session, secret_key: str, phone_e164: str) -> bool:
    """Forget this number's opt-out (it texted START); True when there was one."""
    digest = number_hash(secret_key, phone_e164)
    result = session.execute(delete(NumberOptOut).where(NumberOptOut.number_hash == digest))
    return affected_rows(result) > 0


def number_opted_out_unknown(session: Session, secret_key: str, phone_e164: str) -> bool:
    """Whether this number texted STOP while no partner had it, and not START since."""
    return session.scalar(
        select(NumberOptOut.number_hash).where(NumberOptOut.number_hash == number_hash(secret_key, phone_e164))
    ) is not None
