"""SMS through the official Twilio SDK: the request meets Twilio's own OpenAPI spec (a Prism mock checks it),
and every failure maps to the right decision (retry, fail, or review without resending)."""

from __future__ import annotations

import re
import socket
import threading

import pytest

from service.providers import DeliveryStatus, OutboundSms, OutcomeUnknown, ProviderError, SendFailure, twilio_sms
from service.providers.base import retry_after_seconds
from service.providers.twilio_sms import TwilioSms
from service.settings import Settings
from tests.support.fake_providers import FakeProviders
from tests.support.prism import PrismPair
from tests.support.sending import ACCOUNT_SID, FROM_NUMBER, MESSAGING_SERVICE_SID, sdk_providers

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
BODY = "Alex, what's one small thing Sam did this week that made your day easier? Reply with your answer."


def _message(settings: Settings, nudge_id: int = 42, to: str = "+14155550123") -> OutboundSms:
    return OutboundSms(to=to, body=BODY, nudge_id=nudge_id)


@pytest.mark.parametrize("messaging_service", [False, True], ids=["from-number", "messaging-service"])
def test_the_request_meets_twilios_spec(prism: PrismPair, settings: Settings, messaging_service: bool) -> None:
    with FakeProviders(upstream={"sms": prism.twilio.url}) as relay:
        sms = sdk_providers(settings, twilio_url=relay.url, sendgrid_url=relay.url,
                            messaging_service=messaging_service).sms
        result = sms.send_sms(_message(settings))
    [request] = relay.records("sms")
    assert request.status == 201, "Prism rejects (422) any request that breaks the spec"
    assert result.provider_message_id.startswith("SM")
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    form = request.form
    # What Prism does not check: the number format, exactly one sender, and where callbacks go.
    assert E164.match(form["To"])
    assert form["Body"] == BODY
    if messaging_service:
        assert form["MessagingServiceSid"] == MESSAGING_SERVICE_SID and "From" not in form
    else:
        assert form["From"] == FROM_NUMBER and "MessagingServiceSid" not in form
    assert form["StatusCallback"] == f"{settings.public_base_url}/webhooks/twilio/status?nudge=42"


def test_the_mock_rejects_a_request_that_breaks_the_spec(prism: PrismPair, settings: Settings) -> None:
    """The contract check has teeth: a malformed StatusCallback is refused by the spec itself."""
    sms = sdk_providers(settings, twilio_url=prism.twilio.url, sendgrid_url=prism.sendgrid.url).sms
    broken = OutboundSms(to="+14155550123", body=BODY, status_callback="not a url", nudge_id=1)
    with pytest.raises(ProviderError) as raised:
        sms.send_sms(broken)
    assert raised.value.code == "422" and raised.value.failure is SendFailure.REJECTED


def test_a_number_that_is_not_e164_is_refused_before_any_request(fake: FakeProviders, settings: Settings) -> None:
    sms = sdk_providers(settings, twilio_url=fake.url, sendgrid_url=fake.url).sms
    with pytest.raises(ProviderError) as raised:
        sms.send_sms(_message(settings, to="415-555-0123"))
    assert raised.value.code == "21211" and raised.value.failure is SendFailure.INVALID_ADDRESS
    assert fake.records() == []


