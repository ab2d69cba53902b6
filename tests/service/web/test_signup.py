"""The signup form, its abuse defenses and email confirmation, through the real app, database and Redis."""

from __future__ import annotations

import itertools
import re
import time as clock
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import phonenumbers
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from rq import Queue
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from service.domain.tokens import CONFIRM_MAX_AGE, make_token
from service.models import (
    Channel,
    ConsentRecord,
    ConsentState,
    Couple,
    Enrollment,
    EnrollmentStatus,
    Nudge,
    NudgeKind,
    Partner,
)
from service.queues import QUEUE_HIGH
from service.runtime import Runtime
from service.web.phone import textable_phone

FIELDS = ("signer_name", "signer_phone", "signer_email", "signer_timezone", "invited_name", "invited_phone",
          "invited_email", "invited_timezone", "preferred_time", "program", "opt_in_ack", "website")
_exchanges = itertools.count(201)
_lines = itertools.count(100)
_visitors = itertools.count(1)


def fresh_phone(prefix: str | None = None) -> str:
    """A valid US mobile-capable number; without `prefix`, each lands in a new exchange (a new prefix)."""
    while True:
        block = prefix or f"+1212{next(_exchanges) % 800 + 200:03d}"
        number = f"{block}{next(_lines) % 10000:04d}"
        if textable_phone(number, ("US", "CA")) == number:
            return number


def csrf_token(client: FlaskClient) -> str:
    page = client.get("/").get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert match
    return match.group(1)


def form_data(client: FlaskClient, **changes: str) -> dict[str, str]:
    data = {
        "csrf_token": csrf_token(client), "signer_name": "Alex", "signer_phone": "", "signer_email": "",
        "signer_timezone": "America/New_York", "invited_name": "Sam", "invited_phone": "", "invited_email": "",
        "invited_timezone": "America/Chicago", "preferred_time": "19:00", "program": "sampler", "website": "",
    }
    data.update(changes)
    if not (data["signer_phone"] or data["signer_email"]) and "signer_phone" not in changes:
        data["signer_phone"] = fresh_phone()
    if not (data["invited_phone"] or data["invited_email"]) and "invited_phone" not in changes:
        data["invited_email"] = f"sam.{uuid.uuid4().hex[:8]}@example.com"
    return data


def post_signup(client: FlaskClient, data: dict[str, str], ip: str | None = None) -> Any:
    """POST /signup from `ip`, by default a new visitor each time (so only tests about limits meet them)."""
    n = next(_visitors)
    ip = ip or f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
    return client.post("/signup", data=data, environ_base={"REMOTE_ADDR": ip})


def couples(db: Session) -> int:
    return int(db.scalar(select(func.count(Couple.id))) or 0)


@pytest.fixture()
def override(runtime: Runtime) -> Iterator[Any]:
    """Change settings for one test (the limit functions read them per request)."""
    original = runtime.settings

    def apply(**changes: Any) -> None:
        runtime.settings = original.with_overrides(**changes)

    yield apply
    runtime.settings = original


