"""Every Twilio webhook (inbound texts, status callbacks) passes the one signature check, refusing alike."""

from __future__ import annotations

import logging
import secrets

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from service.models import DeliveryEvent, InboundMessage
from service.runtime import Runtime
from tests.factories import make_couple

SMS, STATUS = "/webhooks/twilio/sms", "/webhooks/twilio/status"
SHARED_KEY = {"X-Twilio-Webhooks-Signature-Settings": "key=k1,algorithm=HMAC_SHA256"}


def _params(db: Session, path: str) -> dict[str, str]:
    sid = "SM" + secrets.token_hex(16)
    if path == SMS:
        phone = make_couple(db).partners[0].phone_e164 or ""
        return {"MessageSid": sid, "AccountSid": "AC" + "0" * 32, "From": phone, "To": "+15005550006",
                "Body": "my answer", "NumMedia": "0"}
    return {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": "AC" + "0" * 32}


def _signed(runtime: Runtime, path: str, params: dict[str, str]) -> str:
    url = runtime.settings.public_base_url + path
    return str(RequestValidator(runtime.settings.twilio_auth_token).compute_signature(url, params))


def _stored(db: Session) -> int:
    return (db.scalar(select(func.count(InboundMessage.id))) or 0) + (db.scalar(select(func.count(DeliveryEvent.id)))
                                                                       or 0)


@pytest.mark.parametrize("path", [SMS, STATUS])
def test_a_shared_key_signature_is_refused_and_the_operator_told_why(
    client: FlaskClient, db: Session, runtime: Runtime, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """A Webhook Rule signs with a SharedKey Closer is not given: even with a valid Auth Token signature
    beside it, the request is refused, and the log says how to fix the webhook's configuration."""
    params = _params(db, path)
    with caplog.at_level(logging.WARNING):
        response = client.post(path, data=params,
                               headers={"X-Twilio-Signature": _signed(runtime, path, params), **SHARED_KEY})
    assert response.status_code == 403
    assert _stored(db) == 0
    assert any("SharedKey" in record.getMessage() and getattr(record, "path", None) == path
               for record in caplog.records), "the warning names the cause"


@pytest.mark.parametrize("path", [SMS, STATUS])
@pytest.mark.parametrize("case", ["unsigned", "forged", "no-auth-token"])
def test_a_request_without_a_good_signature_is_refused_and_logged(
    client: FlaskClient, db: Session, runtime: Runtime, caplog: pytest.LogCaptureFixture, path: str, case: str
) -> None:
    params = _params(db, path)
    signature = {"unsigned": "", "no-auth-token": _signed(runtime, path, params),
                 "forged": str(RequestValidator("not-the-token").compute_signature(
                     runtime.settings.public_base_url + path, params))}[case]
    original = runtime.settings
    if case == "no-auth-token":
        runtime.settings = original.with_overrides(twilio_auth_token="")
    try:
        with caplog.at_level(logging.WARNING):
            response = client.post(path, data=params, headers={"X-Twilio-Signature": signature} if signature else {})
    finally:
        runtime.settings = original
    assert response.status_code == 403
    assert _stored(db) == 0
    assert any("signature" in record.getMessage() and getattr(record, "path", None) == path
               for record in caplog.records), "the refusal is logged with its path"


@pytest.mark.parametrize("path", [SMS, STATUS])
def test_a_good_signature_passes(client: FlaskClient, db: Session, runtime: Runtime, path: str) -> None:
    params = _params(db, path)
    response = client.post(path, data=params, headers={"X-Twilio-Signature": _signed(runtime, path, params)})
    assert response.status_code in (200, 204)
    assert _stored(db) == 1
