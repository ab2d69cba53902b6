"""Email through SendGrid's official SDK: its `Mail` builds every message and its client supplies the
headers (API key, user agent); the payload travels over a keep-alive connection per sending thread
(`service.providers.keep_alive`), because the SDK's own HTTP layer (urllib) opens a new connection for
every message and costs more than twice the CPU (measured: 0.63 ms against 0.24 ms a message).

Every message carries an HTML and a text part, a reply-to address that routes answers back to us,
RFC 8058 one-click unsubscribe headers and our nudge id as a custom argument (per personalization: the
Mail Send spec types the top-level `custom_args` as a string). Categories are never set: they are
aggregated in SendGrid's reports and must not carry anything personal.

Failures map like Twilio's: an HTTP error is 429 (`rate_limited`) or 5xx (`temporary`) = retry, other
4xx = `rejected`; a request that never went out whole = `temporary`, retried; no answer after sending =
`OutcomeUnknown` (review, never resent).
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any, TypeVar

from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Content,
    CustomArg,
    Email,
    Header,
    Mail,
    ReplyTo,
    To,
)

from service.models import Channel
from service.providers.base import (
    DeliveryReport,
    DeliveryStatus,
    OutboundEmail,
    OutcomeUnknown,
    ProviderError,
    SendFailure,
    SendResult,
    retry_after_seconds,
)
from service.providers.keep_alive import Answer, KeepAlive, NoAnswer, NotSent

SENDGRID = "sendgrid"  # the provider's name in our records (nudges, inbound messages, delivery events, consent)
MAIL_SEND_PATH = "/v3/mail/send"


# What SendGrid's event names and Mail Send statuses mean, in the operator's terms (the ops page).
ERROR_TEXTS: dict[str, str] = {
    "bounce": "SendGrid: the receiving mail server rejected the message permanently (bounce).",
    "blocked": "SendGrid: the receiving mail server blocked the message (often reputation or content).",
    "dropped": "SendGrid: not sent because the address bounced, unsubscribed or reported spam before.",
    "deferred": "SendGrid: the receiving server asked to try later; SendGrid keeps retrying for 72 hours.",
    "spamreport": "SendGrid: the recipient marked the message as spam.",
    "unsubscribe": "SendGrid: the recipient unsubscribed.",
    "400": "SendGrid API: the request was refused as malformed.",
    "401": "SendGrid API: the API key is missing or wrong (SENDGRID_API_KEY).",
    "403": "SendGrid API: the key lacks permission or the sender is not verified.",
    "413": "SendGrid API: the message is too large.",
}
# SendGrid passes on the receiving mail server's status: enhanced (5.1.1) or basic (550) SMTP codes.
SMTP_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
SMTP_TEXTS: dict[str, str] = {
    "5.1.1": "Mail server: no such mailbox; the address does not exist.",
    "5.2.2": "Mail server: the mailbox is full.",
    "5.7.1": "Mail server: refused by policy (spam filtering or a blocklist).",
    "421": "Mail server: unavailable for now; SendGrid retries.",
    "450": "Mail server: mailbox unavailable for now; SendGrid retries.",
    "550": "Mail server: mailbox unavailable or message refused.",
    "552": "Mail server: mailbox full or message too large.",
    "553": "Mail server: the address is not allowed.",
    "554": "Mail server: the transaction failed (often spam filtering).",
}


def explain(code: str) -> str | None:
    """What a code SendGrid gave us means to an operator (`code` stripped and lower-case): an event, a Mail
    Send status, or the receiving server's SMTP status; None if it is none of those."""
    known = ERROR_TEXTS.get(code) or SMTP_TEXTS.get(code)
    if known is not None:
        return known
    enhanced = SMTP_ENHANCED.fullmatch(code)
    if enhanced is None:
        return None
    if enhanced.group(1) == "5":
        return f"Mail server: the message was rejected permanently (SMTP status {code})."
    return f"Mail server: a temporary failure (SMTP status {code}); SendGrid retries."


# Event Webhook events that say where a message got to.
EVENT_STATUSES: dict[str, DeliveryStatus] = {
    "processed": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "bounce": DeliveryStatus.UNDELIVERED,
    "dropped": DeliveryStatus.FAILED,
}
# Events after which nothing more may go to the address (a blocked bounce is no such event: see below).
EVENT_FAILURES: dict[str, SendFailure] = {
    "bounce": SendFailure.BOUNCED,
    "dropped": SendFailure.BOUNCED,  # SendGrid drops what goes to an address that bounced or opted out before
    "spamreport": SendFailure.OPTED_OUT,
    "unsubscribe": SendFailure.OPTED_OUT,
    "group_unsubscribe": SendFailure.OPTED_OUT,
}
_DIGITS = re.compile(r"^\d{1,18}$")
# SendGrid's guidance for the Signed Event Webhook: refuse a batch whose signed timestamp is far from now,
# so a batch captured once cannot be replayed later (its signature stays valid forever).
EVENT_TIMESTAMP_TOLERANCE_SECONDS = 10 * 60
# The event fields we read as text; each must be storable (no NUL byte, no lone surrogate from a JSON escape).
_TEXT_FIELDS = ("sg_event_id", "event", "sg_message_id", "status", "type", "email", "nudge_id")


