"""An operator logs in to /ops in headless Chromium, watches a real send land on the chart, pauses
sending and retries a failed job."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from rq import Queue, SimpleWorker
from rq.registry import FailedJobRegistry
from sqlalchemy import select
from werkzeug.security import generate_password_hash

from service.domain.planner import SENDING_PAUSED_FLAG
from service.models import ControlFlag, Couple, Nudge, NudgeKind, NudgeStatus, OperatorAction, OutboxMessage
from service.queues import QUEUE_SEND, enqueue_nudges
from service.runtime import Runtime
from tests.browser.conftest import LiveServer
from tests.factories import make_couple

pytestmark = pytest.mark.browser

PASSWORD = "a long operator passphrase"


@pytest.fixture()
def operator(runtime: Runtime) -> Iterator[str]:
    original = runtime.settings
    hashed = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
    runtime.settings = original.with_overrides(operator_users=(f"dana:{hashed}",))
    yield "dana"
    runtime.settings = original


@pytest.fixture()
def desk(browser: Browser) -> Iterator[Page]:
    """An operator's desktop browser, recording every console message."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, locale="en-US")
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.console_messages = []  # type: ignore[attr-defined]
    page.on("console", lambda message: page.console_messages.append(message.text))  # type: ignore[attr-defined]
    yield page
    context.close()


def always_fails(nudge_ids: list[int]) -> None:
    raise ConnectionError("the database went away mid-batch")


def morning_traffic(live_server: LiveServer) -> Couple:
    """Prompts handed over in the last hours: most delivered, some refused or undelivered."""
    now = datetime.now(UTC)
    with live_server.session() as session:
        couple = make_couple(session, names=("Rosalind", "Tobias"))
        enrollment, partners = couple.enrollments[0], couple.partners
        for partner in partners:
            # No quiet hours: the real send below must go out whatever the hour is in New York.
            partner.quiet_start = partner.quiet_end = time(0, 0)
        day = 100
        for hours_ago, status, code in [(3, NudgeStatus.DELIVERED, None), (3, NudgeStatus.DELIVERED, None),
                                        (3, NudgeStatus.UNDELIVERED, "30003"), (2, NudgeStatus.DELIVERED, None),
                                        (2, NudgeStatus.FAILED, "21614"), (1, NudgeStatus.SENT, None)]:
            at = now - timedelta(hours=hours_ago)
            day += 1
            session.add(Nudge(
                enrollment=enrollment, partner=partners[day % 2], kind=NudgeKind.PROMPT, step_day=day, channel="sms",
                status=status, error_code=code, sending_at=at,
                sent_at=at if status != NudgeStatus.FAILED else None,
                delivered_at=at if status == NudgeStatus.DELIVERED else None,
            ))
        session.flush()
        session.expunge_all()
    return couple


def queued_prompt(live_server: LiveServer, couple_id: int, step_day: int) -> int:
    with live_server.session() as session:
        couple = session.get(Couple, couple_id)
        assert couple is not None
        nudge = Nudge(enrollment=couple.enrollments[0], partner=couple.partners[0], kind=NudgeKind.PROMPT,
                      step_day=step_day, channel="sms", status=NudgeStatus.QUEUED, queued_at=datetime.now(UTC))
        session.add(nudge)
        session.flush()
        return nudge.id


def run_worker(live_server: LiveServer, runtime: Runtime) -> None:
    """A real RQ worker drains the send queue (in this process: the database is this test's transaction)."""
    with live_server.lock:
        queue = Queue(QUEUE_SEND, connection=runtime.redis)
        SimpleWorker([queue], connection=runtime.redis).work(burst=True)


def nudge_status(live_server: LiveServer, nudge_id: int) -> str:
    with live_server.session() as session:
        return str(session.scalar(select(Nudge.status).where(Nudge.id == nudge_id)))


def total(page: Page, series: str) -> int:
    return int(page.locator(f"#total-{series}").inner_text())


