"""Replaying inbound messages that were spooled to Redis while the database was down.

Each kind of spooled record has its replay in HANDLERS, the one place they are listed: a process that
drains the spool (the scheduler) needs nothing else imported for every kind to be replayed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from service import spool
from service.domain.email_replies import InboundEmailError, parse_inbound, receive_email
from service.domain.inbound import InboundSms, queue_late_answer, receive_sms
from service.models import NudgeStatus
from service.providers.twilio_sms import TWILIO
from service.queues import enqueue_nudges
from service.runtime import Runtime

log = logging.getLogger(__name__)

Handler = Callable[[Session, Runtime, dict[str, Any]], list[int]]


def _spooled_sms(session: Session, runtime: Runtime, payload: dict[str, Any]) -> list[int]:
    # A text spooled before InboundSms named its provider has none: that kind of record is TWILIO's.
    payload = {"provider": TWILIO, **payload, "media_types": tuple(payload.get("media_types", ()))}
    message = InboundSms(**payload)
    now = datetime.now(UTC)
    result = receive_sms(session, message, settings=runtime.settings, programs=runtime.programs, now=now)
    if result.kind == "keyword" and result.reply and not result.duplicate:
        # The webhook's TwiML answer went out empty when the text was spooled: the answer goes as a text.
        answer = queue_late_answer(session, message, result.reply, now)
        if answer is not None and answer.status == NudgeStatus.QUEUED:
            return [*result.nudge_ids, answer.id]
    return result.nudge_ids


def _spooled_email(session: Session, runtime: Runtime, payload: dict[str, Any]) -> list[int]:
    try:
        email = parse_inbound(payload)
    except InboundEmailError:
        return []  # it parsed when it was spooled; nothing valid can come of it now
    outcome = receive_email(session, email, programs=runtime.programs, settings=runtime.settings,
                            now=datetime.now(UTC))
    return outcome.reply.nudge_ids if outcome.reply else []


HANDLERS: dict[str, Handler] = {
    spool.TWILIO_SMS: _spooled_sms,
    spool.SENDGRID_INBOUND: _spooled_email,
}


def drain_spool(runtime: Runtime, *, limit: int = 1000) -> int:
    """Persist up to `limit` spooled messages, oldest first; each leaves the spool only after its commit,
    and a replay after a crash is harmless because every handler dedupes on the provider's id."""
    drained = 0
    while drained < limit:
        head = spool.peek(runtime.redis)
        if head is None:
            break
        raw, record = head
        handler = HANDLERS.get(record.get("kind", ""))
        nudge_ids: list[int] = []
        if handler is not None:
            with runtime.database.transaction() as session:
                nudge_ids = handler(session, runtime, record.get("payload", {}))
        else:
            log.error("spooled message of unknown kind dropped", extra={"kind": record.get("kind")})
        spool.done(runtime.redis, raw)
        enqueue_nudges(runtime, nudge_ids)
        drained += 1
    return drained