class UnreadableEvent(ValueError):
    """One event of an authenticated batch that cannot be applied; `reason` is one of a few fixed words
    (safe to log and to use as a label: it never carries the event's content)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def event_timestamp_problem(timestamp: str, now: float) -> str | None:
    """Why the Event Webhook's signed timestamp header is refused, or None when it is within
    EVENT_TIMESTAMP_TOLERANCE_SECONDS of `now` (either way: clocks drift)."""
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return "The Event Webhook timestamp must be a Unix time in seconds."
    if abs(int(timestamp) - now) > EVENT_TIMESTAMP_TOLERANCE_SECONDS:
        minutes = EVENT_TIMESTAMP_TOLERANCE_SECONDS // 60
        return f"The Event Webhook timestamp is more than {minutes} minutes from now: refused as a replay."
    return None


def _check_text_fields(event: dict[str, Any]) -> None:
    for field in _TEXT_FIELDS:
        value = event.get(field)
        if not isinstance(value, str):
            continue
        if "\x00" in value:
            raise UnreadableEvent("nul_byte", f"{field} holds a NUL byte")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UnreadableEvent("invalid_text", f"{field} is not valid Unicode text") from None


def event_report(event: dict[str, Any]) -> DeliveryReport:
    """One Event Webhook event (its batch authenticated) in Closer's terms; ValueError when it lacks the
    event's identity or name, or holds text no database column can store (`UnreadableEvent`, a
    ValueError). The nudge is found by the nudge id our send gave as a custom argument:
    sg_message_id extends the X-Message-Id the send returned, so it names no stored message."""
    event_id = str(event.get("sg_event_id") or "")
    kind = str(event.get("event") or "")
    if not event_id or not kind:
        raise UnreadableEvent("no_identity", "each event needs sg_event_id and event")
    _check_text_fields(event)
    raw_nudge = str(event.get("nudge_id") or "")
    status = EVENT_STATUSES.get(kind)
    status_code = str(event.get("status") or "")[:32] or None
    # A block (type "blocked") is the receiving server refusing us, often for reputation: not the address.
    blocked = kind == "bounce" and str(event.get("type") or "") == "blocked"
    failure = SendFailure.REJECTED if blocked else EVENT_FAILURES.get(kind)
    reason = None
    if status in (DeliveryStatus.UNDELIVERED, DeliveryStatus.FAILED):
        reason = f"{SENDGRID} {kind}" + (f" ({status_code})" if status_code else "")
    email = event.get("email")
    return DeliveryReport(
        provider=SENDGRID, channel=Channel.EMAIL, event_id=event_id, event=kind,
        message_id=str(event.get("sg_message_id") or "") or None,
        nudge_id=int(raw_nudge) if _DIGITS.match(raw_nudge) else None, status=status, error_code=status_code,
        failure=failure, reason=reason, detail=f"{SENDGRID} {kind}",
        address=email.strip() if isinstance(email, str) and "@" in email and len(email) <= 320 else None,
        occurred_at=_timestamp(event.get("timestamp")),
    )


def _timestamp(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def send_failure(status: int) -> SendFailure:
    """What an error answer to a send means: Mail Send's status alone says it."""
    if status == 429:
        return SendFailure.RATE_LIMITED
    return SendFailure.TEMPORARY if status >= 500 else SendFailure.REJECTED


class SendGridEmail:
    name = SENDGRID

    def __init__(
        self, api_key: str, from_email: str, *, from_name: str = "", api_host: str = "", timeout: float = 15.0
    ) -> None:
        if not from_email:
            raise ValueError("SendGrid needs SENDGRID_FROM_EMAIL")
        self._client = SendGridAPIClient(api_key=api_key, host=api_host.rstrip("/") or "https://api.sendgrid.com")
        self._transport = KeepAlive(self._client.host, timeout)
        self._from = Email(from_email, from_name or None)

    def build(self, message: OutboundEmail) -> Mail:
        mail = Mail(from_email=self._from, to_emails=_address(To(), message.to), subject=message.subject)
        mail.add_content(Content("text/plain", message.text))
        mail.add_content(Content("text/html", message.html))
        if message.reply_to:
            mail.reply_to = _address(ReplyTo(), message.reply_to)
        for name, value in message.headers.items():
            mail.add_header(Header(name, value))
        for name, value in message.custom_args.items():
            mail.add_custom_arg(CustomArg(name, value, p=0))
        return mail

    def send_email(self, message: OutboundEmail) -> SendResult:
        payload = json.dumps(self.build(message).get()).encode()
        headers = {**self._client.client.request_headers, "Content-Type": "application/json"}
        try:
            answer = self._transport.request("POST", MAIL_SEND_PATH, payload, headers)
        except NotSent as exc:
            raise ProviderError("sendgrid could not be reached", provider=SENDGRID, code="connection",
                                failure=SendFailure.TEMPORARY) from exc
        except NoAnswer as exc:
            raise OutcomeUnknown("sendgrid did not answer after the request was sent", provider=SENDGRID) from exc
        if answer.status >= 400:
            raise ProviderError(f"sendgrid answered {answer.status}", provider=SENDGRID, code=str(answer.status),
                                failure=send_failure(answer.status), retry_after=_retry_after(answer))
        message_id = answer.header("X-Message-Id") or ""
        return SendResult(provider_message_id=message_id or f"sendgrid-{message.nudge_id}", status="sent")


_Address = TypeVar("_Address", bound=Email)


def _address(target: _Address, address: str) -> _Address:
    """A bare address set as the address: given to the constructor alone, the SDK would run it through
    `email.utils.parseaddr` looking for a display name ours never have, a measurable cost per message."""
    target.email = address
    return target


def _retry_after(answer: Answer) -> float | None:
    value = retry_after_seconds(answer.header("Retry-After"))
    if value is not None:
        return value
    reset = answer.header("X-RateLimit-Reset")
    try:
        return max(0.0, float(reset) - time.time()) if reset else None
    except ValueError:
        return None
