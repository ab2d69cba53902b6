"""SMS through Twilio's official SDK, one keep-alive HTTP client per sending thread.

What a failure means decides whether a nudge may be sent again:
- Twilio answered with an error: 429 and 5xx are retried, other 4xx end the nudge (21610 = the number
  replied STOP to Twilio itself; 21211 and 21614 = not a valid mobile number).
- The connection was never made (refused, DNS, connect timeout): nothing was sent, retry.
- The request went out and no answer came back (read timeout, connection dropped): Twilio may have
  sent it. That is `OutcomeUnknown`, and the nudge goes to operator review instead of being resent.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from service.providers.base import (
    OutboundSms,
    OutcomeUnknown,
    ProviderError,
    SendResult,
    retry_after_seconds,
)

__all__ = ["INVALID_NUMBER_CODES", "OPTED_OUT_CODE", "OutcomeUnknown", "TwilioSms"]

OPTED_OUT_CODE = "21610"
INVALID_NUMBER_CODES = frozenset({"21211", "21614"})
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
# Idle keep-alive connections get closed by the far end; reusing one then fails in a way that looks
# like "the request may have gone out". Dropping connections idle this long avoids that ambiguity.
MAX_IDLE_SECONDS = 20.0

# The SDK logs every request's URL and headers at INFO; at our volume that is noise, not signal.
_sdk_log = logging.getLogger("service.providers.twilio.http")
_sdk_log.setLevel(logging.WARNING)


class _HttpClient(TwilioHttpClient):
    """The SDK's client, remembering the last response's headers (for Retry-After) on this thread."""

    def __init__(self, timeout: float) -> None:
        super().__init__(pool_connections=True, timeout=timeout, logger=_sdk_log)
        assert self.session is not None
        # One connection per thread is all a thread uses; the SDK only sizes the https:// pool.
        self.session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1))
        self.last_headers: dict[str, str] = {}
        self.last_used = time.monotonic()

    def request(self, *args: Any, **kwargs: Any) -> Response:
        if time.monotonic() - self.last_used > MAX_IDLE_SECONDS and self.session is not None:
            self.session.close()
        self.last_headers = {}
        try:
            response = super().request(*args, **kwargs)
        finally:
            self.last_used = time.monotonic()
        self.last_headers = dict(response.headers or {})
        return response


class TwilioSms:
    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str = "",
        messaging_service_sid: str = "",
        api_base_url: str = "",
        timeout: float = 15.0,
    ) -> None:
        if not (from_number or messaging_service_sid):
            raise ValueError("Twilio needs TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID")
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._from_number = from_number
        self._messaging_service_sid = messaging_service_sid
        self._api_base_url = api_base_url.rstrip("/")
        self._timeout = timeout
        self._local = threading.local()

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = Client(self._account_sid, self._auth_token, http_client=_HttpClient(self._timeout))
            if self._api_base_url:
                client.api.base_url = self._api_base_url
            self._local.client = client
        return client

    def request_params(self, message: OutboundSms) -> dict[str, str]:
        """The SDK's keyword arguments for one message: a Messaging Service wins over a bare number."""
        params: dict[str, str] = {"to": message.to, "body": message.body}
        if self._messaging_service_sid:
            params["messaging_service_sid"] = self._messaging_service_sid
        else:
            params["from_"] = self._from_number
        if message.status_callback:
            params["status_callback"] = message.status_callback
        return params

    def send_sms(self, message: OutboundSms) -> SendResult:
        if not E164.match(message.to):
            raise ProviderError("not an E.164 number", code="21211", retryable=False)
        client = self._client()
        try:
            created = client.messages.create(**self.request_params(message))
        except TwilioRestException as exc:
            status = int(exc.status or 0)
            http_client = client.http_client
            headers = http_client.last_headers if isinstance(http_client, _HttpClient) else {}
            raise ProviderError(
                f"twilio answered {status}",
                code=str(exc.code) if exc.code else str(status),
                retryable=status == 429 or status >= 500,
                retry_after=retry_after_seconds(_header(headers, "Retry-After")),
            ) from exc
        except requests.exceptions.ConnectTimeout as exc:
            raise ProviderError("twilio did not accept the connection", code="timeout", retryable=True) from exc
        except requests.exceptions.ReadTimeout as exc:
            raise OutcomeUnknown("twilio did not answer in time") from exc
        except requests.exceptions.ConnectionError as exc:
            if _never_connected(exc):
                raise ProviderError("twilio could not be reached", code="connection", retryable=True) from exc
            raise OutcomeUnknown("the connection to twilio dropped before it answered") from exc
        return SendResult(provider_message_id=str(created.sid), status=str(created.status or "queued"))


def _header(headers: dict[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def _never_connected(exc: BaseException) -> bool:
    """True when the failure happened before a byte of the request could have been sent."""
    from urllib3.exceptions import NameResolutionError, NewConnectionError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NewConnectionError | NameResolutionError | ConnectionRefusedError):
            return True
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException) and id(reason) not in seen:
            current = reason
            continue
        args = getattr(current, "args", ())
        nested = next((a for a in args if isinstance(a, BaseException) and id(a) not in seen), None)
        current = nested or current.__cause__ or current.__context__
    return False
