"""SMS through Twilio's official SDK, one keep-alive HTTP client per sending thread."""

from __future__ import annotations

import threading

import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from service.providers.base import OutboundSms, ProviderError, SendResult, retry_after_seconds

# Twilio codes that mean the number will never take this message: the nudge fails, and is not retried.
OPTED_OUT_CODE = "21610"
INVALID_NUMBER_CODES = frozenset({"21211", "21614"})


class OutcomeUnknown(ProviderError):
    """The request may have reached the provider: resending could deliver the message twice."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="outcome_unknown", retryable=False)


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
            http_client = TwilioHttpClient(pool_connections=True, timeout=self._timeout)
            client = Client(self._account_sid, self._auth_token, http_client=http_client)
            if self._api_base_url:
                client.api.base_url = self._api_base_url
            self._local.client = client
        return client

    def send_sms(self, message: OutboundSms) -> SendResult:
        client = self._client()
        kwargs: dict[str, str] = {"to": message.to, "body": message.body}
        if self._messaging_service_sid:
            kwargs["messaging_service_sid"] = self._messaging_service_sid
        else:
            kwargs["from_"] = self._from_number
        if message.status_callback:
            kwargs["status_callback"] = message.status_callback
        try:
            created = client.messages.create(**kwargs)
        except TwilioRestException as exc:
            status = int(exc.status or 0)
            retryable = status == 429 or status >= 500
            last = client.http_client.last_response
            retry_after = retry_after_seconds(last.headers.get("Retry-After")) if last is not None else None
            code = str(exc.code) if exc.code else str(status)
            raise ProviderError(
                f"twilio answered {status}", code=code, retryable=retryable, retry_after=retry_after
            ) from exc
        except requests.exceptions.ConnectTimeout as exc:
            raise ProviderError("twilio did not accept the connection", code="timeout", retryable=True) from exc
        except requests.exceptions.ReadTimeout as exc:
            raise OutcomeUnknown("twilio did not answer in time") from exc
        except requests.exceptions.ConnectionError as exc:
            raise ProviderError("twilio could not be reached", code="connection", retryable=True) from exc
        return SendResult(provider_message_id=str(created.sid), status=str(created.status or "queued"))
