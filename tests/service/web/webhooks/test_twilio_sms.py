"""POST /webhooks/twilio/sms with real signatures (the SDK's RequestValidator), on the real database."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, time
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq import Queue
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from twilio.request_validator import RequestValidator

from jobs.inbound import drain_spool
from service import spool
from service.db import make_engine
from service.domain.links import log_url
from service.domain.signup import PartnerRequest, SignupRequest, sign_up
from service.models import (
    Channel,
    ConsentRecord,
    ConsentState,
    Couple,
    EnrollmentStatus,
    InboundMessage,
    LogEntry,
    Nudge,
    NudgeKind,
    NudgeStatus,
    Partner,
)
from service.queues import QUEUE_SEND
from service.runtime import Runtime
from service.web.context import close_db_session, db_session
from tests.factories import make_couple, next_phone

PATH = "/webhooks/twilio/sms"


def sid() -> str:
    return "SM" + uuid.uuid4().hex


def params_for(phone: str, body: str, **extra: str) -> dict[str, str]:
    return {"MessageSid": sid(), "SmsSid": "", "AccountSid": "AC" + "0" * 32, "From": phone,
            "To": "+15005550006", "Body": body, "NumMedia": "0", "ApiVersion": "2010-04-01", **extra}


def signature(runtime: Runtime, params: Mapping[str, str], url: str | None = None) -> str:
    url = url or runtime.settings.public_base_url + PATH
    return str(RequestValidator(runtime.settings.twilio_auth_token).compute_signature(url, params))


def post(
    client: FlaskClient, runtime: Runtime, params: Mapping[str, str], *, sign_with: Mapping[str, str] | None = None,
    url: str | None = None, headers: Mapping[str, str] | None = None,
) -> Any:
    all_headers = {"X-Twilio-Signature": signature(runtime, sign_with or params, url), **(headers or {})}
    return client.post(PATH, data=dict(params), headers=all_headers)


def message_of(response: Any) -> str | None:
    """The text of the TwiML <Message>, or None for an empty <Response/>."""
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/xml"
    body = response.get_data(as_text=True)
    assert "<Response" in body
    match = re.search(r"<Message>(.*?)</Message>", body, re.S)
    return match.group(1).replace("&apos;", "'").replace("&amp;", "&") if match else None


def pending_couple(db: Session, runtime: Runtime) -> Couple:
    result = sign_up(db, SignupRequest(
        signer=PartnerRequest("Alex", next_phone(), None, "America/New_York"),
        invited=PartnerRequest("Sam", next_phone(), None, "America/New_York"),
        preferred_time=time(19, 0), program_key="sampler", ip="192.0.2.1", user_agent="test",
    ), settings=runtime.settings, programs=runtime.programs, now=datetime.now(UTC))
    db.commit()
    return result.couple


def test_yes_confirms_that_partner_and_both_start_the_program(
    client: FlaskClient, db: Session, runtime: Runtime
) -> None:
    couple = pending_couple(db, runtime)
    alex, sam = couple.partners
    assert alex.phone_e164 and sam.phone_e164
    params = params_for(alex.phone_e164, "  Yes! ")
    reply = message_of(post(client, runtime, params))
    assert reply is not None and reply.startswith("You're in for A month of closeness!")
    assert "once your partner says yes too" in reply
    db.expire_all()
    assert alex.consent(Channel.SMS) is ConsentState.CONFIRMED
    assert sam.consent(Channel.SMS) is ConsentState.PENDING
    record = db.scalars(select(ConsentRecord).where(ConsentRecord.partner_id == alex.id,
                                                    ConsentRecord.action == "confirmed")).one()
    assert (record.source, record.source_detail, record.channel) == ("sms", params["MessageSid"], "sms")
    assert couple.enrollments[0].status == EnrollmentStatus.PENDING
    reply = message_of(post(client, runtime, params_for(sam.phone_e164, "yes")))
    assert reply is not None and "Your first prompt arrives at your chosen time" in reply
    db.expire_all()
    assert couple.enrollments[0].status == EnrollmentStatus.ACTIVE


def test_stop_from_one_partner_stops_only_that_partner_and_reveals_nothing(
    client: FlaskClient, db: Session, runtime: Runtime
) -> None:
    couple = make_couple(db, names=("Alex", "Sam"))
    db.commit()
    alex, sam = couple.partners
    assert alex.phone_e164 and sam.phone_e164
    reply = message_of(post(client, runtime, params_for(alex.phone_e164, "STOP")))
    assert reply is not None and "unsubscribed" in reply
    assert "Sam" not in reply and sam.phone_e164 not in reply and sam.phone_e164[-4:] not in reply
    db.expire_all()
    assert alex.consent(Channel.SMS) is ConsentState.OPTED_OUT
    assert sam.consent(Channel.SMS) is ConsentState.CONFIRMED
    assert sam.consent(Channel.EMAIL) is ConsentState.CONFIRMED
    assert alex.consent(Channel.EMAIL) is ConsentState.CONFIRMED, "STOP by text leaves email alone"
    assert couple.enrollments[0].status == EnrollmentStatus.ACTIVE
    # Sam's answers to HELP and LOG show nothing of Alex's choice.
    help_for_sam = message_of(post(client, runtime, params_for(sam.phone_e164, "help")))
    assert help_for_sam is not None and "Alex" not in help_for_sam and "stopped" not in help_for_sam.lower()


@pytest.mark.parametrize("word", ["STOP", "stopall", " Unsubscribe ", "cancel", "END", "quit", "revoke", "OPTOUT",
                                  "please stop texting me"])
def test_every_opt_out_word_stops(client: FlaskClient, db: Session, runtime: Runtime, word: str) -> None:
    couple = make_couple(db)
    db.commit()
    phone = couple.partners[0].phone_e164
    assert phone
    message_of(post(client, runtime, params_for(phone, word)))
    db.expire_all()
    assert couple.partners[0].consent(Channel.SMS) is ConsentState.OPTED_OUT
    assert couple.partners[1].consent(Channel.SMS) is ConsentState.CONFIRMED


@pytest.mark.parametrize("word", ["START", "unstop"])
def test_start_opts_back_in(client: FlaskClient, db: Session, runtime: Runtime, word: str) -> None:
    couple = make_couple(db)
    db.commit()
    phone = couple.partners[0].phone_e164
    assert phone
    post(client, runtime, params_for(phone, "STOP"))
    reply = message_of(post(client, runtime, params_for(phone, word)))
    assert reply is not None and "Welcome back" in reply
    db.expire_all()
    assert couple.partners[0].consent(Channel.SMS) is ConsentState.CONFIRMED


@pytest.mark.parametrize("word", ["HELP", "info"])
def test_help_names_the_program_contact_frequency_rates_and_stop(
    client: FlaskClient, db: Session, runtime: Runtime, word: str
) -> None:
    couple = make_couple(db, program="appreciation")
    db.commit()
    phone = couple.partners[0].phone_e164
    assert phone
    reply = message_of(post(client, runtime, params_for(phone, word)))
    assert reply is not None
    for part in ("Noticing the good", runtime.settings.support_contact, "7 msgs/wk", "Msg&data rates may apply",
                 "STOP"):
        assert part in reply


def test_log_answers_with_the_partners_private_link(client: FlaskClient, db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    db.commit()
    alex = couple.partners[0]
    assert alex.phone_e164
    reply = message_of(post(client, runtime, params_for(alex.phone_e164, "log")))
    assert reply == f"Your shared log: {runtime.settings.public_base_url}/log/{alex.log_token}"


def test_a_retried_message_sid_gets_an_empty_answer_and_changes_nothing(
    client: FlaskClient, db: Session, runtime: Runtime
) -> None:
    couple = make_couple(db)
    db.commit()
    phone = couple.partners[0].phone_e164
    assert phone
    params = params_for(phone, "STOP")
    assert message_of(post(client, runtime, params)) is not None
    post(client, runtime, params_for(phone, "START"))
    db.expire_all()
    assert couple.partners[0].consent(Channel.SMS) is ConsentState.CONFIRMED
    # Twilio retries the first STOP: same MessageSid, same signature. It is not applied a second time.
    assert message_of(post(client, runtime, params)) is None
    db.expire_all()
    assert couple.partners[0].consent(Channel.SMS) is ConsentState.CONFIRMED
    count = db.scalar(select(func.count(InboundMessage.id)).where(InboundMessage.provider_message_id
                                                                   == params["MessageSid"]))
    assert count == 1


def test_a_reply_is_stored_once_with_its_media_types(client: FlaskClient, db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    db.commit()
    phone = couple.partners[0].phone_e164
    assert phone
    params = params_for(phone, "Here is us at the lake", NumMedia="2", MediaContentType0="image/jpeg",
                        MediaUrl0="https://api.twilio.com/media/0", MediaContentType1="video/mp4",
                        MediaUrl1="https://api.twilio.com/media/1")
    assert message_of(post(client, runtime, params)) is None
    assert message_of(post(client, runtime, params)) is None
    entries = db.scalars(select(LogEntry).where(LogEntry.provider_message_id == params["MessageSid"])).all()
    assert len(entries) == 1
    assert entries[0].media_count == 2 and entries[0].media_types == "image/jpeg,video/mp4"
    assert entries[0].body == "Here is us at the lake"


def test_an_unknown_sender_is_told_how_to_sign_up(client: FlaskClient, runtime: Runtime) -> None:
    reply = message_of(post(client, runtime, params_for("+14155550100", "hello?")))
    assert reply is not None and runtime.settings.public_base_url in reply


class TestSignatures:
    def test_unsigned_requests_are_refused(self, client: FlaskClient, db: Session, runtime: Runtime) -> None:
        couple = make_couple(db, confirmed=False)
        db.commit()
        phone = couple.partners[0].phone_e164
        assert phone
        response = client.post(PATH, data=params_for(phone, "YES"))
        assert response.status_code == 403
        db.expire_all()
        assert couple.partners[0].consent(Channel.SMS) is ConsentState.PENDING
        assert db.scalar(select(func.count(InboundMessage.id))) == 0

    def test_forged_signatures_are_refused(self, client: FlaskClient, runtime: Runtime) -> None:
        params = params_for(next_phone(), "YES")
        forged = RequestValidator("not-the-auth-token").compute_signature(runtime.settings.public_base_url + PATH,
                                                                          params)
        for value in (forged, "", "x" * 28, signature(runtime, params) + "A"):
            assert client.post(PATH, data=params, headers={"X-Twilio-Signature": value}).status_code == 403

    def test_a_signature_replayed_with_different_params_is_refused(
        self, client: FlaskClient, db: Session, runtime: Runtime
    ) -> None:
        couple = make_couple(db)
        db.commit()
        phone = couple.partners[0].phone_e164
        assert phone
        original = params_for(phone, "Thanks for today")
        assert post(client, runtime, original).status_code == 200
        replayed = {**original, "Body": "STOP"}
        assert post(client, runtime, replayed, sign_with=original).status_code == 403
        other_sid = {**original, "MessageSid": sid()}
        assert post(client, runtime, other_sid, sign_with=original).status_code == 403
        db.expire_all()
        assert couple.partners[0].consent(Channel.SMS) is ConsentState.CONFIRMED

    def test_tampered_requests_are_refused(self, client: FlaskClient, db: Session, runtime: Runtime) -> None:
        couple = make_couple(db)
        db.commit()
        phone = couple.partners[0].phone_e164
        assert phone
        params = params_for(phone, "STOP")
        added = {**params, "Extra": "1"}
        assert post(client, runtime, added, sign_with=params).status_code == 403
        removed = {k: v for k, v in params.items() if k != "ApiVersion"}
        assert post(client, runtime, removed, sign_with=params).status_code == 403
        other_sender = {**params, "From": couple.partners[1].phone_e164 or ""}
        assert post(client, runtime, other_sender, sign_with=params).status_code == 403
        db.expire_all()
        assert [p.consent(Channel.SMS) for p in couple.partners] == [ConsentState.CONFIRMED] * 2

    @pytest.mark.parametrize("url", [
        "http://closer.example.test" + PATH,
        "https://closer.example.test/webhooks/twilio/status",
        "https://evil.example.test" + PATH,
        "https://closer.example.test" + PATH + "?x=1",
    ])
    def test_a_signature_for_another_url_is_refused(self, client: FlaskClient, runtime: Runtime, url: str) -> None:
        params = params_for(next_phone(), "YES")
        assert post(client, runtime, params, url=url).status_code == 403

    def test_the_query_string_twilio_called_is_part_of_the_signature(
        self, client: FlaskClient, runtime: Runtime
    ) -> None:
        params = params_for("+14155550100", "hi")
        url = runtime.settings.public_base_url + PATH + "?source=twilio"
        response = client.post(PATH + "?source=twilio", data=params,
                               headers={"X-Twilio-Signature": signature(runtime, params, url)})
        assert response.status_code == 200

    def test_shared_key_signatures_are_refused_without_a_shared_key(
        self, client: FlaskClient, runtime: Runtime
    ) -> None:
        params = params_for(next_phone(), "YES")
        response = post(client, runtime, params,
                        headers={"X-Twilio-Webhooks-Signature-Settings": "key=k1,algorithm=HMAC_SHA256"})
        assert response.status_code == 403

    def test_without_an_auth_token_every_request_is_refused(self, client: FlaskClient, runtime: Runtime) -> None:
        params = params_for(next_phone(), "YES")
        signed = signature(runtime, params)
        original = runtime.settings
        runtime.settings = original.with_overrides(twilio_auth_token="")
        try:
            response = client.post(PATH, data=params, headers={"X-Twilio-Signature": signed})
        finally:
            runtime.settings = original
        assert response.status_code == 403


@pytest.mark.parametrize("changes,detail", [
    ({"MessageSid": ""}, "MessageSid is missing"),
    ({"MessageSid": "SM" + "a" * 200}, "MessageSid must be"),
    ({"MessageSid": "SM123"}, "MessageSid must be"),
    ({"From": "not a number"}, "From must be a phone number"),
    ({"From": ""}, "From must be a phone number"),
    ({"From": "+1"}, "From must be a phone number"),
    ({"Body": "x" * 1601}, "Body is longer than 1600"),
    ({"NumMedia": "two"}, "NumMedia must be a whole number"),
    ({"NumMedia": "-1"}, "NumMedia must be a whole number"),
    ({"NumMedia": "11"}, "NumMedia must be at most 10"),
    ({"NumMedia": "1"}, "MediaContentType0 must be a MIME type"),
    ({"NumMedia": "1", "MediaContentType0": "image/jpeg\x00"}, "MediaContentType0 must be a MIME type"),
])
def test_malformed_fields_get_400_with_the_reason(
    client: FlaskClient, db: Session, runtime: Runtime, changes: dict[str, str], detail: str
) -> None:
    params = {**params_for("+14155550100", "hello"), **changes}
    response = post(client, runtime, params)
    assert response.status_code == 400
    assert detail in response.get_json()["detail"]
    assert db.scalar(select(func.count(InboundMessage.id))) == 0


def test_a_body_of_exactly_1600_characters_is_accepted(client: FlaskClient, db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    db.commit()
    phone = couple.partners[0].phone_e164
    assert phone
    params = params_for(phone, "x" * 1600)
    assert post(client, runtime, params).status_code == 200
    entry = db.scalars(select(LogEntry).where(LogEntry.provider_message_id == params["MessageSid"])).one()
    assert len(entry.body) == 1600


WEBHOOK_FIELDS = ("MessageSid", "From", "To", "Body", "NumMedia", "MediaContentType0", "AccountSid")
ANY_VALUE = st.one_of(
    st.text(max_size=40),
    st.text(max_size=1700),
    st.sampled_from(["", "0", "1", "10", "99999999999999999999", "SM" + "f" * 32, "+14155550100", "\x00",
                     "image/png", "YES", "STOP", "HELP", "LOG", "PAUSE 7", "NEWLINK", "x" * 1601]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.sampled_from(WEBHOOK_FIELDS), ANY_VALUE, min_size=1, max_size=4))
def test_any_signed_field_values_get_200_or_a_4xx_with_a_message(
    client: FlaskClient, runtime: Runtime, values: dict[str, str]
) -> None:
    params = {**params_for(next_phone(), "hello"), **values}
    response = post(client, runtime, params)
    assert response.status_code in (200, 400), (values, response.status_code)
    if response.status_code == 400:
        assert response.get_json()["detail"]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.sampled_from(WEBHOOK_FIELDS), ANY_VALUE, min_size=1, max_size=4))
def test_any_unsigned_field_values_get_403(client: FlaskClient, runtime: Runtime, values: dict[str, str]) -> None:
    response = client.post(PATH, data={**params_for(next_phone(), "hello"), **values},
                           headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"})
    assert response.status_code == 403 and response.get_json()["detail"]


def test_partners_sharing_nothing_but_a_couple_are_matched_by_their_own_number(
    client: FlaskClient, db: Session, runtime: Runtime
) -> None:
    couple = pending_couple(db, runtime)
    alex = couple.partners[0]
    assert alex.phone_e164
    message_of(post(client, runtime, params_for(alex.phone_e164, "STOP")))
    db.expire_all()
    partners = db.scalars(select(Partner).where(Partner.couple_id == couple.id).order_by(Partner.position)).all()
    assert [p.consent(Channel.SMS) for p in partners] == [ConsentState.OPTED_OUT, ConsentState.PENDING]


def test_database_down_spools_the_text_and_the_scheduler_replays_it(
    client: FlaskClient, db: Session, runtime: Runtime
) -> None:
    couple = make_couple(db)
    db.commit()
    alex, sam = couple.partners
    assert alex.phone_e164
    params = params_for(alex.phone_e164, "STOP")
    response = post_while_the_database_is_down(client, runtime, params)
    assert message_of(response) is None, "Twilio does not retry, so the text is accepted and kept"
    assert spool.depth(runtime.redis) == 1
    raw = runtime.redis.lindex(spool.SPOOL_KEY, 0)
    assert raw is not None and alex.phone_e164.encode() not in raw  # encrypted in Redis too
    assert drain_spool(runtime) == 1 and drain_spool(runtime) == 0
    session = db_session()
    assert session.get(Partner, alex.id).consent(Channel.SMS) is ConsentState.OPTED_OUT  # type: ignore[union-attr]
    assert session.get(Partner, sam.id).consent(Channel.SMS) is ConsentState.CONFIRMED  # type: ignore[union-attr]
    # The replay went through the same dedupe: Twilio's own retry of it now changes nothing.
    assert message_of(post(client, runtime, params)) is None
    answers = session.scalars(select(Nudge).where(Nudge.kind == NudgeKind.KEYWORD_ANSWER)).all()
    assert answers == [], "an opted-out number gets no late answer (Twilio confirms a STOP itself)"


def post_while_the_database_is_down(client: FlaskClient, runtime: Runtime, params: dict[str, str]) -> Any:
    bound = runtime.database.session_factory
    close_db_session()
    # A real driver failing to reach a real (absent) server: nothing listens on port 1.
    down = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/closer?connect_timeout=2")
    runtime.database.session_factory = sessionmaker(bind=down)
    try:
        return post(client, runtime, params)
    finally:
        close_db_session()
        runtime.database.session_factory = bound
        down.dispose()


def test_a_spooled_keyword_gets_its_answer_as_a_message_once_replayed(
    client: FlaskClient, db: Session, runtime: Runtime
) -> None:
    couple = make_couple(db)
    alex = couple.partners[0]
    alex.quiet_start = alex.quiet_end = time(0, 0)
    db.commit()
    assert alex.phone_e164
    assert message_of(post_while_the_database_is_down(client, runtime, params_for(alex.phone_e164, "LOG"))) is None
    assert drain_spool(runtime) == 1
    session = db_session()
    answers = session.scalars(select(Nudge).where(Nudge.kind == NudgeKind.KEYWORD_ANSWER)).all()
    assert len(answers) == 1 and answers[0].partner_id == alex.id and answers[0].channel == Channel.SMS
    assert answers[0].status == NudgeStatus.QUEUED and answers[0].body_text
    assert log_url(runtime.settings, alex.log_token) in answers[0].body_text
    assert Queue(QUEUE_SEND, connection=runtime.redis).count == 1, "enqueued after the replay's commit"


def test_the_empty_answer_is_what_the_twilio_sdk_renders() -> None:
    from twilio.twiml.messaging_response import MessagingResponse

    from service.web.webhooks.twilio_sms import EMPTY_TWIML, twiml

    assert str(MessagingResponse()) == EMPTY_TWIML
    assert twiml(None).get_data(as_text=True) == str(MessagingResponse())
    with_text = MessagingResponse()
    with_text.message("Paused & <quiet>")
    assert twiml("Paused & <quiet>").get_data(as_text=True) == str(with_text)


def test_a_number_is_normalized_the_same_way_every_time() -> None:
    from service.web.webhooks.twilio_sms import _e164

    for _ in range(2):  # the second answer comes from the cache
        assert _e164("+1 (415) 555-0123") == "+14155550123"
        assert _e164("+14155550123") == "+14155550123"
        assert _e164("+1415") is None
        assert _e164("14155550123") is None


def test_provider_webhooks_skip_the_rate_limiter_and_pages_do_not(client: FlaskClient) -> None:
    from service.web.limits import _provider_webhook

    with client.application.test_request_context(PATH, method="POST"):
        assert _provider_webhook()
    with client.application.test_request_context("/signup", method="POST"):
        assert not _provider_webhook()


def test_a_strangers_signup_cannot_take_a_partners_yes_replies_or_log(
    client: FlaskClient, db: Session, runtime: Runtime
) -> None:
    """Through the webhook: a stranger invites a confirmed partner's number; the partner's "Yes!" to their
    prompt and their next reply land in their own couple's log, and LOG answers with their own link."""
    from datetime import timedelta

    from tests.factories import make_sent_prompt

    couple = make_couple(db, email=False, start=datetime.now(UTC) - timedelta(days=3))
    partner = couple.partners[0]
    assert partner.phone_e164 is not None
    stranger = sign_up(db, SignupRequest(
        signer=PartnerRequest("Kim", next_phone(), None, "America/New_York"),
        invited=PartnerRequest("Alex", partner.phone_e164, None, "America/New_York"),
        preferred_time=time(19, 0), program_key="sampler",
    ), settings=runtime.settings, programs=runtime.programs, now=datetime.now(UTC))
    held = stranger.couple.partners[1]
    prompt = make_sent_prompt(db, partner, sent_at=datetime.now(UTC) - timedelta(minutes=30))
    db.commit()
    assert message_of(post(client, runtime, params_for(partner.phone_e164, "Yes!"))) is None
    assert message_of(post(client, runtime, params_for(partner.phone_e164, "we should go back there"))) is None
    log = message_of(post(client, runtime, params_for(partner.phone_e164, "LOG")))
    assert log is not None and log_url(runtime.settings, partner.log_token) in log
    assert held.log_token not in log
    db.expire_all()
    entries = db.scalars(select(LogEntry).where(LogEntry.partner_id.in_([partner.id, held.id]))
                         .order_by(LogEntry.id)).all()
    assert [(e.couple_id, e.nudge_id, e.body) for e in entries] == [
        (couple.id, prompt.id, "Yes!"), (couple.id, prompt.id, "we should go back there")]
    assert held.sms_consent is ConsentState.NONE
    assert db.get(Couple, stranger.couple.id).enrollments[0].status == EnrollmentStatus.PENDING  # type: ignore[union-attr]