class FormAudit(HTMLParser):
    """Collects what an accessibility review of the form checks: labels, ids, inline code."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.inline_scripts = 0
        self.style_attributes = 0
        self.scripts: list[str] = []
        self._in_label = 0
        self._wrapped: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if "style" in values:
            self.style_attributes += 1
        if tag == "label":
            self._in_label += 1
            if values.get("for"):
                self.label_for.add(values["for"] or "")
        if tag in ("input", "select", "textarea") and values.get("type") not in ("hidden", "submit"):
            self.controls.append(values)
        if tag == "script":
            if values.get("src"):
                self.scripts.append(values["src"] or "")
            else:
                self.inline_scripts += 1
        if tag == "style":
            self.style_attributes += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._in_label -= 1


def test_the_form_is_labelled_and_carries_the_consent_disclosure(client: FlaskClient, runtime: Runtime) -> None:
    response = client.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    audit = FormAudit()
    audit.feed(page)
    names = {c.get("name") for c in audit.controls}
    assert set(FIELDS) <= names
    for control in audit.controls:
        assert control.get("id") in audit.label_for, f"{control.get('name')} has no label"
    assert audit.inline_scripts == 0 and audit.style_attributes == 0, "CSP allows no inline code or styles"
    assert audit.scripts == ["/static/signup.js"]
    disclosure = re.search(r'<p class="disclosure" id="disclosure">(.*?)</p>', page, re.S)
    assert disclosure
    text = " ".join(disclosure.group(1).split())
    assert "A month of closeness" in text and ">7</span> messages a week" in text
    assert "Msg &amp; data rates may apply" in text and "Reply STOP to cancel, HELP for help" in text
    assert 'href="/terms"' in text and 'href="/privacy"' in text
    assert 'href="/programs"' in page and 'href="/programs#intimacy"' in page
    # The opt-in program is there, but never the default.
    checked = re.findall(r'<input type="radio" name="program" id="[^"]+" value="([a-z-]+)" checked', page)
    assert checked == ["sampler"]
    assert 'value="intimacy"' in page
    # Time zones: a server-side default the browser script may replace, and the full IANA list.
    assert '<option selected value="America/New_York">' in page and 'value="Asia/Kolkata"' in page
    assert 'data-browser-default="true"' in page


def test_a_valid_signup_creates_the_couple_and_enqueues_confirmations(
    client: FlaskClient, db: Session, runtime: Runtime
) -> None:
    phone = fresh_phone()
    response = post_signup(client, form_data(client, signer_phone=f"({phone[2:5]}) {phone[5:8]}-{phone[8:]}",
                                             signer_email="Alex@Example.com", invited_email="sam@example.com"),
                           ip="198.51.100.10")
    assert response.status_code == 303 and response.headers["Location"].endswith("/signup/sent")
    couple = db.scalars(select(Couple).order_by(Couple.id.desc())).first()
    assert couple is not None
    signer, invited = couple.partners
    assert signer.phone_e164 == phone and signer.email == "Alex@example.com"
    assert invited.timezone == "America/Chicago" and invited.phone_e164 is None
    assert couple.signup_ip == "198.51.100.10"
    record = db.scalars(select(ConsentRecord).where(ConsentRecord.partner_id == signer.id)).first()
    assert record is not None and record.source_detail is not None
    assert record.source_detail.startswith("ip=198.51.100.10; ua=")
    nudges = db.scalars(select(Nudge).where(Nudge.kind == NudgeKind.CONFIRMATION)).all()
    assert len(nudges) == 3
    assert Queue(QUEUE_HIGH, connection=runtime.redis).count == 1  # one batch job holding all three
    sent = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Check your phones" in sent and "Reply <strong>YES</strong>" in sent


def test_errors_sit_next_to_their_fields_and_the_form_keeps_what_was_typed(client: FlaskClient, db: Session) -> None:
    before = couples(db)
    response = post_signup(client, form_data(client, signer_name="Alex", signer_phone="(415) 555-01",
                                             invited_email="sam@example", preferred_time="03:00"))
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert couples(db) == before
    assert 'value="(415) 555-01"' in page and 'value="sam@example"' in page and 'value="Alex"' in page
    assert 'aria-invalid="true"' in page
    assert re.search(r'aria-describedby="signer_phone-hint signer_phone-error"[^>]*id="signer_phone"', page)
    assert '<p class="error" id="signer_phone-error">Enter a mobile number from the US or Canada' in page
    assert '<p class="error" id="invited_email-error">Enter an email address' in page
    assert '<p class="error" id="preferred_time-error">Choose a time between 08:00 and 21:30' in page
    assert 'role="alert"' in page and 'href="#signer_phone"' in page


@pytest.mark.parametrize("number_type", [
    phonenumbers.PhoneNumberType.TOLL_FREE,
    phonenumbers.PhoneNumberType.PREMIUM_RATE,
])
def test_toll_free_and_premium_numbers_are_refused(
    client: FlaskClient, db: Session, number_type: phonenumbers.PhoneNumberType
) -> None:
    example = phonenumbers.example_number_for_type("US", number_type)
    raw = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
    response = post_signup(client, form_data(client, invited_phone=raw))
    assert response.status_code == 400
    assert '<p class="error" id="invited_phone-error">Enter a mobile number' in response.get_data(as_text=True)


def test_landlines_and_numbers_outside_allowed_countries_are_refused(
    client: FlaskClient, db: Session, override: Any
) -> None:
    gb_mobile = phonenumbers.example_number_for_type("GB", phonenumbers.PhoneNumberType.MOBILE)
    gb_landline = phonenumbers.example_number_for_type("GB", phonenumbers.PhoneNumberType.FIXED_LINE)
    as_e164 = [phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164) for n in (gb_mobile, gb_landline)]
    response = post_signup(client, form_data(client, invited_phone=as_e164[0]))
    assert response.status_code == 400, "GB is not in ALLOWED_COUNTRIES"
    override(allowed_countries=("US", "CA", "GB"))
    response = post_signup(client, form_data(client, invited_phone=as_e164[1]))
    assert response.status_code == 400, "a landline cannot confirm by text"
    assert "Enter a mobile number from the US, Canada or the UK" in response.get_data(as_text=True)
    assert post_signup(client, form_data(client, invited_phone=as_e164[0])).status_code == 303


def test_each_partner_needs_a_channel_of_their_own(client: FlaskClient) -> None:
    page = post_signup(client, form_data(client, invited_phone="", invited_email="")).get_data(as_text=True)
    assert "so your partner can confirm" in page
    phone = fresh_phone()
    response = post_signup(client, form_data(client, signer_phone=phone, invited_phone=phone))
    assert response.status_code == 400
    assert "Each of you needs your own number" in response.get_data(as_text=True)


def test_the_opt_in_program_needs_a_deliberate_tick(client: FlaskClient, db: Session) -> None:
    response = post_signup(client, form_data(client, program="intimacy"))
    assert response.status_code == 400
    assert "Feeling close is opt-in: tick this box" in response.get_data(as_text=True)
    assert post_signup(client, form_data(client, program="intimacy", opt_in_ack="y")).status_code == 303
    assert db.scalars(select(Enrollment.program_key).order_by(Enrollment.id.desc())).first() == "intimacy"


def test_names_cannot_carry_links_or_numbers(client: FlaskClient) -> None:
    for name in ("WIN $100 at evil.example", "http://x.example", "Alex2", "a" * 31):
        response = post_signup(client, form_data(client, signer_name=name))
        assert response.status_code == 400, name
    for name in ("Anne-Marie", "O'Brien", "José", "Zoë", "Søren", "Mary Jane", "李小龍"):
        assert post_signup(client, form_data(client, signer_name=name)).status_code == 303, name


@pytest.mark.parametrize("name", [
    "Go evil.com now", "bit.ly", "Visit evil.com", "Closer Support", "www.x.io", "http://a",
    "+1 415 555 0100", "a@b.co", "CLOSER", "Closer Team", "Ana Maria Lucia Sofia",
])
def test_a_name_that_reads_as_a_link_a_number_or_our_brand_is_refused_next_to_its_field(
    client: FlaskClient, db: Session, name: str
) -> None:
    before = couples(db)
    response = post_signup(client, form_data(client, invited_name=name))
    assert response.status_code == 400, name
    assert couples(db) == before
    page = response.get_data(as_text=True)
    error = re.search(r'<p class="error" id="invited_name-error">([^<]+)</p>', page)
    assert error is not None, name
    assert "name" in error.group(1).lower()


@pytest.mark.parametrize("name", ["Mary-Jane", "José", "Anh", "O'Brien", "Jean Luc", "Zoë", "Nguyễn Văn An"])
def test_real_names_are_accepted(client: FlaskClient, name: str) -> None:
    assert post_signup(client, form_data(client, invited_name=name)).status_code == 303, name


def test_without_csrf_token_nothing_happens(client: FlaskClient, db: Session) -> None:
    before = couples(db)
    data = form_data(client)
    data.pop("csrf_token")
    response = post_signup(client, data)
    assert response.status_code == 400 and "This form has expired" in response.get_data(as_text=True)
    assert couples(db) == before


def test_the_honeypot_blocks_without_saying_why(client: FlaskClient, db: Session) -> None:
    before = couples(db)
    response = post_signup(client, form_data(client, website="https://spam.example"))
    assert response.status_code == 429
    page = response.get_data(as_text=True)
    assert "We couldn't sign you up just now" in page and "honeypot" not in page.lower()
    assert couples(db) == before


def blocked_text(response: Any) -> str:
    return re.sub(r'name="csrf_token"[^>]*', "", response.get_data(as_text=True))


def test_a_burst_from_one_ip_is_cut_off_at_the_limit(client: FlaskClient, db: Session, runtime: Runtime) -> None:
    allowed = int(runtime.settings.signup_rate_limit.split()[0])  # "5 per minute;..."
    before = couples(db)
    statuses = [post_signup(client, form_data(client, signer_phone=fresh_phone(), invited_phone=fresh_phone()),
                            ip="203.0.113.50").status_code for _ in range(allowed * 4)]
    assert statuses == [303] * allowed + [429] * (allowed * 3)
    assert couples(db) == before + allowed
    # Another visitor is not affected.
    assert post_signup(client, form_data(client), ip="203.0.113.51").status_code == 303


def test_a_burst_at_one_number_prefix_from_many_ips_is_cut_off(
    client: FlaskClient, db: Session, runtime: Runtime
) -> None:
    allowed = int(runtime.settings.signup_rate_limit.split()[0])
    prefix = "+1415555"
    before = couples(db)
    visitors = (f"192.0.2.{i}" for i in range(1, 255))

    def attempt(**changes: str) -> int:
        data = form_data(client, signer_phone="", signer_email=f"alex.{uuid.uuid4().hex[:8]}@example.com",
                         invited_phone=fresh_phone(prefix), **changes)
        return int(post_signup(client, data, ip=next(visitors)).status_code)

    # Attempts that fail validation send nothing, so they do not use up the prefix's allowance.
    assert [attempt(preferred_time="nope") for _ in range(allowed * 2)] == [400] * allowed * 2
    assert [attempt() for _ in range(allowed * 3)] == [303] * allowed + [429] * (allowed * 2)
    assert couples(db) == before + allowed
    sms = db.scalar(select(func.count(Nudge.id)).join(Partner, Partner.id == Nudge.partner_id)
                    .where(Partner.phone_e164.startswith(prefix), Nudge.channel == Channel.SMS))
    assert sms == allowed
    # Another prefix is not affected.
    other = form_data(client, invited_phone=fresh_phone("+1415666"))
    assert post_signup(client, other, ip=next(visitors)).status_code == 303


def test_the_daily_cap_per_number_holds_whatever_the_rate_limits(
    client: FlaskClient, db: Session, runtime: Runtime, override: Any
) -> None:
    override(signup_rate_limit="1000 per minute")
    target = fresh_phone()
    cap = runtime.settings.confirmation_texts_per_number_per_day
    responses = []
    for i in range(cap + 3):
        responses.append(post_signup(client, form_data(client, invited_phone=target), ip=f"192.0.2.{i + 1}"))
        for enrollment in db.scalars(select(Enrollment).join(Partner, Partner.couple_id == Enrollment.couple_id)
                                     .where(Partner.phone_e164 == target)):
            enrollment.status = EnrollmentStatus.CANCELLED  # else the one-couple rule holds the next signup
        db.flush()
    assert [r.status_code for r in responses] == [303] * cap + [429] * 3
    texts = db.scalar(select(func.count(Nudge.id)).join(Partner, Partner.id == Nudge.partner_id)
                      .where(Partner.phone_e164 == target, Nudge.channel == Channel.SMS))
    assert texts == cap


def test_every_blocked_attempt_looks_the_same(client: FlaskClient, db: Session, override: Any) -> None:
    honeypot = post_signup(client, form_data(client, website="x"), ip="192.0.2.90")
    override(signup_rate_limit="1 per minute")
    post_signup(client, form_data(client), ip="192.0.2.91")
    rate_limited = post_signup(client, form_data(client), ip="192.0.2.91")
    override(signup_rate_limit="1000 per minute", confirmation_texts_per_number_per_day=1)
    target = fresh_phone()
    post_signup(client, form_data(client, invited_phone=target), ip="192.0.2.92")
    capped = post_signup(client, form_data(client, invited_phone=target), ip="192.0.2.93")
    assert honeypot.status_code == rate_limited.status_code == capped.status_code == 429
    assert blocked_text(honeypot) == blocked_text(rate_limited) == blocked_text(capped)


VALUES = st.one_of(
    st.text(max_size=80),
    st.text(max_size=2000),
    st.sampled_from(["", " ", "\x00", "+1", "+999999999999999999999", "9" * 5000, "24:00", "23:59:60", "y",
                     "intimacy", "America/New_York", "../../etc/passwd", "<script>alert(1)</script>",
                     "a@b", "@", "x" * 300 + "@example.com", "+1 (800) 555-0199", "Etc/GMT+5", "US/Eastern"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_any_value_in_any_field_gets_a_clear_answer_never_a_500(
    client: FlaskClient, runtime: Runtime, field: str, value: str
) -> None:
    runtime.redis.flushdb()
    response = post_signup(client, form_data(client, **{field: value}))
    assert response.status_code in (303, 400, 429), (field, value, response.status_code)
    if response.status_code == 400:
        page = response.get_data(as_text=True)
        assert 'class="error"' in page and 'role="alert"' in page


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=400))
def test_undecodable_form_bodies_get_a_4xx(client: FlaskClient, runtime: Runtime, raw: bytes) -> None:
    runtime.redis.flushdb()
    token = csrf_token(client).encode()
    response = client.post("/signup", data=b"csrf_token=" + token + b"&" + raw,
                           content_type="application/x-www-form-urlencoded")
    assert 400 <= response.status_code < 500


def confirm_link(db: Session, runtime: Runtime, partner: Partner) -> str:
    return "/confirm/" + make_token(runtime.settings.secret_key, "confirm", partner.id)


def signed_up(client: FlaskClient, db: Session, **changes: str) -> Couple:
    assert post_signup(client, form_data(client, **changes)).status_code == 303
    couple = db.scalars(select(Couple).order_by(Couple.id.desc())).first()
    assert couple is not None
    return couple


def page_csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert match
    return match.group(1)


def test_email_confirmation_needs_a_press_not_just_a_visit(client: FlaskClient, db: Session, runtime: Runtime) -> None:
    couple = signed_up(client, db, invited_email="sam@example.com")
    invited = couple.partners[1]
    link = confirm_link(db, runtime, invited)
    shown = client.get(link)
    assert shown.status_code == 200
    page = shown.get_data(as_text=True)
    assert "Yes, count me in" in page and "A month of closeness" in page
    db.expire_all()
    assert invited.consent(Channel.EMAIL) is ConsentState.PENDING, "a link scanner's GET confirms nothing"
    assert client.post(link, data={}).status_code == 400, "no CSRF token, no confirmation"
    confirmed = client.post(link, data={"csrf_token": page_csrf(page)},
                            environ_base={"REMOTE_ADDR": "198.51.100.77"}, headers={"User-Agent": "TestBrowser/1"})
    assert confirmed.status_code == 200 and "You're in" in confirmed.get_data(as_text=True)
    db.expire_all()
    assert invited.consent(Channel.EMAIL) is ConsentState.CONFIRMED
    record = db.scalars(select(ConsentRecord).where(ConsentRecord.partner_id == invited.id,
                                                    ConsentRecord.action == "confirmed")).one()
    assert (record.source, record.channel) == ("email", "email")
    assert record.source_detail == "link; ip=198.51.100.77; ua=TestBrowser/1"
    again = client.get(link)
    assert again.status_code == 200 and "You've already said yes" in again.get_data(as_text=True)


def test_expired_and_broken_links_say_so(client: FlaskClient, db: Session, runtime: Runtime) -> None:
    couple = signed_up(client, db, invited_email="sam@example.com")
    invited = couple.partners[1]

    class LongAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock.time()) - CONFIRM_MAX_AGE - 60

    old = URLSafeTimedSerializer(runtime.settings.secret_key, salt="closer.confirm", signer=LongAgo).dumps(invited.id)
    expired = client.get(f"/confirm/{old}")
    assert expired.status_code == 410 and "This link has expired" in expired.get_data(as_text=True)
    good = confirm_link(db, runtime, invited)
    tampered = client.get(good[:-2] + ("AA" if not good.endswith("AA") else "BB"))
    assert tampered.status_code == 404 and "This link doesn't work" in tampered.get_data(as_text=True)
    unsubscribe_token = make_token(runtime.settings.secret_key, "unsubscribe", invited.id)
    assert client.get(f"/confirm/{unsubscribe_token}").status_code == 404, "tokens of another purpose never confirm"
    assert client.get("/confirm/" + "x" * 600).status_code == 404
    invited.email_consent = ConsentState.OPTED_OUT
    db.commit()
    assert client.get(good).status_code == 410


def test_both_partners_confirming_by_email_start_the_program(
    client: FlaskClient, db: Session, runtime: Runtime
) -> None:
    couple = signed_up(client, db, signer_phone="", signer_email="alex@example.com", invited_email="sam@example.com")
    for partner in couple.partners:
        link = confirm_link(db, runtime, partner)
        token = page_csrf(client.get(link).get_data(as_text=True))
        page = client.post(link, data={"csrf_token": token}).get_data(as_text=True)
    assert "Your first prompt arrives at your chosen time" in page
    db.expire_all()
    assert couple.enrollments[0].status == EnrollmentStatus.ACTIVE


def test_a_couple_confirms_by_sms_yes_and_by_email_link(client: FlaskClient, db: Session, runtime: Runtime) -> None:
    phone = fresh_phone()
    couple = signed_up(client, db, signer_phone=phone, signer_email="", invited_email="sam@example.com")
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "AccountSid": "AC" + uuid.uuid4().hex, "From": phone,
              "To": "+15005550006", "Body": " yes ", "NumMedia": "0"}
    url = runtime.settings.public_base_url + "/webhooks/twilio/sms"
    signature = RequestValidator(runtime.settings.twilio_auth_token).compute_signature(url, params)
    answer = client.post("/webhooks/twilio/sms", data=params, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 200
    assert "in for A month of closeness" in answer.get_data(as_text=True)
    db.expire_all()
    assert couple.enrollments[0].status == EnrollmentStatus.PENDING
    link = confirm_link(db, runtime, couple.partners[1])
    client.post(link, data={"csrf_token": page_csrf(client.get(link).get_data(as_text=True))})
    db.expire_all()
    assert couple.enrollments[0].status == EnrollmentStatus.ACTIVE
    # A partner who said yes by text and adds email later still sees which program it is.
    later = signed_up(client, db, signer_phone=fresh_phone(), signer_email="alex.later@example.com",
                      invited_email="sam.later@example.com")
    for partner in later.partners:
        link = confirm_link(db, runtime, partner)
        client.post(link, data={"csrf_token": page_csrf(client.get(link).get_data(as_text=True))})
    db.expire_all()
    assert later.enrollments[0].status == EnrollmentStatus.ACTIVE
    assert later.partners[0].consent(Channel.SMS) is ConsentState.PENDING
    later.partners[0].email_consent = ConsentState.PENDING  # as if only the text had been confirmed
    db.commit()
    page = client.get(confirm_link(db, runtime, later.partners[0])).get_data(as_text=True)
    assert "Say yes to A month of closeness?" in page
    assert couple.enrollments[0].started_at is not None
    assert couple.enrollments[0].started_at <= datetime.now(UTC)


def test_inviting_someone_already_in_a_couple_looks_like_any_signup(client: FlaskClient, db: Session) -> None:
    """The signer sees exactly what an accepted signup shows; the partner already in a couple gets nothing."""
    from tests.factories import make_couple

    enrolled = make_couple(db, email=False).partners[0]
    assert enrolled.phone_e164 is not None
    answers = []
    for invited in (fresh_phone(), enrolled.phone_e164):
        response = post_signup(client, form_data(client, signer_phone=fresh_phone(), invited_phone=invited))
        answers.append((response.status_code, response.headers.get("Location"),
                        client.get(response.headers["Location"]).get_data(as_text=True)))
    assert answers[0] == answers[1] and answers[0][0] == 303
    asked = db.scalar(select(func.count(Nudge.id)).join(Partner, Partner.id == Nudge.partner_id)
                      .where(Partner.phone_e164 == enrolled.phone_e164))
    assert asked == 0
