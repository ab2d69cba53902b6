"""`make faults` at CI size: every scenario of bench/faults.py against its own peak of 1,000 prompts.

Each scenario starts real processes (workers, scheduler, gunicorn) on this suite's own PostgreSQL cluster
and redis-server, so these run for about a minute each; recovery passes run ahead of the clock
(as `make faults` does) instead of waiting out the scheduler's real timers.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import Request, urlopen

import pytest
from sqlalchemy import text

from bench.faults import (
    ACCOUNT_SID,
    PUBLIC_BASE_URL,
    SCENARIOS,
    TWILIO_NUMBER,
    Config,
    Run,
    Stack,
    judge,
    own_stack,
    run_scenario,
    table,
)
from bench.seed import phone_for

pytestmark = pytest.mark.slow
CI_SIZE = 1_000


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with own_stack() as own:
        yield own


def ci_config(artifacts_dir: Path) -> Config:
    return Config(size=CI_SIZE, timeout_minutes=4, artifacts=artifacts_dir / "faults-ci",
                  quiet=True)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_loses_doubles_and_missends_nothing(stack: Stack, artifacts_dir: Path, name: str) -> None:
    row = run_scenario(stack, name, ci_config(artifacts_dir))

    assert row.ok, "\n" + table([row])
    if name != "contract":  # a real peak went through, not a quiet afternoon
        assert row.peak >= CI_SIZE and row.sent >= 0.9 * CI_SIZE


def _forge_sms(stack: Stack, to: str, body: str, nudge_id: int) -> None:
    """A request at the fake as Twilio's SDK would make it, but from no worker of ours."""
    form = {"To": to, "From": TWILIO_NUMBER, "Body": body,
            "StatusCallback": f"{PUBLIC_BASE_URL}/webhooks/twilio/status?nudge={nudge_id}"}
    request = Request(f"{stack.fake.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",  # noqa: S310
                      data=urlencode(form).encode(), method="POST")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{ACCOUNT_SID}:token".encode()).decode())
    with urlopen(request, timeout=10) as response:  # noqa: S310 - the local fake
        response.read()


def test_the_judge_catches_a_double_a_wrong_consent_a_quiet_hour_and_what_never_went(
    stack: Stack, artifacts_dir: Path,
) -> None:
    """No worker runs: one pass plans the peak, and requests forged at the fake must all be caught."""
    run = Run(stack, ci_config(artifacts_dir), "judge", sendable=40)
    run.processes.tick((datetime.now(UTC) + timedelta(seconds=40)).isoformat())
    with run.engine.connect() as conn:
        nudges = conn.execute(text("SELECT id, partner_id, channel, status FROM nudges ORDER BY id")).all()
    by_group = {(run.peak.group(n.partner_id), n.channel): n for n in nudges}
    texted, opted_out, quiet = by_group[(0, "sms")], by_group[(7, "email")], by_group[(8, "sms")]

    _forge_sms(stack, phone_for(texted.partner_id), "the same words", texted.id)
    _forge_sms(stack, phone_for(texted.partner_id), "the same words", texted.id)
    _forge_sms(stack, phone_for(opted_out.partner_id), "to someone who opted out of texts", opted_out.id)
    _forge_sms(stack, phone_for(quiet.partner_id), "in the middle of their night", quiet.id)
    judge(run)
    run.engine.dispose()

    row = run.row
    assert not row.ok
    assert (row.doubled, row.wrong_consent, row.quiet_hours) == (1, 1, 1)
    assert row.lost == sum(1 for n in nudges if n.status == "queued") > 0  # all but the skipped quiet ones
    assert any("left queued" in problem for problem in row.problems)
