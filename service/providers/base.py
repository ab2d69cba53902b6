"""The seam between Closer and the outside world: small protocols for SMS and email."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class OutboundSms:
    to: str
    body: str
    status_callback: str | None = None
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


class ProviderError(Exception):
    """A send that did not happen. `retryable` errors (429, 5xx, timeouts) may be tried again."""

    def __init__(
        self, message: str, *, code: str | None = None, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after


class OutcomeUnknown(ProviderError):
    """The request may have reached the provider: sending again could deliver the message twice."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="outcome_unknown", retryable=False)


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
