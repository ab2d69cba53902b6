"""Email through the official SendGrid SDK: the request meets SendGrid's own OpenAPI spec (a Prism mock
checks it) and carries what deliverability and RFC 8058 ask for; failures map to retry, fail or review."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, time

import pytest

from service.domain.composing import compose
from service.domain.send_plans import SendPlan
from service.domain.tokens import read_token
from service.models import Channel, NudgeKind
from service.programs import ProgramLibrary, load_programs
from service.providers import (
    DeliveryStatus,
    OutboundEmail,
    OutcomeUnknown,
    ProviderError,
    SendFailure,
    sendgrid_email,
)
from service.providers.sendgrid_email import SendGridEmail
from service.settings import Settings
from tests.support.fake_providers import FakeProviders
from tests.support.prism import PrismPair
from tests.support.sending import FROM_EMAIL, sdk_providers


@pytest.fixture(scope="module")
def programs() -> ProgramLibrary:
    return load_programs()


def _plan(nudge_id: int = 7, partner_id: int = 31) -> SendPlan:
    return SendPlan(
        nudge_id=nudge_id, kind=NudgeKind.PROMPT, channel=Channel.EMAIL, partner_id=partner_id,
        address="alex@example.com", scheduled_for=datetime(2026, 3, 2, 14, tzinfo=UTC), attempts=0,
        timezone="America/New_York", preferred_time=time(9), quiet_start=time(21, 30), quiet_end=time(8),
        name="Alex", other_name="Sam", reply_to="reply+0123456789abcdef01234567@reply.closer.example.test",
        program_key="appreciation", step_day=1,
    )


def test_the_request_meets_sendgrids_spec_and_rfc_8058(
    prism: PrismPair, settings: Settings, programs: ProgramLibrary
) -> None:
    composed = compose(_plan(), programs, settings)
    assert isinstance(composed.message, OutboundEmail)
    with FakeProviders(upstream={"email": prism.sendgrid.url}) as relay:
        email = sdk_providers(settings, twilio_url=relay.url, sendgrid_url=relay.url).email
        email.send_email(composed.message)
    [request] = relay.records("email")
    assert request.status == 202, "Prism answers 400 to a request that breaks the spec"
    body = request.json_body
    assert body["from"]["email"] == FROM_EMAIL
    [personalization] = body["personalizations"]
    assert personalization["to"] == [{"email": "alex@example.com"}]
    assert personalization["custom_args"] == {"nudge_id": "7"}
    assert [part["type"] for part in body["content"]] == ["text/plain", "text/html"]
    assert "Sam" in body["content"][0]["value"] and "<p>" in body["content"][1]["value"]
    assert body["reply_to"] == {"email": "reply+0123456789abcdef01234567@reply.closer.example.test"}
    unsubscribe = body["headers"]["List-Unsubscribe"]
    assert unsubscribe.startswith("<https://closer.example.test/unsubscribe/") and unsubscribe.endswith(">")
    assert read_token(settings.secret_key, "unsubscribe", unsubscribe[1:-1].rsplit("/", 1)[1]) == 31
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "categories" not in body, "categories are aggregated in reports: nothing personal goes there"
    assert request.headers["Content-Type"].startswith("application/json")


def test_the_mock_rejects_a_request_that_breaks_the_spec(prism: PrismPair, settings: Settings) -> None:
    """The contract check has teeth: SendGrid's spec types a top-level custom_args as a string, so the SDK's
    default (top-level object) is refused, which is why Closer puts its nudge id on the personalization."""
    from sendgrid import SendGridAPIClient
    from sendgrid.helpers.mail import Content, CustomArg, Mail

    mail = Mail(from_email=FROM_EMAIL, to_emails="alex@example.com", subject="Hello")
    mail.add_content(Content("text/plain", "Hello"))
    mail.add_custom_arg(CustomArg("nudge_id", "7"))
    client = SendGridAPIClient(api_key="SG.test-key", host=prism.sendgrid.url)
    with pytest.raises(Exception) as raised:
        client.send(mail)
    assert getattr(raised.value, "status_code", None) == 400


@pytest.mark.parametrize(("status", "failure"), [
    (429, SendFailure.RATE_LIMITED), (500, SendFailure.TEMPORARY), (503, SendFailure.TEMPORARY),
    (400, SendFailure.REJECTED), (401, SendFailure.REJECTED), (413, SendFailure.REJECTED),
])
def test_provider_errors_map_to_retry_or_failure(
    fake: FakeProviders, settings: Settings, programs: ProgramLibrary, status: int, failure: SendFailure
) -> None:
    fake.storm(status, channel="email", count=1, retry_after=5 if status == 429 else None)
    email = sdk_providers(settings, twilio_url=fake.url, sendgrid_url=fake.url).email
    message = compose(_plan(), programs, settings).message
    assert isinstance(message, OutboundEmail)
    with pytest.raises(ProviderError) as raised:
        email.send_email(message)
    assert raised.value.code == str(status) and raised.value.failure is failure
    assert raised.value.retryable is (status == 429 or status >= 500)
    assert (raised.value.provider, raised.value.detail) == ("sendgrid", f"sendgrid {status}")
    assert not isinstance(raised.value, OutcomeUnknown)
    assert raised.value.retry_after == (5.0 if status == 429 else None)


def test_no_answer_after_the_request_went_out_is_an_unknown_outcome(
    fake: FakeProviders, settings: Settings, programs: ProgramLibrary
) -> None:
    fake.hang(3.0, channel="email", count=1)
    email = sdk_providers(settings, twilio_url=fake.url, sendgrid_url=fake.url, timeout=0.5).email
    message = compose(_plan(), programs, settings).message
    assert isinstance(message, OutboundEmail)
    with pytest.raises(OutcomeUnknown) as raised:
        email.send_email(message)
    assert raised.value.failure is SendFailure.OUTCOME_UNKNOWN and not raised.value.retryable
    assert [r.outcome for r in fake.records("email")] == ["hung"]


def test_a_refused_connection_sent_nothing_and_is_retried(settings: Settings, programs: ProgramLibrary) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    email = SendGridEmail("SG.test-key", FROM_EMAIL, api_host=f"http://127.0.0.1:{port}", timeout=2)
    message = compose(_plan(), programs, settings).message
    assert isinstance(message, OutboundEmail)
    with pytest.raises(ProviderError) as raised:
        email.send_email(message)
    assert raised.value.retryable and raised.value.code == "connection"
    assert raised.value.failure is SendFailure.TEMPORARY
    assert not isinstance(raised.value, OutcomeUnknown)


def test_the_message_id_comes_from_sendgrids_header(fake: FakeProviders, settings: Settings,
                                                    programs: ProgramLibrary) -> None:
    email = sdk_providers(settings, twilio_url=fake.url, sendgrid_url=fake.url).email
    message = compose(_plan(), programs, settings).message
    assert isinstance(message, OutboundEmail)
    result = email.send_email(message)
    [record] = fake.records("email")
    assert result.provider_message_id == record.provider_id


def test_one_keep_alive_connection_per_sending_thread(fake: FakeProviders, settings: Settings,
                                                      programs: ProgramLibrary) -> None:
    import threading

    email = sdk_providers(settings, twilio_url=fake.url, sendgrid_url=fake.url).email
    message = compose(_plan(), programs, settings).message
    assert isinstance(message, OutboundEmail)

    def send_three() -> None:
        for _ in range(3):
            email.send_email(message)

    threads = [threading.Thread(target=send_three) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = fake.records("email")
    assert len(records) == 6 and len({r.peer for r in records}) == 2


def test_sendgrid_explains_its_events_statuses_and_the_mail_servers_codes() -> None:
    assert "bounce" in (sendgrid_email.explain("bounce") or "")
    assert "SENDGRID_API_KEY" in (sendgrid_email.explain("401") or "")
    assert "no such mailbox" in (sendgrid_email.explain("5.1.1") or "")
    assert "rejected permanently" in (sendgrid_email.explain("5.9.9") or "")
    assert sendgrid_email.explain("21610") is None, "a Twilio code"


@pytest.mark.parametrize(("event", "status", "failure"), [
    ({"event": "processed"}, DeliveryStatus.SENT, None),
    ({"event": "delivered"}, DeliveryStatus.DELIVERED, None),
    ({"event": "bounce", "status": "5.1.1"}, DeliveryStatus.UNDELIVERED, SendFailure.BOUNCED),
    ({"event": "bounce", "type": "blocked", "status": "4.7.1"}, DeliveryStatus.UNDELIVERED, SendFailure.REJECTED),
    ({"event": "dropped"}, DeliveryStatus.FAILED, SendFailure.BOUNCED),
    ({"event": "spamreport"}, None, SendFailure.OPTED_OUT),
    ({"event": "unsubscribe"}, None, SendFailure.OPTED_OUT),
    ({"event": "open"}, None, None),
])
def test_an_event_reads_as_a_report_in_closers_terms(
    event: dict[str, str], status: DeliveryStatus | None, failure: SendFailure | None
) -> None:
    report = sendgrid_email.event_report({"sg_event_id": "e1", "sg_message_id": "m1.filter0001", "nudge_id": "42",
                                          "email": " alex@example.test ", "timestamp": 1700000000, **event})
    assert (report.provider, report.channel, report.event_id, report.event) == ("sendgrid", "email", "e1",
                                                                                event["event"])
    assert (report.status, report.failure, report.detail) == (status, failure, f"sendgrid {event['event']}")
    assert (report.message_id, report.sent_message_id, report.nudge_id) == ("m1.filter0001", None, 42)
    assert report.address == "alex@example.test" and report.occurred_at is not None
    assert report.error_code == event.get("status")


def test_an_event_without_its_identity_is_refused() -> None:
    with pytest.raises(ValueError, match="sg_event_id"):
        sendgrid_email.event_report({"event": "delivered"})
