"""The shared log in a real browser: a phone-sized timeline, a hidden reveal answer, and erasing my words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from service.models import LogEntry
from tests.browser.conftest import LiveServer
from tests.factories import make_couple, make_sent_prompt

pytestmark = pytest.mark.browser


def test_log_page_on_a_phone(live_server: LiveServer, page: Page, artifacts_dir: Path) -> None:
    now = datetime.now(UTC)
    with live_server.session() as db:
        couple = make_couple(db, names=("Alex", "Sam"), start=now - timedelta(days=6))
        alex, sam = couple.partners
        day1 = make_sent_prompt(db, alex, step_day=1, sent_at=now - timedelta(days=4),
                                body="Alex, what's one small thing Sam did this week that made your day easier?")
        make_sent_prompt(db, sam, step_day=1, sent_at=now - timedelta(days=4),
                         body="Sam, what's one small thing Alex did this week that made your day easier?")
        reveal_alex = make_sent_prompt(db, alex, step_day=5, sent_at=now - timedelta(hours=3))
        make_sent_prompt(db, sam, step_day=5, sent_at=now - timedelta(hours=3))
        db.add_all([
            LogEntry(couple_id=couple.id, partner_id=alex.id, nudge_id=day1.id, channel="sms",
                     provider_message_id="SMb1", body="You took the bins out before I asked <3",
                     received_at=now - timedelta(days=4, hours=-1)),
            LogEntry(couple_id=couple.id, partner_id=alex.id, nudge_id=reveal_alex.id, channel="sms",
                     provider_message_id="SMb2", body="A secret until Sam answers",
                     received_at=now - timedelta(hours=2)),
        ])
        sam_token, alex_token = sam.log_token, alex.log_token

    page.goto(f"{live_server.url}/log/{sam_token}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Sam")
    expect(page.get_by_text("You took the bins out before I asked <3")).to_be_visible()
    expect(page.get_by_text("Their words appear here once you've answered too")).to_be_visible()
    assert "A secret until Sam answers" not in page.content()
    page.screenshot(path=str(artifacts_dir / "log-page-phone.png"), full_page=True)

    page.goto(f"{live_server.url}/log/{alex_token}")
    expect(page.get_by_text("A secret until Sam answers")).to_be_visible()
    page.get_by_role("button", name="Erase my answers").click()
    expect(page.get_by_role("status")).to_contain_text("Erased your 2 answers")
    assert "You took the bins out" not in page.content()
    page.screenshot(path=str(artifacts_dir / "log-page-after-erase.png"), full_page=True)
