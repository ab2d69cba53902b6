"""POST /webhooks/twilio/status: signed, stored once, and a nudge only ever moves forward."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from service.models import Channel, ConsentRecord, ConsentState, DeliveryEvent, Nudge, NudgeKind, NudgeStatus
from service.runtime import Runtime
from service.settings import Settings
from tests.factories import make_couple, make_sent_prompt
from tests.support.metrics import counted

PATH = "/webhooks/twilio/status"


def post_signed(client: FlaskClient, settings: Settings, params: dict[str, str], *, query: str = "",
                signed_url: str | None = None) -> int:
    url = settings.public_base_url + PATH + (f"?{query}" if query else "")
    signature = RequestValidator(settings.twilio_auth_token).compute_signature(signed_url or url, params)
    response = client.post(PATH + (f"?{query}" if query else ""), data=params,
                           headers={"X-Twilio-Signature": signature})
    return response.status_code


def callback(nudge: Nudge, status: str, **extra: str) -> dict[str, str]:
    return {"MessageSid": nudge.provider_message_id or "", "MessageStatus": status,
            "AccountSid": "AC" + "1" * 32, "To": "+14155550123", **extra}


def events(db: Session) -> int:
    return db.scalar(select(func.count(DeliveryEvent.id))) or 0


def test_delivered_is_recorded_once(client: FlaskClient, db: Session, settings: Settings) -> None:
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    params = callback(nudge, "delivered")
    assert post_signed(client, settings, params, query=f"nudge={nudge.id}") == 204
    assert post_signed(client, settings, params, query=f"nudge={nudge.id}") == 204, "Twilio retries: same answer"
    db.refresh(nudge)
    assert nudge.status == NudgeStatus.DELIVERED and nudge.delivered_at is not None
    assert events(db) == 1


def test_a_delivery_is_counted_once_for_metrics(client: FlaskClient, db: Session, settings: Settings,
                                                runtime: Runtime) -> None:
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    before = counted(runtime, "nudges", "delivered", "sms", "prompt")
    for _ in range(2):
        assert post_signed(client, settings, callback(nudge, "delivered")) == 204
    assert post_signed(client, settings, callback(nudge, "sent")) == 204, "late: moves nothing, counts nothing"
    assert counted(runtime, "nudges", "delivered", "sms", "prompt") == before + 1


def test_a_late_or_repeated_callback_never_moves_a_nudge_backwards(
    client: FlaskClient, db: Session, settings: Settings
) -> None:
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    for status in ("delivered", "sent", "queued", "sending"):
        assert post_signed(client, settings, callback(nudge, status)) == 204
    db.refresh(nudge)
    assert nudge.status == NudgeStatus.DELIVERED
    assert events(db) == 4, "each callback is kept, even when it changes nothing"


@pytest.mark.parametrize("code", ["30003", "30004", "30005", "30006", "30007", "30008"])
def test_carrier_errors_end_the_nudge_undelivered_with_the_code(
    client: FlaskClient, db: Session, settings: Settings, code: str
) -> None:
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    assert post_signed(client, settings, callback(nudge, "undelivered", ErrorCode=code)) == 204
    db.refresh(nudge)
    assert nudge.status == NudgeStatus.UNDELIVERED and nudge.error_code == code
    assert nudge.status_reason is not None and code in nudge.status_reason
    assert db.scalar(select(DeliveryEvent.error_code)) == code


def test_a_failure_because_the_number_opted_out_stops_texts_to_it(
    client: FlaskClient, db: Session, settings: Settings
) -> None:
    """With a Messaging Service, Twilio accepts the send and reports 21610 (the number texted STOP) later."""
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    assert post_signed(client, settings, callback(nudge, "failed", ErrorCode="21610")) == 204
    db.refresh(nudge)
    db.refresh(nudge.partner)
    assert (nudge.status, nudge.error_code) == (NudgeStatus.FAILED, "21610")
    assert nudge.partner.consent(Channel.SMS) is ConsentState.OPTED_OUT
    assert nudge.partner.consent(Channel.EMAIL) is ConsentState.CONFIRMED
    record = db.scalars(select(ConsentRecord).order_by(ConsentRecord.id.desc())).first()
    assert record is not None and (record.source, record.source_detail) == ("provider", "twilio 21610")


def test_failed_after_delivered_changes_nothing(client: FlaskClient, db: Session, settings: Settings) -> None:
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    post_signed(client, settings, callback(nudge, "failed", ErrorCode="30008"))
    post_signed(client, settings, callback(nudge, "delivered"))
    db.refresh(nudge)
    assert nudge.status == NudgeStatus.FAILED, "the first final word stands"


def test_a_callback_settles_a_nudge_whose_worker_died_mid_send(
    client: FlaskClient, db: Session, settings: Settings
) -> None:
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    sid = nudge.provider_message_id or ""
    nudge.status, nudge.provider_message_id, nudge.needs_review = NudgeStatus.SENDING, None, True
    db.flush()
    params = {"MessageSid": sid, "MessageStatus": "sent", "AccountSid": "AC" + "1" * 32}
    assert post_signed(client, settings, params, query=f"nudge={nudge.id}") == 204
    db.refresh(nudge)
    assert (nudge.status, nudge.provider_message_id, nudge.needs_review) == (NudgeStatus.SENT, sid, False)


def test_another_message_for_a_nudge_with_a_sid_changes_nothing(
    client: FlaskClient, db: Session, settings: Settings
) -> None:
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    stranger = {"MessageSid": "SM" + secrets.token_hex(16), "MessageStatus": "failed", "ErrorCode": "30003"}
    assert post_signed(client, settings, stranger, query=f"nudge={nudge.id}") == 204
    db.refresh(nudge)
    assert nudge.status == NudgeStatus.SENT
    assert db.scalar(select(DeliveryEvent.nudge_id)) is None


@pytest.mark.parametrize("tamper", ["unsigned", "forged", "other-url", "altered-field", "dropped-query"])
def test_an_unauthenticated_callback_is_403_and_changes_nothing(
    client: FlaskClient, db: Session, settings: Settings, tamper: str
) -> None:
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    params = callback(nudge, "failed", ErrorCode="30003")
    query = f"nudge={nudge.id}"
    url = settings.public_base_url + PATH + "?" + query
    validator = RequestValidator(settings.twilio_auth_token)
    signature = {
        "unsigned": "",
        "forged": RequestValidator("not-the-token").compute_signature(url, params),
        "other-url": validator.compute_signature("https://attacker.example" + PATH + "?" + query, params),
        "altered-field": validator.compute_signature(url, {**params, "MessageStatus": "delivered"}),
        "dropped-query": validator.compute_signature(settings.public_base_url + PATH, params),
    }[tamper]
    response = client.post(PATH + "?" + query, data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 403
    db.refresh(nudge)
    assert nudge.status == NudgeStatus.SENT and events(db) == 0


@pytest.mark.parametrize(("params", "query"), [
    ({"MessageStatus": "delivered"}, ""),
    ({"MessageSid": "SM123", "MessageStatus": "delivered"}, ""),
    ({"MessageSid": "SM" + "a" * 32, "MessageStatus": "exploded"}, ""),
    ({"MessageSid": "SM" + "a" * 32, "MessageStatus": "failed", "ErrorCode": "30003; drop"}, ""),
    ({"MessageSid": "SM" + "a" * 32, "MessageStatus": "sent"}, "nudge=abc"),
])
def test_malformed_callbacks_are_400(client: FlaskClient, db: Session, settings: Settings,
                                      params: dict[str, str], query: str) -> None:
    assert post_signed(client, settings, params, query=query) == 400
    assert events(db) == 0


def test_a_callback_for_an_unknown_message_is_kept_and_accepted(
    client: FlaskClient, db: Session, settings: Settings
) -> None:
    params = {"MessageSid": "SM" + secrets.token_hex(16), "MessageStatus": "delivered"}
    assert post_signed(client, settings, params) == 204
    assert events(db) == 1


def test_a_scheduled_retry_that_twilio_did_send_is_settled_not_resent(
    client: FlaskClient, db: Session, settings: Settings
) -> None:
    """A 5xx made us schedule a retry, yet Twilio had accepted the message: its callback wins."""
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    sid = nudge.provider_message_id or ""
    nudge.status, nudge.provider_message_id = NudgeStatus.SCHEDULED, None
    nudge.scheduled_for = datetime.now(UTC)
    db.flush()
    params = {"MessageSid": sid, "MessageStatus": "delivered"}
    assert post_signed(client, settings, params, query=f"nudge={nudge.id}") == 204
    db.refresh(nudge)
    assert nudge.status == NudgeStatus.DELIVERED and nudge.kind == NudgeKind.PROMPT


@pytest.mark.parametrize("hint", ["2147483648", "999999999999999999"])
def test_a_nudge_id_beyond_the_column_is_no_such_nudge(client: FlaskClient, db: Session, settings: Settings,
                                                      hint: str) -> None:
    """A signed callback whose nudge id no integer column can hold names no nudge: never a 500."""
    params = {"MessageSid": "SM" + secrets.token_hex(16), "MessageStatus": "delivered",
              "AccountSid": "AC" + "1" * 32, "To": "+14155550123"}
    assert post_signed(client, settings, params, query=f"nudge={hint}") == 204
    stored = db.scalars(select(DeliveryEvent)).one()
    assert stored.nudge_id is None
