"""Console providers: they "send" by writing to the development outbox table."""

from __future__ import annotations

import json
import logging
import uuid

from service.db import Database
from service.models import Channel, OutboxMessage, mask_phone
from service.providers.admission import pass_gate
from service.providers.base import OutboundEmail, OutboundSms, SendResult

log = logging.getLogger(__name__)

CONSOLE = "console"  # the provider's name in our records


def explain(code: str) -> str | None:
    """The console providers never fail with a code of their own (a failed outbox write is a database error)."""
    del code
    return None


class ConsoleSms:
    name = CONSOLE

    def __init__(self, database: Database, sender: str = "+15550000000") -> None:
        self._database = database
        self._sender = sender

    def send_sms(self, message: OutboundSms) -> SendResult:
        pass_gate()
        sid = "SM" + uuid.uuid4().hex
        # The outbox stands in for the provider, so it commits on its own, as a remote API would.
        with self._database.transaction() as session:
            session.add(
                OutboxMessage(
                    channel=Channel.SMS, recipient=message.to, sender=self._sender,
                    body_text=message.body, provider_message_id=sid,
                )
            )
        log.info("console sms", extra={"to": mask_phone(message.to), "sid": sid, "nudge_id": message.nudge_id})
        return SendResult(provider_message_id=sid)


class ConsoleEmail:
    name = CONSOLE

    def __init__(self, database: Database, sender: str = "closer@localhost") -> None:
        self._database = database
        self._sender = sender

    def send_email(self, message: OutboundEmail) -> SendResult:
        pass_gate()
        message_id = "console-" + uuid.uuid4().hex
        with self._database.transaction() as session:
            session.add(
                OutboxMessage(
                    channel=Channel.EMAIL, recipient=message.to, sender=self._sender,
                    reply_to=message.reply_to, subject=message.subject, body_text=message.text,
                    body_html=message.html, headers=json.dumps(message.headers, sort_keys=True),
                    provider_message_id=message_id,
                )
            )
        log.info("console email", extra={"message_id": message_id, "nudge_id": message.nudge_id})
        return SendResult(provider_message_id=message_id)
