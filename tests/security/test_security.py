"""Security properties across the app: CSRF everywhere, signatures, escaping, tokens, headers, quiet logs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from service.app import create_app
from service.crypto import install_cipher, token_digest
from service.models import LogEntry
from service.runtime import Runtime
from service.settings import Settings
from service.web.context import runtime_of
from tests.factories import make_couple, make_sent_prompt

# POST routes that may be called without a CSRF token, and why.
CSRF_EXEMPT = {
    "/webhooks/": "provider webhooks authenticate by signature or secret instead",
    "/unsubscribe/": "RFC 8058 one-click unsubscribe is a POST from the mail provider, guarded by its signed token",
}


def _post_rules(app: Flask) -> list[Any]:
    return [r for r in app.url_map.iter_rules() if "POST" in (r.methods or set())]


def _fill(rule: Any, token: str) -> str:
    path = rule.rule
    for argument in rule.arguments:
        path = re.sub(rf"<(?:[a-z]+:)?{argument}>", "1" if "id" in argument else token, path)
    return path


def test_every_form_post_needs_a_csrf_token(app: Flask, client: FlaskClient, db: Session) -> None:
    couple = make_couple(db)
    token = couple.partners[0].log_token
    checked = []
    for rule in _post_rules(app):
        if any(rule.rule.startswith(prefix) for prefix in CSRF_EXEMPT):
            continue
        response = client.post(_fill(rule, token), data={"anything": "x"})
        assert response.status_code == 400, f"{rule.rule} accepted a POST without a CSRF token"
        checked.append(rule.rule)
    assert {"/signup", "/log/<token>/erase-mine", "/ops/login", "/dev/outbox/reply"} <= set(checked)


@pytest.mark.parametrize("path", ["/webhooks/twilio/sms", "/webhooks/twilio/status"])
def test_twilio_signatures_reject_forgeries(client: FlaskClient, runtime: Runtime, db: Session, path: str) -> None:
    if path not in {r.rule for r in client.application.url_map.iter_rules()}:
        pytest.fail(f"{path} is not routed")
    couple = make_couple(db)
    db.commit()
    phone = couple.partners[0].phone_e164
    params = {"MessageSid": "SM" + "c" * 32, "From": phone or "", "To": "+15005550006", "Body": "STOP",
              "MessageStatus": "delivered", "AccountSid": "AC" + "0" * 32}
    good_url = runtime.settings.public_base_url + path
    good = RequestValidator(runtime.settings.twilio_auth_token).compute_signature(good_url, params)
    forgeries = {
        "unsigned": ({}, params),
        "wrong url": ({"X-Twilio-Signature": RequestValidator(runtime.settings.twilio_auth_token).compute_signature(
            "https://evil.example" + path, params)}, params),
        "wrong key": ({"X-Twilio-Signature": RequestValidator("not-the-token").compute_signature(good_url, params)},
                      params),
        "tampered": ({"X-Twilio-Signature": good}, {**params, "Body": "hello"}),
        "replayed onto other params": ({"X-Twilio-Signature": good}, {**params, "MessageSid": "SM" + "d" * 32}),
        "garbage": ({"X-Twilio-Signature": "!!!"}, params),
    }
    for name, (headers, data) in forgeries.items():
        response = client.post(path, data=data, headers=headers)
        assert response.status_code == 403, f"{name}: {response.status_code}"
    db.expire_all()
    assert couple.partners[0].sms_consent == "confirmed"  # nothing changed


def test_names_and_replies_are_escaped_on_the_log_page(client: FlaskClient, db: Session) -> None:
    couple = make_couple(db, names=("<img src=x onerror=alert(1)>", "Sam\"><script>alert(2)</script>"))
    alex, sam = couple.partners
    prompt = make_sent_prompt(db, alex)
    db.add(LogEntry(couple_id=couple.id, partner_id=alex.id, nudge_id=prompt.id, channel="sms",
                    provider_message_id="SMxss", body="<svg onload=alert(3)>"))
    db.flush()
    page = client.get(f"/log/{sam.log_token}").get_data(as_text=True)
    for raw in ("<img src=x", "<script>alert(2)", "<svg onload"):
        assert raw not in page
    assert "&lt;svg onload=alert(3)&gt;" in page


def test_log_tokens_are_long_hashed_and_not_enumerable(client: FlaskClient, db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    alex = couple.partners[0]
    assert len(alex.log_token) >= 32  # token_urlsafe(24): 192 random bits
    row = db.execute(text("SELECT log_token_hash, log_token FROM partners WHERE id = :id"), {"id": alex.id}).one()
    assert row[0] == token_digest(alex.log_token) and alex.log_token.encode() not in bytes(row[1])
    near_misses = [alex.log_token[:-1] + ("A" if alex.log_token[-1] != "A" else "B"), alex.log_token[:20], "0" * 32]
    for guess in near_misses:
        assert client.get(f"/log/{guess}").status_code == 404
    statuses = {client.get(f"/log/guess{i:04d}").status_code for i in range(70)}
    assert 429 in statuses  # guessing at volume is refused


def test_no_bodies_or_full_numbers_in_logs(client: FlaskClient, db: Session, runtime: Runtime,
                                           caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    couple = make_couple(db)
    db.commit()
    alex = couple.partners[0]
    secret_words = "our secret picnic by the lighthouse"
    caplog.set_level(logging.DEBUG)
    params = {"MessageSid": "SM" + "e" * 32, "From": alex.phone_e164 or "", "To": "+15005550006",
              "Body": secret_words, "NumMedia": "0"}
    url = runtime.settings.public_base_url + "/webhooks/twilio/sms"
    signature = RequestValidator(runtime.settings.twilio_auth_token).compute_signature(url, params)
    response = client.post("/webhooks/twilio/sms", data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200
    from service.providers import OutboundSms

    runtime.providers.sms.send_sms(OutboundSms(to=alex.phone_e164 or "", body=secret_words))
    logging.getLogger("closer.test").info("texting %s about %s", alex.phone_e164, "x")
    captured = capfd.readouterr()
    everything = captured.err + captured.out
    assert "picnic" not in everything and "picnic" not in caplog.text
    assert alex.phone_e164 not in everything


def test_security_headers_on_pages(client: FlaskClient) -> None:
    for path in ("/", "/programs", "/ops/login"):
        response = client.get(path)
        assert "default-src 'self'" in response.headers["Content-Security-Policy"], path
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "Strict-Transport-Security" not in response.headers  # not outside production


@pytest.fixture()
def production_app(settings: Settings) -> Iterator[Flask]:
    production = Settings(
        closer_env="production", database_url=settings.database_url, redis_url=settings.redis_url,
        secret_key="p" * 48, data_encryption_key=(Fernet.generate_key().decode(),),
        public_base_url="https://closer.example.test",
    ).validated()
    app = create_app(production)
    yield app
    runtime_of(app).database.dispose()
    install_cipher(settings.data_encryption_key)


def test_hsts_in_production(production_app: Flask) -> None:
    response = production_app.test_client().get("/programs")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    assert production_app.test_client().get("/dev/outbox").status_code == 404