def test_one_keep_alive_connection_per_sending_thread(fake: FakeProviders, settings: Settings) -> None:
    sms = sdk_providers(settings, twilio_url=fake.url, sendgrid_url=fake.url).sms

    def send_three() -> None:
        for n in range(3):
            sms.send_sms(_message(settings, nudge_id=n))

    threads = [threading.Thread(target=send_three) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = fake.records("sms")
    assert len(records) == 6
    assert len({r.peer for r in records}) == 2, "each thread reuses its own connection"


@pytest.mark.parametrize(
    ("status", "code", "failure"),
    [(429, 20429, SendFailure.RATE_LIMITED), (500, 20500, SendFailure.TEMPORARY),
     (503, 20503, SendFailure.TEMPORARY), (400, 21610, SendFailure.OPTED_OUT),
     (400, 21211, SendFailure.INVALID_ADDRESS), (400, 21614, SendFailure.INVALID_ADDRESS),
     (400, 21408, SendFailure.REJECTED)],
)
def test_provider_errors_map_to_retry_or_failure(
    fake: FakeProviders, settings: Settings, status: int, code: int, failure: SendFailure
) -> None:
    fake.storm(status, channel="sms", count=1, error_code=code, retry_after=7 if status == 429 else None)
    sms = sdk_providers(settings, twilio_url=fake.url, sendgrid_url=fake.url).sms
    with pytest.raises(ProviderError) as raised:
        sms.send_sms(_message(settings))
    assert raised.value.code == str(code) and raised.value.failure is failure
    assert raised.value.retryable is (status == 429 or status >= 500)
    assert raised.value.detail == f"twilio {code}", "an opt-out's consent record names Twilio's code"
    assert not isinstance(raised.value, OutcomeUnknown)
    assert raised.value.retry_after == (7.0 if status == 429 else None)


def test_no_answer_after_the_request_went_out_is_an_unknown_outcome(fake: FakeProviders, settings: Settings) -> None:
    fake.hang(3.0, channel="sms", count=1)
    sms = sdk_providers(settings, twilio_url=fake.url, sendgrid_url=fake.url, timeout=0.5).sms
    with pytest.raises(OutcomeUnknown) as raised:
        sms.send_sms(_message(settings))
    assert raised.value.failure is SendFailure.OUTCOME_UNKNOWN
    assert [r.outcome for r in fake.records("sms")] == ["hung"]


def test_a_refused_connection_sent_nothing_and_is_retried(settings: Settings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the call: nothing listens there
    sms = TwilioSms(ACCOUNT_SID, "token", from_number=FROM_NUMBER, api_base_url=f"http://127.0.0.1:{port}",
                    timeout=2)
    with pytest.raises(ProviderError) as raised:
        sms.send_sms(_message(settings))
    assert raised.value.retryable and raised.value.code == "connection"
    assert raised.value.failure is SendFailure.TEMPORARY
    assert not isinstance(raised.value, OutcomeUnknown)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("999999") == 3600.0
    assert retry_after_seconds(None) is None


def test_twilio_explains_its_own_codes_and_no_one_elses() -> None:
    assert "STOP" in (twilio_sms.explain("21610") or "")
    assert (twilio_sms.explain("30003") or "").startswith("Carrier:")
    assert twilio_sms.explain("bounce") is None and twilio_sms.explain("429") is None, "SendGrid's, and shared"


def test_a_status_callback_reads_as_a_report_in_closers_terms() -> None:
    sid = "SM" + "a" * 32
    report = twilio_sms.status_report(message_sid=sid, status="undelivered", error_code="30003", nudge_hint=7)
    assert (report.provider, report.channel, report.event_id, report.event) == ("twilio", "sms", f"{sid}:undelivered",
                                                                                "undelivered")
    assert (report.sent_message_id, report.nudge_id, report.status) == (sid, 7, DeliveryStatus.UNDELIVERED)
    assert (report.error_code, report.failure) == ("30003", SendFailure.UNREACHABLE)
    assert report.reason == "carrier error 30003: unreachable destination handset"
    stop = twilio_sms.status_report(message_sid=sid, status="failed", error_code="21610", nudge_hint=None)
    assert (stop.failure, stop.detail) == (SendFailure.OPTED_OUT, "twilio 21610")
    odd = twilio_sms.status_report(message_sid=sid, status="failed", error_code="12345", nudge_hint=None)
    assert (odd.failure, odd.reason) == (SendFailure.REJECTED, "carrier error 12345: see Twilio error codes")
    fine = twilio_sms.status_report(message_sid=sid, status="read", error_code=None, nudge_hint=None)
    assert (fine.status, fine.failure, fine.reason) == (DeliveryStatus.DELIVERED, None, None)
