"""Email through SendGrid's official SDK."""

from __future__ import annotations

import socket
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

from service.providers.base import OutboundEmail, ProviderError, SendResult, retry_after_seconds
from service.providers.twilio_sms import OutcomeUnknown


class SendGridEmail:
    name = "sendgrid"

    def __init__(self, api_key: str, from_email: str, *, from_name: str = "", api_host: str = "") -> None:
        if not from_email:
            raise ValueError("SendGrid needs SENDGRID_FROM_EMAIL")
        self._client = SendGridAPIClient(api_key=api_key, host=api_host.rstrip("/") or "https://api.sendgrid.com")
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
            mail.add_custom_arg(CustomArg(name, value))
        return mail

    def send_email(self, message: OutboundEmail) -> SendResult:
        try:
            response = self._client.send(self.build(message))
        except HTTPError as exc:
            status = int(getattr(exc, "status_code", 0) or 0)
            headers = getattr(exc, "headers", None) or {}
            retry_after = retry_after_seconds(headers.get("Retry-After") if hasattr(headers, "get") else None)
            raise ProviderError(
                f"sendgrid answered {status}", code=str(status), retryable=status == 429 or status >= 500,
                retry_after=retry_after,
            ) from exc
        except TimeoutError as exc:
            raise OutcomeUnknown("sendgrid did not answer in time") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError | socket.timeout):
                raise OutcomeUnknown("sendgrid did not answer in time") from exc
            raise ProviderError("sendgrid could not be reached", code="connection", retryable=True) from exc
        message_id = ""
        if response.headers is not None:
            message_id = response.headers.get("X-Message-Id", "") or ""
        return SendResult(provider_message_id=message_id or f"sendgrid-{message.nudge_id}", status="sent")
