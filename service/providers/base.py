"""The seam between Closer and the outside world: small protocols for SMS and email."""

from __future__ import annotations

import email.utils
import enum
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from service.models import Channel


@dataclass(frozen=True)
class OutboundSms:
    to: str
    body: str
    status_callback: str | None = None  # None: the provider's own status webhook for `nudge_id`
    nudge_id: int | None = None


@dataclass(frozen=True)
class OutboundEmail:
    to: str
    subject: str
    text: str
    html: str
    reply_to: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    custom_args: dict[str, str] = field(default_factory=dict)
    nudge_id: int | None = None


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str
    status: str = "sent"


class SendFailure(enum.StrEnum):
    """What a failure means, whatever the vendor's own code for it: the domain decides on this alone.

    Each provider module maps its codes and statuses to one of these; the vendor's code travels beside
    it (`ProviderError.code`), only to be recorded and shown to operators."""

    OPTED_OUT = "opted_out"  # the recipient told the provider to stop: nothing more goes to that address
    BOUNCED = "bounced"  # the address refused mail for good (a hard bounce): nothing more goes there
    INVALID_ADDRESS = "invalid_address"  # not an address the channel can reach (bad or non-mobile number)
    UNREACHABLE = "unreachable"  # the recipient could not be reached this time (handset off, say)
    RATE_LIMITED = "rate_limited"  # the provider asks us to slow down: retried
    TEMPORARY = "temporary"  # the provider failed or could not be reached, and nothing was sent: retried
    REJECTED = "rejected"  # refused for any other reason that retrying will not change
    OUTCOME_UNKNOWN = "outcome_unknown"  # the request went out and no answer came: it may have been sent

    @property
    def retryable(self) -> bool:
        return self in (SendFailure.RATE_LIMITED, SendFailure.TEMPORARY)


class ProviderError(Exception):
    """A send that did not happen (or may have): the vendor's `code` and what it means (`failure`)."""

    def __init__(
        self, message: str, *, provider: str, code: str, failure: SendFailure, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.code = code
        self.failure = failure
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.failure.retryable

    @property
    def detail(self) -> str:
        """The provider's word as a consent record names it, such as "twilio 21610"."""
        return f"{self.provider} {self.code}"


class OutcomeUnknown(ProviderError):
    """The request may have reached the provider: sending again could deliver the message twice."""

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(message, provider=provider, code="outcome_unknown", failure=SendFailure.OUTCOME_UNKNOWN)


class DeliveryStatus(enum.StrEnum):
    """Where a message a provider took got to, as its status report says."""

    SENT = "sent"  # accepted and on its way
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"  # the carrier or the receiving mail server refused it
    FAILED = "failed"  # the provider never sent it
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class DeliveryReport:
    """One status report (a callback, an event) about a message a provider took, in Closer's terms.

    A webhook view has the provider module translate what the vendor posted, and hands the report to
    `service.domain.delivery.apply_delivery_status`; the domain reads no vendor's status names or codes."""

    provider: str  # the name our records give the provider
    channel: Channel
    event_id: str  # the provider's identity of this report: each is applied once
    event: str  # the provider's own name for what happened, kept with the record
    message_id: str | None = None  # the provider's id of the message, as the report gives it
    # The id as the send returned it (and the nudge stored it), when the report carries that: the nudge is
    # found by it first, and a nudge named by `nudge_id` that stored another id is not this message's.
    sent_message_id: str | None = None
    nudge_id: int | None = None  # the nudge id the message carried (in its callback URL, a custom argument)
    status: DeliveryStatus | None = None  # None: nothing to move (an open, a deferral, an unsubscribe)
    error_code: str | None = None  # the vendor's code: kept with the record, and on the nudge with a failure
    failure: SendFailure | None = None  # what went wrong, if anything did
    reason: str | None = None  # the nudge's status reason when the report moves it
    detail: str = ""  # the provider's word as a consent record names it ("sendgrid bounce")
    address: str | None = None  # the recipient: whom a stop concerns when the report names no nudge of ours
    occurred_at: datetime | None = None  # None: when it was received


# Codes any provider module may record: the seam's own (no connection, no answer) and plain HTTP statuses.
COMMON_CODES: dict[str, str] = {
    "429": "Provider API: rate limited; the send is retried after Retry-After.",
    "500": "Provider API: server error; the send is retried.",
    "502": "Provider API: bad gateway; the send is retried.",
    "503": "Provider API: unavailable; the send is retried.",
    "timeout": "The provider did not accept the connection in time; the send is retried.",
    "connection": "The provider could not be reached; the send is retried.",
    "outcome_unknown": "The provider did not answer in time: it may have sent the message. Awaiting review.",
}


def explain(code: str) -> str | None:
    """What a code every provider shares means to an operator (`code` stripped and lower-case)."""
    return COMMON_CODES.get(code)


class SmsSender(Protocol):
    name: str

    def send_sms(self, message: OutboundSms) -> SendResult: ...


class EmailSender(Protocol):
    name: str

    def send_email(self, message: OutboundEmail) -> SendResult: ...


MAX_RETRY_AFTER = 3600.0


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """A Retry-After header in seconds or as an HTTP date (RFC 9110), capped at an hour; None if absent."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))
