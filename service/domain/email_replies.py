"""Email replies from SendGrid Inbound Parse: routed by their reply+<token>@ address, checked to come
from that partner, stripped of quoted history and signatures, and stored once by Message-ID."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr

from mailparser_reply import EmailReplyParser
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.domain.inbound import record_inbound
from service.domain.replies import ReplyOutcome, store_reply
from service.models import Channel, ConsentState, Partner
from service.programs import ProgramLibrary
from service.settings import Settings

_REPLY_TOKEN = re.compile(r"^reply\+([0-9a-f]{24})@", re.IGNORECASE)
# RFC 3676's "-- " delimiter and the phone-client sign-offs EmailReplyParser leaves in place.
_SIGNATURE = re.compile(r"(?ms)^(-- ?|__+|Sent from my [^\n]*|Get Outlook for [^\n]*)\s*$.*\Z")


MAX_ATTACHMENTS = 100  # far above what one email carries; a bigger count is not a real message


class InboundEmailError(ValueError):
    """A parse payload we refuse; the message says why without echoing the couple's words."""


@dataclass(frozen=True)
class InboundEmail:
    message_id: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    text: str
    attachment_count: int = 0


def _addresses(value: str) -> list[str]:
    return [addr.lower() for _, addr in getaddresses([value]) if "@" in addr]


def parse_inbound(form: dict[str, str], *, max_text_chars: int = 100_000) -> InboundEmail:
    """Build an InboundEmail from Inbound Parse form fields (the default, non-raw format)."""
    headers_raw = form.get("headers", "")
    headers = HeaderParser().parsestr(headers_raw) if headers_raw else None
    envelope: dict[str, object] = {}
    if form.get("envelope"):
        try:
            loaded = json.loads(form["envelope"])
        except (json.JSONDecodeError, TypeError) as exc:
            raise InboundEmailError("envelope is not JSON") from exc
        if not isinstance(loaded, dict):
            raise InboundEmailError("envelope must be a JSON object")
        envelope = loaded
    sender = parseaddr(form.get("from", ""))[1].lower()
    if not sender and isinstance(envelope.get("from"), str):
        sender = str(envelope["from"]).lower()
    if "@" not in sender:
        raise InboundEmailError("no sender address")
    recipients = _addresses(form.get("to", "")) + _addresses(form.get("cc", ""))
    env_to = envelope.get("to")
    if isinstance(env_to, list):
        recipients += [str(a).lower() for a in env_to if isinstance(a, str) and "@" in a]
    if not recipients:
        raise InboundEmailError("no recipient address")
    text = form.get("text", "")
    if not text and form.get("html"):
        text = re.sub(r"<[^>]+>", " ", form["html"])
    if len(text) > max_text_chars:
        raise InboundEmailError("text part too large")
    message_id = (headers.get("Message-ID", "") if headers else "").strip()
    if not message_id:
        # Without a Message-ID, a digest of what identifies the message still dedupes provider retries.
        digest = hashlib.sha256("\x00".join([sender, *recipients, form.get("subject", ""), text]).encode())
        message_id = "sha256:" + digest.hexdigest()
    try:
        attachments = int(form.get("attachments", "0") or 0)
    except ValueError as exc:
        raise InboundEmailError("attachments must be a number") from exc
    if not 0 <= attachments <= MAX_ATTACHMENTS:
        raise InboundEmailError(f"attachments must be between 0 and {MAX_ATTACHMENTS}")
    return InboundEmail(
        message_id=message_id[:255], sender=sender, recipients=tuple(dict.fromkeys(recipients)),
        subject=form.get("subject", "")[:500], text=text, attachment_count=max(0, attachments),
    )


def visible_reply(text: str) -> str:
    """The new part of a reply: quoted history and signatures removed."""
    reply = EmailReplyParser(languages=["en"]).parse_reply(text) or ""
    reply = _SIGNATURE.sub("", reply.replace("\r\n", "\n"))
    return reply.strip()


def _same_address(a: str, b: str | None) -> bool:
    if not b:
        return False
    try:
        left, right = Address(addr_spec=a), Address(addr_spec=b)
    except (ValueError, IndexError, HeaderParseError):  # not an address, such as "@0": compare as text
        return a.lower() == b.lower()
    return left.username.lower() == right.username.lower() and left.domain.lower() == right.domain.lower()


@dataclass
class EmailOutcome:
    status: str  # stored, duplicate, unknown_token, wrong_sender, empty, not_confirmed
    reply: ReplyOutcome | None = None


def receive_email(
    session: Session, email: InboundEmail, *, programs: ProgramLibrary, settings: Settings, now: datetime
) -> EmailOutcome:
    partner = None
    for address in email.recipients:
        match = _REPLY_TOKEN.match(address)
        if match:
            partner = session.scalar(select(Partner).where(Partner.reply_token == match.group(1).lower()))
            if partner is not None:
                break
    kind = "reply"
    if partner is None:
        kind = "unknown_token"
    elif not _same_address(email.sender, partner.email):
        kind = "wrong_sender"
    if not record_inbound(
        session, provider="sendgrid", message_id=email.message_id, channel=Channel.EMAIL,
        partner_id=partner.id if partner else None, kind=kind, keyword=None, now=now,
    ):
        return EmailOutcome(status="duplicate")
    if partner is None or kind != "reply":
        return EmailOutcome(status=kind)
    if partner.consent(Channel.EMAIL) is not ConsentState.CONFIRMED and not partner.is_confirmed:
        return EmailOutcome(status="not_confirmed")
    body = visible_reply(email.text)
    if not body and not email.attachment_count:
        return EmailOutcome(status="empty")
    outcome = store_reply(
        session, partner, channel=Channel.EMAIL, provider_message_id=email.message_id, body=body,
        media_count=email.attachment_count, programs=programs, settings=settings, now=now,
    )
    return EmailOutcome(status="stored", reply=outcome)
