"""Email through SendGrid's official SDK.

Every message carries an HTML and a text part, a reply-to address that routes answers back to us,
RFC 8058 one-click unsubscribe headers and our nudge id as a custom argument (per personalization:
the Mail Send spec types the top-level `custom_args` as a string). Categories are never set: they are
aggregated in SendGrid's reports and must not carry anything personal.

The SDK's HTTP layer (python_http_client on urllib) opens one connection per request. Failures map
like Twilio's: an HTTP error is 429/5xx = retry, other 4xx = failed; a failure before the request was
sent (`URLError` from urllib's connect/send step) = retry; no answer after sending = `OutcomeUnknown`.
"""

from __future__ import annotations

import http.client
import logging
import time
import urllib.error

from python_http_client.exceptions import HTTPError
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

from service.providers.base import (
    OutboundEmail,
    OutcomeUnknown,
    ProviderError,
    SendResult,
    retry_after_seconds,
)

# The HTTP layer logs whole payloads at DEBUG, and payloads are the couples' words.
logging.getLogger("python_http_client").setLevel(logging.INFO)
logging.getLogger("python_http_client.client").setLevel(logging.INFO)


class SendGridEmail:
    name = "sendgrid"

    def __init__(
        self, api_key: str, from_email: str, *, from_name: str = "", api_host: str = "", timeout: float = 15.0
    ) -> None:
        if not from_email:
            raise ValueError("SendGrid needs SENDGRID_FROM_EMAIL")
        self._client = SendGridAPIClient(api_key=api_key, host=api_host.rstrip("/") or "https://api.sendgrid.com")
        # Without a timeout urllib waits forever on a connection that never answers.
        self._client.client.timeout = timeout
        self._from = Email(from_email, from_name or None)

    def build(self, message: OutboundEmail) -> Mail:
        mail = Mail(from_email=self._from, to_emails=To(message.to), subject=message.subject)
        mail.add_content(Content("text/plain", message.text))
        mail.add_content(Content("text/html", message.html))
        if message.reply_to:
            mail.reply_to = ReplyTo(message.reply_to)
        for name, value in message.headers.items():
            mail.add_header(Header(name, value))
        for name, value in message.custom_args.items():
            mail.add_custom_arg(CustomArg(name, value, p=0))
        return mail

    def send_email(self, message: OutboundEmail) -> SendResult:
        try:
            response = self._client.send(self.build(message))
        except HTTPError as exc:
            status = int(getattr(exc, "status_code", 0) or 0)
            headers = getattr(exc, "headers", None)
            raise ProviderError(
                f"sendgrid answered {status}", code=str(status), retryable=status == 429 or status >= 500,
                retry_after=_retry_after(headers),
            ) from exc
        except urllib.error.URLError as exc:
            # urllib raises URLError only while connecting and writing the request: nothing was accepted.
            raise ProviderError("sendgrid could not be reached", code="connection", retryable=True) from exc
        except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as exc:
            raise OutcomeUnknown("sendgrid did not answer after the request was sent") from exc
        message_id = ""
        if response.headers is not None:
            message_id = response.headers.get("X-Message-Id", "") or ""
        return SendResult(provider_message_id=message_id or f"sendgrid-{message.nudge_id}", status="sent")


def _retry_after(headers: object) -> float | None:
    if headers is None or not hasattr(headers, "get"):
        return None
    value = retry_after_seconds(headers.get("Retry-After"))
    if value is not None:
        return value
    reset = headers.get("X-RateLimit-Reset")
    try:
        return max(0.0, float(reset) - time.time()) if reset else None
    except ValueError:
        return None
