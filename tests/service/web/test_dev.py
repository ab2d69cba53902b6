from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import ConsentState, InboundMessage, OutboxMessage
from service.providers import OutboundSms
from service.runtime import Runtime
from tests.factories import make_couple


def _csrf(client: FlaskClient) -> str:
    page = client.get("/dev/outbox").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match
    return match.group(1)


def test_console_sms_lands_in_the_outbox(client: FlaskClient, runtime: Runtime, db: Session) -> None:
    runtime.providers.sms.send_sms(OutboundSms(to="+14155550123", body="Hello from the console"))
    assert db.scalar(select(OutboxMessage).where(OutboxMessage.recipient == "+14155550123")) is not None
    page = client.get("/dev/outbox").get_data(as_text=True)
    assert "Hello from the console" in page


def test_simulated_reply_goes_through_the_webhook_path(client: FlaskClient, db: Session) -> None:
    couple = make_couple(db, confirmed=False)
    db.commit()
    phone = couple.partners[0].phone_e164
    response = client.post("/dev/outbox/reply", data={"csrf_token": _csrf(client), "from": phone, "body": "yes"})
    assert response.status_code == 303
    db.expire_all()
    assert couple.partners[0].sms_consent == ConsentState.CONFIRMED
    assert db.scalar(select(InboundMessage).where(InboundMessage.keyword == "YES")) is not None


def test_simulated_reply_needs_csrf(client: FlaskClient) -> None:
    response = client.post("/dev/outbox/reply", data={"from": "+14155550123", "body": "yes"})
    assert response.status_code == 400
