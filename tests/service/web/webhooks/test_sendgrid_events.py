"""POST /webhooks/sendgrid/events: ECDSA-signed, deduplicated on sg_event_id, moves nudges forward only,
and bounce, dropped, spamreport and unsubscribe stop email to that partner (and only that partner)."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Channel, ConsentRecord, ConsentState, DeliveryEvent, Nudge, NudgeStatus, Partner
from service.runtime import Runtime
from tests.factories import make_couple, make_sent_prompt
from tests.support.metrics import counted

PATH = "/webhooks/sendgrid/events"


@pytest.fixture(scope="module")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture()
def verifying(runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey) -> Iterator[None]:
    """The app holds the public half, as SENDGRID_EVENT_PUBLIC_KEY would give it."""
    der = signing_key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    original = runtime.settings
    runtime.settings = original.with_overrides(sendgrid_event_public_key=base64.b64encode(der).decode())
    yield
    runtime.settings = original


def post_signed(client: FlaskClient, key: ec.EllipticCurvePrivateKey, events: list[dict[str, Any]] | str,
                *, timestamp: str | None = None) -> int:
    body = events if isinstance(events, str) else json.dumps(events)
    stamp = timestamp or str(int(time.time()))
    signature = base64.b64encode(key.sign((stamp + body).encode(), ec.ECDSA(hashes.SHA256()))).decode()
    response = client.post(PATH, data=body, content_type="application/json", headers={
        "X-Twilio-Email-Event-Webhook-Signature": signature, "X-Twilio-Email-Event-Webhook-Timestamp": stamp})
    return response.status_code


def event(nudge: Nudge, kind: str, **extra: Any) -> dict[str, Any]:
    return {"email": nudge.partner.email, "timestamp": int(time.time()), "event": kind,
            "sg_event_id": secrets.token_urlsafe(16), "sg_message_id": f"{nudge.provider_message_id}.filter0001",
            "nudge_id": str(nudge.id), **extra}


def email_prompt(db: Session) -> Nudge:
    couple = make_couple(db)
    return make_sent_prompt(db, couple.partners[0], channel=Channel.EMAIL)


def test_delivered_is_recorded_once(client: FlaskClient, db: Session, signing_key: ec.EllipticCurvePrivateKey,
                                    verifying: None) -> None:
    nudge = email_prompt(db)
    delivered = event(nudge, "delivered")
    assert post_signed(client, signing_key, [event(nudge, "processed"), delivered]) == 204
    assert post_signed(client, signing_key, [delivered]) == 204, "a retried batch changes nothing"
    db.refresh(nudge)
    assert nudge.status == NudgeStatus.DELIVERED
    assert db.scalar(select(func.count(DeliveryEvent.id))) == 2


def test_a_bounce_is_counted_once_for_metrics(client: FlaskClient, db: Session, runtime: Runtime,
                                              signing_key: ec.EllipticCurvePrivateKey, verifying: None) -> None:
    nudge = email_prompt(db)
    before = counted(runtime, "nudges", "undelivered", "email", "prompt")
    bounce = event(nudge, "bounce")
    assert post_signed(client, signing_key, [bounce]) == 204
    assert post_signed(client, signing_key, [bounce]) == 204
    assert counted(runtime, "nudges", "undelivered", "email", "prompt") == before + 1


@pytest.mark.parametrize(("kind", "state", "status"), [
    ("bounce", ConsentState.BOUNCED, NudgeStatus.UNDELIVERED),
    ("dropped", ConsentState.BOUNCED, NudgeStatus.FAILED),
    ("spamreport", ConsentState.OPTED_OUT, NudgeStatus.SENT),
    ("unsubscribe", ConsentState.OPTED_OUT, NudgeStatus.SENT),
])
def test_suppressions_stop_email_to_that_partner_only(
    client: FlaskClient, db: Session, signing_key: ec.EllipticCurvePrivateKey, verifying: None,
    kind: str, state: ConsentState, status: NudgeStatus,
) -> None:
    nudge = email_prompt(db)
    me, other = nudge.partner, next(p for p in nudge.partner.couple.partners if p.id != nudge.partner_id)
    waiting = Nudge(enrollment=nudge.enrollment, partner=me, kind=nudge.kind, step_day=2, channel=Channel.EMAIL,
                    status=NudgeStatus.QUEUED, scheduled_for=nudge.scheduled_for)
    db.add(waiting)
    db.flush()
    suppression = event(nudge, kind, reason="550 5.1.1 no such user", status="5.1.1")
    assert post_signed(client, signing_key, [suppression]) == 204
    db.refresh(me)
    db.refresh(other)
    db.refresh(nudge)
    db.refresh(waiting)
    assert me.consent(Channel.EMAIL) is state
    assert other.consent(Channel.EMAIL) is ConsentState.CONFIRMED, "one partner's bounce never silences the other"
    assert me.consent(Channel.SMS) is ConsentState.CONFIRMED
    assert waiting.status == NudgeStatus.CANCELLED
    assert nudge.status == status
    record = db.scalars(select(ConsentRecord).where(ConsentRecord.partner_id == me.id)
                        .order_by(ConsentRecord.id.desc())).first()
    assert record is not None and record.source == "provider" and record.source_detail == f"sendgrid {kind}"


def test_a_blocked_bounce_does_not_suppress_the_address(
    client: FlaskClient, db: Session, signing_key: ec.EllipticCurvePrivateKey, verifying: None
) -> None:
    nudge = email_prompt(db)
    assert post_signed(client, signing_key, [event(nudge, "bounce", type="blocked", status="4.7.1")]) == 204
    db.refresh(nudge.partner)
    assert nudge.partner.consent(Channel.EMAIL) is ConsentState.CONFIRMED


def test_an_unsubscribe_without_our_nudge_id_still_finds_the_partner_by_email(
    client: FlaskClient, db: Session, signing_key: ec.EllipticCurvePrivateKey, verifying: None
) -> None:
    nudge = email_prompt(db)
    unsubscribe = {**event(nudge, "unsubscribe")}
    del unsubscribe["nudge_id"]
    assert post_signed(client, signing_key, [unsubscribe]) == 204
    db.refresh(nudge.partner)
    assert nudge.partner.consent(Channel.EMAIL) is ConsentState.OPTED_OUT


@pytest.mark.parametrize("tamper", ["unsigned", "wrong-key", "altered-body", "other-timestamp"])
def test_an_unauthenticated_batch_is_403_and_changes_nothing(
    client: FlaskClient, db: Session, signing_key: ec.EllipticCurvePrivateKey, verifying: None, tamper: str
) -> None:
    nudge = email_prompt(db)
    body = json.dumps([event(nudge, "unsubscribe")])
    stamp = str(int(time.time()))
    key = ec.generate_private_key(ec.SECP256R1()) if tamper == "wrong-key" else signing_key
    signature = base64.b64encode(key.sign((stamp + body).encode(), ec.ECDSA(hashes.SHA256()))).decode()
    headers = {"X-Twilio-Email-Event-Webhook-Signature": signature,
               "X-Twilio-Email-Event-Webhook-Timestamp": stamp}
    if tamper == "unsigned":
        headers = {}
    if tamper == "altered-body":
        body = body.replace("unsubscribe", "delivered")
    if tamper == "other-timestamp":
        headers["X-Twilio-Email-Event-Webhook-Timestamp"] = str(int(stamp) + 1)
    response = client.post(PATH, data=body, content_type="application/json", headers=headers)
    assert response.status_code == 403
    db.refresh(nudge.partner)
    assert nudge.partner.consent(Channel.EMAIL) is ConsentState.CONFIRMED
    assert db.scalar(select(func.count(DeliveryEvent.id))) == 0


def test_without_a_configured_key_every_batch_is_refused(
    client: FlaskClient, db: Session, signing_key: ec.EllipticCurvePrivateKey
) -> None:
    nudge = email_prompt(db)
    assert post_signed(client, signing_key, [event(nudge, "unsubscribe")]) == 403


@pytest.mark.parametrize("body", ["not json", '{"event": "delivered"}', "[1, 2]",
                                  '[{"event": "delivered"}]', '[{"sg_event_id": "x"}]'])
def test_malformed_batches_are_400(client: FlaskClient, db: Session, signing_key: ec.EllipticCurvePrivateKey,
                                   verifying: None, body: str) -> None:
    assert post_signed(client, signing_key, body) == 400
    assert db.scalar(select(func.count(DeliveryEvent.id))) == 0


def test_an_event_naming_an_sms_nudge_moves_nothing(
    client: FlaskClient, db: Session, signing_key: ec.EllipticCurvePrivateKey, verifying: None
) -> None:
    couple = make_couple(db)
    sms = make_sent_prompt(db, couple.partners[0], channel=Channel.SMS)
    assert post_signed(client, signing_key, [event(sms, "dropped")]) == 204
    db.refresh(sms)
    assert sms.status == NudgeStatus.SENT
    partner = db.get(Partner, sms.partner_id)
    assert partner is not None and partner.consent(Channel.EMAIL) is ConsentState.BOUNCED, (
        "the address SendGrid named is still suppressed")


@pytest.mark.parametrize("bad", [
    {"nudge_id": "999999999999999999"},
    {"nudge_id": "2147483648"},
    {"sg_message_id": "abc\x00def"},
    {"sg_event_id": "ev\x00nt"},
    {"status": "5.1.1\x00"},
    {"event": "bounce\x00"},
    {"email": "someone\x00@example.com"},
    {"sg_event_id": ""},
])
def test_one_bad_event_is_skipped_and_the_rest_of_the_batch_applied(
    client: FlaskClient, db: Session, signing_key: ec.EllipticCurvePrivateKey, verifying: None,
    bad: dict[str, str], caplog: pytest.LogCaptureFixture,
) -> None:
    """A bad event never costs the batch its bounces and unsubscribes (SendGrid would retry it for days)."""
    bounced, unsubscribed, odd = email_prompt(db), email_prompt(db), email_prompt(db)
    batch = [event(bounced, "bounce"), event(odd, "bounce", **bad), event(unsubscribed, "unsubscribe")]
    with caplog.at_level("INFO"):
        assert post_signed(client, signing_key, batch) == 204
    for nudge in (bounced, unsubscribed, odd):
        db.refresh(nudge.partner)
    assert bounced.partner.consent(Channel.EMAIL) is ConsentState.BOUNCED
    assert unsubscribed.partner.consent(Channel.EMAIL) is ConsentState.OPTED_OUT
    stored = db.scalar(select(func.count(DeliveryEvent.id)))
    assert stored in (2, 3), "the good events are stored; an odd nudge id alone is stored naming no nudge"
    skipped = [r for r in caplog.records if getattr(r, "skipped", 0)]
    if stored == 2:
        assert skipped and skipped[-1].skipped == 1 and skipped[-1].reasons
        assert odd.partner.email not in caplog.text
        reason = next(iter(skipped[-1].reasons))
        assert f'closer_sendgrid_events_skipped_total{{reason="{reason}"}}' in client.get("/metrics").get_data(
            as_text=True)


@pytest.mark.parametrize("age", [-11 * 60, 11 * 60, -(time.time() - 978307200)], ids=["stale", "future", "from-2001"])
def test_a_signed_batch_from_outside_the_window_is_refused(
    client: FlaskClient, db: Session, signing_key: ec.EllipticCurvePrivateKey, verifying: None, age: float,
) -> None:
    """A validly signed but stale (or future) timestamp is a replay: 403 with a reason, nothing applied."""
    nudge = email_prompt(db)
    stamp = str(int(time.time() + age))
    body = json.dumps([event(nudge, "unsubscribe")])
    signature = base64.b64encode(signing_key.sign((stamp + body).encode(), ec.ECDSA(hashes.SHA256()))).decode()
    response = client.post(PATH, data=body, content_type="application/json", headers={
        "X-Twilio-Email-Event-Webhook-Signature": signature, "X-Twilio-Email-Event-Webhook-Timestamp": stamp})
    assert response.status_code == 403
    assert "timestamp" in response.get_json()["detail"].lower()
    db.refresh(nudge.partner)
    assert nudge.partner.consent(Channel.EMAIL) is ConsentState.CONFIRMED


def test_a_signed_batch_within_the_window_is_accepted(
    client: FlaskClient, db: Session, signing_key: ec.EllipticCurvePrivateKey, verifying: None,
) -> None:
    nudge = email_prompt(db)
    for age in (-9 * 60, 9 * 60):
        assert post_signed(client, signing_key, [event(nudge, "delivered")],
                           timestamp=str(int(time.time() + age))) == 204
