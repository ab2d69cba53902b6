"""Replaying inbound messages that were spooled to Redis while the database was down."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from jobs.send import enqueue_nudges
from service.domain.email_replies import InboundEmailError, parse_inbound, receive_email
from service.runtime import Runtime
from service.web.webhooks import spool

log = logging.getLogger(__name__)

Handler = Callable[[Session, Runtime, dict[str, Any]], list[int]]


def _sendgrid_inbound(session: Session, runtime: Runtime, payload: dict[str, Any]) -> list[int]:
    try:
        email = parse_inbound(payload)
    except InboundEmailError:
        return []  # it parsed when it was spooled; nothing valid can come of it now
    outcome = receive_email(session, email, programs=runtime.programs, settings=runtime.settings,
                            now=datetime.now(UTC))
    return outcome.reply.nudge_ids if outcome.reply else []


HANDLERS: dict[str, Handler] = {"sendgrid_inbound": _sendgrid_inbound}


def register_handler(kind: str, handler: Handler) -> None:
    HANDLERS[kind] = handler


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
        enqueue_nudges(nudge_ids, runtime=runtime)
        drained += 1
    return drained