def test_an_operator_watches_sends_pauses_and_retries(
    live_server: LiveServer, desk: Page, runtime: Runtime, operator: str, artifacts_dir: Path
) -> None:
    couple = morning_traffic(live_server)
    failed_job = Queue(QUEUE_SEND, connection=runtime.redis).enqueue(always_fails, [1, 2])
    run_worker(live_server, runtime)
    assert failed_job.id in FailedJobRegistry(QUEUE_SEND, connection=runtime.redis)

    # Without a login, /ops sends the browser to the login page.
    desk.goto(live_server.url + "/ops")
    expect(desk).to_have_url(live_server.url + "/ops/login?next=/ops")
    desk.get_by_label("Name").fill(operator)
    desk.get_by_label("Password").fill("not the password")
    desk.get_by_role("button", name="Log in").click()
    expect(desk.locator("#login-error")).to_have_text("That name and password do not match.")
    desk.get_by_label("Name").fill(operator)
    desk.get_by_label("Password").fill(PASSWORD)
    desk.get_by_role("button", name="Log in").click()
    expect(desk).to_have_url(live_server.url + "/ops")
    expect(desk.locator("#operator-name")).to_have_text(operator)

    # The morning on the chart: five handed over, two of them failed.
    expect(desk.locator("#total-sends")).to_have_text("5")
    expect(desk.locator("#total-failures")).to_have_text("2")
    expect(desk.locator("#total-deliveries")).to_have_text("3")
    chart = desk.locator("#activity svg.chart")
    expect(chart).to_be_visible()
    failure_bars = [int(v) for v in chart.locator(".series-failures rect").evaluate_all(
        "rects => rects.map(r => r.dataset.value)")]
    assert sum(failure_bars) == 2 and failure_bars.count(1) == 2
    sends_points = chart.locator(".series-sends circle").evaluate_all("cs => cs.map(c => Number(c.dataset.value))")
    assert sum(sends_points) == 5 and max(sends_points) == 3
    expect(desk.locator("#errors-by-code")).to_contain_text("21614")
    expect(desk.locator("#errors-by-code")).to_contain_text("not a mobile number")
    desk.screenshot(path=str(artifacts_dir / "ops-morning.png"), full_page=True)

    # A real send through the console provider moves the numbers.
    first = queued_prompt(live_server, couple.id, step_day=1)
    with live_server.lock:
        enqueue_nudges(runtime, [first])
    run_worker(live_server, runtime)
    assert nudge_status(live_server, first) == NudgeStatus.SENT
    desk.reload()
    expect(desk.locator("#total-sends")).to_have_text("6")
    assert total(desk, "failures") == 2
    with live_server.session() as session:
        assert session.scalar(select(OutboxMessage.id).order_by(OutboxMessage.id.desc())) is not None
    desk.screenshot(path=str(artifacts_dir / "ops-after-send.png"), full_page=True)

    # Pause: the kill switch is on, and a worker leaves the next nudge queued.
    desk.get_by_role("button", name="Pause all sending").click()
    expect(desk.locator("#sending-state")).to_have_text("Paused")
    expect(desk.get_by_role("status").first).to_contain_text("Sending is paused")
    with live_server.session() as session:
        flag = session.get(ControlFlag, SENDING_PAUSED_FLAG)
        assert flag is not None and flag.value == "1"
    second = queued_prompt(live_server, couple.id, step_day=2)
    with live_server.lock:
        enqueue_nudges(runtime, [second])
    run_worker(live_server, runtime)
    assert nudge_status(live_server, second) == NudgeStatus.QUEUED
    desk.reload()
    expect(desk.locator("#total-sends")).to_have_text("6")
    desk.screenshot(path=str(artifacts_dir / "ops-paused.png"), full_page=True)

    # Retry the failed job: it goes back on its queue, and the operator's action is on record.
    row = desk.locator(f'tr.failed-job[data-job-id="{failed_job.id}"]')
    expect(row).to_contain_text("ConnectionError")
    row.get_by_role("button", name="Retry").click()
    expect(desk.get_by_role("status").first).to_contain_text(f"Job {failed_job.id} is back on {QUEUE_SEND}")
    expect(desk.locator(f'tr.failed-job[data-job-id="{failed_job.id}"]')).to_have_count(0)
    assert failed_job.id in Queue(QUEUE_SEND, connection=runtime.redis).job_ids
    desk.screenshot(path=str(artifacts_dir / "ops-retried.png"), full_page=True)

    # Resume, and the waiting nudge goes out.
    desk.get_by_role("button", name="Resume sending").click()
    expect(desk.locator("#sending-state")).to_have_text("Running")
    with live_server.lock:
        enqueue_nudges(runtime, [second])
    run_worker(live_server, runtime)
    assert nudge_status(live_server, second) == NudgeStatus.SENT
    desk.reload()
    expect(desk.locator("#total-sends")).to_have_text("7")

    with live_server.session() as session:
        actions = session.scalars(select(OperatorAction.action).where(OperatorAction.operator == operator)
                                  .order_by(OperatorAction.id)).all()
    assert actions == ["login", "pause_sending", "retry_job", "resume_sending"]
    expect(desk.locator("#actions")).to_contain_text("retry_job")
    page_text = desk.content()
    assert "Rosalind" not in page_text and "Tobias" not in page_text
    assert not [m for m in desk.console_messages if "Content Security Policy" in m]  # type: ignore[attr-defined]
    desk.screenshot(path=str(artifacts_dir / "ops-resumed.png"), full_page=True)
