"""SMS through Twilio's official SDK: the SDK builds each request and parses each answer; a keep-alive
transport (`service.providers.keep_alive`, through the SDK's custom `HttpClient` hook) carries them, one
connection per sending thread.

Every Twilio fact Closer relies on lives in this module; the domain only sees `SendFailure` meanings.
What a failure means decides whether a nudge may be sent again:
- Twilio answered with an error: 429 (`rate_limited`) and 5xx (`temporary`) are retried, other 4xx end
  the nudge: 21610 is `opted_out` (the number replied STOP to Twilio itself), 21211 and 21614 are
  `invalid_address` (not a valid mobile number), anything else `rejected`.
- The request never went out whole (no connection, or it broke while writing): `temporary`, retried.
- The request went out and no answer came back (read timeout, connection dropped): Twilio may have
  sent it. That is `OutcomeUnknown`, and the nudge goes to operator review instead of being resent.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit

from twilio.base.exceptions import TwilioRestException
from twilio.http import HttpClient
from twilio.http.response import Response
from twilio.request_validator import SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER, RequestValidator
from twilio.rest import Client

from service.models import Channel
from service.providers.base import (
    DeliveryReport,
    DeliveryStatus,
    OutboundSms,
    OutcomeUnknown,
    ProviderError,
    SendFailure,
    SendResult,
    retry_after_seconds,
)
from service.providers.keep_alive import KeepAlive, NoAnswer, NotSent

__all__ = [
    "SIGNATURE_HEADER",
    "SIGNATURE_SETTINGS_HEADER",
    "STATUSES",
    "TWILIO",
    "OutcomeUnknown",
    "TwilioSms",
    "explain",
    "request_validator",
    "send_failure",
    "status_report",
]

TWILIO = "twilio"  # the provider's name in our records (nudges, inbound messages, delivery events, consent)
STATUS_CALLBACK_PATH = "/webhooks/twilio/status"  # service/web/webhooks/twilio_status.py listens there
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
# Twilio error codes whose meaning is not the default (`rejected`, or the HTTP status's when sending).
CODE_FAILURES: dict[str, SendFailure] = {
    "21610": SendFailure.OPTED_OUT,  # the recipient texted STOP to our number
    "21211": SendFailure.INVALID_ADDRESS,  # not a valid phone number
    "21614": SendFailure.INVALID_ADDRESS,  # not a mobile number
    "30003": SendFailure.UNREACHABLE,  # the handset is switched off or out of coverage
    "30005": SendFailure.INVALID_ADDRESS,  # unknown handset
    "30006": SendFailure.INVALID_ADDRESS,  # a landline, or a carrier that cannot take texts
}
# A status callback's MessageStatus, and where the message got to.
STATUSES: dict[str, DeliveryStatus] = {
    "accepted": DeliveryStatus.SENT,
    "scheduled": DeliveryStatus.SENT,
    "queued": DeliveryStatus.SENT,
    "sending": DeliveryStatus.SENT,
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.DELIVERED,
    "undelivered": DeliveryStatus.UNDELIVERED,
    "failed": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.CANCELLED,
}
# The carrier's error codes a status callback carries, as a nudge's status reason gives them.
CARRIER_REASONS: dict[str, str] = {
    "30003": "unreachable destination handset",
    "30004": "message blocked",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "filtered by the carrier",
    "30008": "unknown delivery error",
}

_sdk_log = logging.getLogger("service.providers.twilio.http")


class _SdkTransport(HttpClient):
    """The SDK's HTTP client interface over keep-alive connections; one per sending thread."""

    def __init__(self, transports: dict[str, KeepAlive], lock: threading.Lock, timeout: float) -> None:
        super().__init__(_sdk_log, False, timeout)
        self._transports, self._lock = transports, lock
        self.last_headers: dict[str, str] = {}

    def _transport(self, origin: str) -> KeepAlive:
        with self._lock:
            transport = self._transports.get(origin)
            if transport is None:
                transport = self._transports[origin] = KeepAlive(origin, self.timeout or 15.0)
            return transport

    def request(
        self, method: str, url: str, params: dict[str, object] | None = None, data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None, auth: tuple[str, str] | None = None, timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        parts = urlsplit(url)
        path = parts.path + ("?" + urlencode(params, doseq=True) if params else "")
        sent_headers = dict(headers or {})
        body = None
        if data is not None:
            if sent_headers.get("Content-Type") == "application/json":
                body = json.dumps(data).encode()
            else:
                body = urlencode(data, doseq=True).encode()
                sent_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if auth is not None:
            sent_headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        self.last_headers = {}
        answer = self._transport(f"{parts.scheme}://{parts.netloc}").request(method.upper(), path, body, sent_headers)
        self.last_headers = answer.headers
        return Response(answer.status, answer.body.decode("utf-8", "replace"), answer.headers)


# What Twilio's codes mean, in the operator's terms (the ops page's explanation of a nudge's error code).
ERROR_TEXTS: dict[str, str] = {
    "21211": "Twilio: the 'To' number is not a valid phone number.",
    "21214": "Twilio: the 'To' number cannot be reached (not a working number).",
    "21408": "Twilio: sending to this region is not enabled on the account.",
    "21610": "Twilio: the recipient texted STOP to our number; Twilio refuses until they text START.",
    "21614": "Twilio: the 'To' number is not a mobile number that can receive texts.",
    "20003": "Twilio: authentication failed; check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN.",
    "20429": "Twilio: too many requests; we are sending faster than the account allows.",
    "30001": "Twilio: queue overflow; too many messages queued for the sender.",
    "30002": "Twilio: the account is suspended.",
    "30003": "Carrier: the handset is unreachable (switched off or out of coverage).",
    "30004": "Carrier: message blocked (the recipient or their carrier blocks it).",
    "30005": "Carrier: unknown handset; the number may no longer exist.",
    "30006": "Carrier: landline or unreachable carrier; this number cannot receive texts.",
    "30007": "Carrier: message filtered as spam or as breaking carrier rules.",
    "30008": "Carrier: unknown error delivering the message.",
    "30034": "Carrier: the sender number is not registered for A2P 10DLC.",
}


def explain(code: str) -> str | None:
    """What a Twilio error code means to an operator (`code` stripped and lower-case); None if not Twilio's."""
    return ERROR_TEXTS.get(code)


def send_failure(status: int, code: str) -> SendFailure:
    """What an error answer to a send means: by HTTP status first (429, 5xx are retried), then by code."""
    if status == 429:
        return SendFailure.RATE_LIMITED
    if status >= 500:
        return SendFailure.TEMPORARY
    return CODE_FAILURES.get(code, SendFailure.REJECTED)


@functools.lru_cache(maxsize=4)
def request_validator(auth_token: str) -> RequestValidator:
    """The SDK's webhook signature check (X-Twilio-Signature, HMAC-SHA1 with the Auth Token). It only holds
    the token, so one per token is built once instead of on every request."""
    return RequestValidator(auth_token)


def status_report(*, message_sid: str, status: str, error_code: str | None, nudge_hint: int | None) -> DeliveryReport:
    """A status callback (authenticated, its fields checked; `status` one of STATUSES) in Closer's terms.

    Each (MessageSid, MessageStatus) is one report; the nudge id comes from our callback URL."""
    failure = CODE_FAILURES.get(error_code, SendFailure.REJECTED) if error_code else None
    reason = None
    if error_code:
        reason = f"carrier error {error_code}: {CARRIER_REASONS.get(error_code, 'see Twilio error codes')}"
    return DeliveryReport(
        provider=TWILIO, channel=Channel.SMS, event_id=f"{message_sid}:{status}", event=status,
        message_id=message_sid, sent_message_id=message_sid, nudge_id=nudge_hint, status=STATUSES.get(status),
        error_code=error_code, failure=failure, reason=reason, detail=f"{TWILIO} {error_code or status}",
    )


class TwilioSms:
    name = TWILIO

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str = "",
        messaging_service_sid: str = "",
        api_base_url: str = "",
        public_base_url: str = "",
        timeout: float = 15.0,
    ) -> None:
        if not (from_number or messaging_service_sid):
            raise ValueError("Twilio needs TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID")
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._from_number = from_number
        self._messaging_service_sid = messaging_service_sid
        self._api_base_url = api_base_url.rstrip("/")
        self._status_callback = public_base_url.rstrip("/") + STATUS_CALLBACK_PATH if public_base_url else ""
        self._timeout = timeout
        self._local = threading.local()
        self._transports: dict[str, KeepAlive] = {}
        self._transports_lock = threading.Lock()

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            http_client = _SdkTransport(self._transports, self._transports_lock, self._timeout)
            client = Client(self._account_sid, self._auth_token, http_client=http_client)
            if self._api_base_url:
                client.api.base_url = self._api_base_url
            self._local.client = client
        return client

    def status_callback_url(self, nudge_id: int | None) -> str | None:
        """Where Twilio reports a message's status (None without PUBLIC_BASE_URL). The nudge id rides along
        (signed by Twilio with the rest of the URL), so a callback can settle a nudge whose worker died
        before it stored the MessageSid."""
        if not self._status_callback:
            return None
        return self._status_callback if nudge_id is None else f"{self._status_callback}?nudge={nudge_id}"

    def request_params(self, message: OutboundSms) -> dict[str, str]:
        """The SDK's keyword arguments for one message: a Messaging Service wins over a bare number."""
        params: dict[str, str] = {"to": message.to, "body": message.body}
        if self._messaging_service_sid:
            params["messaging_service_sid"] = self._messaging_service_sid
        else:
            params["from_"] = self._from_number
        status_callback = message.status_callback or self.status_callback_url(message.nudge_id)
        if status_callback:
            params["status_callback"] = status_callback
        return params

    def send_sms(self, message: OutboundSms) -> SendResult:
        if not E164.match(message.to):
            raise ProviderError("not an E.164 number", provider=TWILIO, code="21211",
                                failure=SendFailure.INVALID_ADDRESS)
        client = self._client()
        try:
            created = client.messages.create(**self.request_params(message))
        except TwilioRestException as exc:
            status = int(exc.status or 0)
            code = str(exc.code) if exc.code else str(status)
            http_client = client.http_client
            headers = http_client.last_headers if isinstance(http_client, _SdkTransport) else {}
            raise ProviderError(
                f"twilio answered {status}", provider=TWILIO, code=code, failure=send_failure(status, code),
                retry_after=retry_after_seconds(_header(headers, "Retry-After")),
            ) from exc
        except NotSent as exc:
            raise ProviderError("twilio could not be reached", provider=TWILIO, code="connection",
                                failure=SendFailure.TEMPORARY) from exc
        except NoAnswer as exc:
            raise OutcomeUnknown("twilio did not answer after the request was sent", provider=TWILIO) from exc
        return SendResult(provider_message_id=str(created.sid), status=str(created.status or "queued"))


def _header(headers: dict[str, Any], name: str) -> str | None:
    lowered = name.lower()
    return next((str(v) for k, v in headers.items() if k.lower() == lowered), None)
