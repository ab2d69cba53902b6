"""The local fake providers answer like the real ones: Prism, in proxy mode with --errors in front of the
fake, checks every kind of answer the fault tests rely on against the official specs. Also the fake's own
record, which the fault tests use to judge "none lost, none doubled"."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import requests

from tests.support.fake_providers import FakeProviders, Rule
from tests.support.prism import PrismPair, start_proxies
from tests.support.sending import ACCOUNT_SID

TWILIO_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
TWILIO_AUTH = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:token".encode()).decode()
SMS = {"To": "+14155550123", "From": "+15005550006", "Body": "Hello",
       "StatusCallback": "https://closer.example.test/webhooks/twilio/status?nudge=9"}
EMAIL = {
    "from": {"email": "prompts@closer.example.test"}, "subject": "Hello",
    "personalizations": [{"to": [{"email": "alex@example.com"}], "custom_args": {"nudge_id": "9"}}],
    "content": [{"type": "text/plain", "value": "Hello"}, {"type": "text/html", "value": "<p>Hello</p>"}],
}


@pytest.fixture(scope="module")
def checked() -> Iterator[tuple[FakeProviders, PrismPair]]:
    """One fake, and one Prism proxy per spec in front of it (started once for this module)."""
    with FakeProviders() as server:
        proxies = start_proxies(server.url, server.url)
        try:
            yield server, proxies
        finally:
            proxies.stop()


def _errors(response: requests.Response) -> list[dict[str, object]]:
    """Prism's findings of severity Error: in a 500 VIOLATIONS body, or in the sl-violations header."""
    found: list[dict[str, object]] = []
    if response.status_code == 500 and "VIOLATIONS" in response.text:
        found += response.json().get("validation", [])
    found += json.loads(response.headers.get("sl-violations", "[]"))
    return [v for v in found if v.get("severity") == "Error"]


@pytest.mark.parametrize(("status", "code"), [(None, None), (429, 20429), (500, 20500), (503, 20503),
                                              (400, 21610), (400, 21211), (400, 21614)])
def test_twilio_answers_pass_the_spec(checked: tuple[FakeProviders, PrismPair], status: int | None,
                                      code: int | None) -> None:
    fake, prism = checked
    if status is not None:
        fake.storm(status, channel="sms", count=1, error_code=code, retry_after=2 if status == 429 else None)
    response = requests.post(prism.twilio.url + TWILIO_PATH, data=SMS, timeout=30,
                             headers={"Authorization": TWILIO_AUTH, "Accept": "application/json"})
    assert _errors(response) == []
    assert response.status_code == (status or 201)
    if status is None:
        assert response.json()["sid"].startswith("SM") and response.json()["status"] == "queued"
    else:
        assert response.json()["code"] == code
    if status == 429:
        assert response.headers["Retry-After"] == "2"


@pytest.mark.parametrize("status", [None, 429, 500, 400])
def test_sendgrid_answers_pass_the_spec(checked: tuple[FakeProviders, PrismPair], status: int | None) -> None:
    fake, prism = checked
    if status is not None:
        fake.storm(status, channel="email", count=1, retry_after=3 if status == 429 else None)
    response = requests.post(prism.sendgrid.url + "/v3/mail/send", json=EMAIL, timeout=30,
                             headers={"Authorization": "Bearer SG.test-key"})
    assert _errors(response) == []
    assert response.status_code == (status or 202)
    if status is None:
        assert response.headers["X-Message-Id"]
    else:
        assert response.json()["errors"][0]["message"]


def test_a_broken_answer_would_be_caught(checked: tuple[FakeProviders, PrismPair]) -> None:
    """The check has teeth: an answer that breaks the schema comes back as Prism's 500 VIOLATIONS."""
    fake, prism = checked
    fake.add_rule(Rule(channel="sms", status=201, body={"sid": "not-a-message-sid", "status": "queued"},
                       remaining=1))
    response = requests.post(prism.twilio.url + TWILIO_PATH, data=SMS, timeout=30,
                             headers={"Authorization": TWILIO_AUTH, "Accept": "application/json"})
    assert response.status_code == 500
    assert any("sid" in str(v.get("location")) for v in _errors(response))


def test_the_record_counts_every_request_and_what_it_was_told(fake: FakeProviders) -> None:
    fake.storm(429, channel="sms", count=2, retry_after=1)
    fake.hang(0.2, channel="sms", count=1)
    statuses = []
    for n in range(4):
        form = {**SMS, "StatusCallback": f"https://closer.example.test/webhooks/twilio/status?nudge={n}"}
        try:
            statuses.append(requests.post(fake.url + TWILIO_PATH, data=form, timeout=0.1,
                                          headers={"Authorization": TWILIO_AUTH}).status_code)
        except requests.exceptions.ReadTimeout:
            statuses.append(0)
    assert statuses == [429, 429, 0, 201]
    records = fake.records("sms")
    assert [r.outcome for r in records] == ["rejected", "rejected", "hung", "accepted"]
    assert [r.nudge_id for r in records] == [0, 1, 2, 3]
    assert fake.sent_counts() == {("sms", 2): 1, ("sms", 3): 1}, "a hung request may have been sent"


def test_unauthenticated_requests_are_refused(fake: FakeProviders) -> None:
    assert requests.post(fake.url + TWILIO_PATH, data=SMS, timeout=5).status_code == 401
    assert requests.post(fake.url + "/v3/mail/send", json=EMAIL, timeout=5).status_code == 401
    assert fake.sent_counts() == {}
