"""The seam between Closer and the outside world: small protocols for SMS and email."""

from __future__ import annotations

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


class SmsSender(Protocol):
    name: str

    def send_sms(self, message: OutboundSms) -> SendResult: ...


class EmailSender(Protocol):
    name: str

    def send_email(self, message: OutboundEmail) -> SendResult: ...


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a Retry-After header given in seconds; HTTP dates are rare from these providers."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
