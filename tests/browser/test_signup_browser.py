"""A couple signs up in headless Chromium, with and without JavaScript, and a partner confirms by email."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from service.domain.signup import PartnerRequest, SignupRequest, sign_up
from service.domain.tokens import make_token
from service.models import Channel, ConsentState, Couple, Partner
from service.web.context import runtime_of
from tests.browser.conftest import PHONE_VIEWPORT, LiveServer

pytestmark = pytest.mark.browser

_lines = itertools.count(1200)


def a_mobile_number() -> str:
    return f"(415) 555-{next(_lines) % 10000:04d}"


def unlabelled_controls(page: Page) -> list[str]:
    return list(page.evaluate("""() => Array.from(document.querySelectorAll('input, select, textarea'))
        .filter(el => el.type !== 'hidden' && el.labels.length === 0)
        .map(el => el.name || el.id)"""))


def newest_couple(live_server: LiveServer) -> tuple[str, list[tuple[str, str | None, str | None, str]]]:
    with live_server.session() as session:
        couple = session.scalars(select(Couple).order_by(Couple.id.desc())).first()
        assert couple is not None
        program = couple.enrollments[0].program_key
        return program, [(p.first_name, p.phone_e164, p.email, p.timezone) for p in couple.partners]


def test_a_couple_signs_up_in_a_real_browser(live_server: LiveServer, page: Page, artifacts_dir: Path) -> None:
    page.goto(live_server.url + "/")
    expect(page.get_by_role("heading", name="Small prompts, closer days")).to_be_visible()
    assert unlabelled_controls(page) == []
    # signup.js set both zones from the browser (this context runs in Chicago); they stay editable.
    expect(page.locator("#signer_timezone")).to_have_value("America/Chicago")
    expect(page.locator("#invited_timezone")).to_have_value("America/Chicago")
    expect(page.locator("input[name=program]:checked")).to_have_value("sampler")

    page.get_by_label("Your first name").fill("Alex")
    page.get_by_label("Your mobile number").fill(a_mobile_number())
    page.get_by_label("Your email").fill("alex@example.com")
    page.get_by_label("Your partner's first name").fill("Sam")
    page.get_by_label("Their email").fill("sam@example.com")
    page.get_by_label("Their time zone").select_option("Europe/London")  # a long-distance couple
    page.get_by_label("Time of day for your prompts").fill("19:30")
    page.locator("input[name=program][value=talk]").check()
    expect(page.locator("#disclosure-program")).to_have_text("Talking and space")
    page.screenshot(path=str(artifacts_dir / "signup-form-filled.png"), full_page=True)

    page.get_by_role("button", name="Sign us up").click()
    page.wait_for_url("**/signup/sent")
    expect(page.get_by_role("heading", name="Check your phones")).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "signup-sent.png"), full_page=True)

    program, partners = newest_couple(live_server)
    assert program == "talk"
    assert [(name, zone) for name, _phone, _email, zone in partners] == [
        ("Alex", "America/Chicago"), ("Sam", "Europe/London")]
    assert partners[0][1] is not None and partners[0][1].startswith("+1415555")
    assert partners[1][2] == "sam@example.com"


def test_the_form_works_without_javascript_and_keeps_what_was_typed(
    live_server: LiveServer, browser: Browser, artifacts_dir: Path
) -> None:
    context = browser.new_context(viewport=PHONE_VIEWPORT, java_script_enabled=False, timezone_id="Asia/Tokyo")
    try:
        page = context.new_page()
        page.goto(live_server.url + "/")
        # Without JavaScript the server-side default zone stands.
        expect(page.locator("#signer_timezone")).to_have_value("America/New_York")
        page.get_by_label("Your first name").fill("Alex")
        page.get_by_label("Your mobile number").fill(a_mobile_number())
        page.get_by_label("Your partner's first name").fill("Sam")
        page.get_by_label("Their mobile number").fill("(800) 555-0199")  # toll-free: refused
        page.get_by_role("button", name="Sign us up").click()
        expect(page.locator("#invited_phone-error")).to_contain_text("Enter a mobile number")
        expect(page.locator("#invited_phone")).to_have_value("(800) 555-0199")
        expect(page.locator("#invited_phone")).to_have_attribute("aria-invalid", "true")
        expect(page.get_by_label("Your first name")).to_have_value("Alex")
        expect(page.get_by_role("alert")).to_contain_text("Their mobile number")
        page.screenshot(path=str(artifacts_dir / "signup-form-error-nojs.png"), full_page=True)

        page.get_by_label("Their mobile number").fill(a_mobile_number())
        page.get_by_role("button", name="Sign us up").click()
        page.wait_for_url("**/signup/sent")
        expect(page.get_by_role("heading", name="Check your phones")).to_be_visible()
    finally:
        context.close()
    _program, partners = newest_couple(live_server)
    assert [zone for *_rest, zone in partners] == ["America/New_York", "America/New_York"]


def test_a_partner_confirms_by_the_email_link(live_server: LiveServer, page: Page, artifacts_dir: Path) -> None:
    runtime = runtime_of(live_server.app)
    with live_server.session() as session:
        result = sign_up(session, SignupRequest(
            signer=PartnerRequest("Alex", None, "alex@example.com", "America/New_York"),
            invited=PartnerRequest("Sam", None, "sam@example.com", "America/New_York"),
            preferred_time=time(19, 0), program_key="empathy", ip="127.0.0.1", user_agent="test",
        ), settings=runtime.settings, programs=runtime.programs, now=datetime.now(UTC))
        invited_id = result.couple.partners[1].id
    token = make_token(runtime.settings.secret_key, "confirm", invited_id)

    page.goto(f"{live_server.url}/confirm/{token}")
    expect(page.get_by_role("heading", name="Say yes to Hearing each other?")).to_be_visible()
    with live_server.session() as session:
        partner = session.get(Partner, invited_id)
        assert partner is not None and partner.consent(Channel.EMAIL) is ConsentState.PENDING
    page.get_by_role("button", name="Yes, count me in").click()
    expect(page.get_by_role("heading", name="You're in")).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "confirm-email-done.png"), full_page=True)
    with live_server.session() as session:
        partner = session.get(Partner, invited_id)
        assert partner is not None and partner.consent(Channel.EMAIL) is ConsentState.CONFIRMED
    page.goto(f"{live_server.url}/confirm/{token}")
    expect(page.get_by_role("heading", name="You've already said yes")).to_be_visible()
