"""Trust: what the rate limits do when their storage is down, and what they keep about the people they count."""

from __future__ import annotations

import logging

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from service.runtime import Runtime
from tests.service.web.test_signup import couples, form_data, fresh_phone, post_signup
from tests.support.limiter import stop_limiter_storage


def test_signups_keep_working_when_the_limiter_cannot_count(client: FlaskClient, db: Session,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The login fails closed (test_login_fails_closed_when_its_limit_cannot_be_counted); signups do not:
    the daily confirmation cap in SQL still holds for them."""
    data = form_data(client)
    stop_limiter_storage(monkeypatch)
    before = couples(db)
    response = post_signup(client, data)
    assert response.status_code == 303
    assert couples(db) == before + 1


def _digit_runs(phone: str, length: int = 5) -> set[str]:
    """Every run of `length` digits of a number (its country code included), and its prefix as a whole."""
    digits = phone.lstrip("+")
    return {digits[i:i + length] for i in range(len(digits) - length + 1)} | {digits[:-4], phone[:-4]}


def test_limiter_keys_and_logs_carry_no_part_of_a_phone_number(
    client: FlaskClient, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    allowed = int(runtime.settings.signup_rate_limit.split()[0])
    burst_prefix = "+1415737"
    numbers = [fresh_phone(burst_prefix) for _ in range(allowed + 2)] + [fresh_phone() for _ in range(4)]
    visitors = (f"198.51.100.{i}" for i in range(1, 255))
    statuses = []
    for signer, invited in zip(numbers[allowed + 2:], numbers[:allowed + 2], strict=False):
        statuses.append(post_signup(client, form_data(client, signer_phone=signer, invited_phone=invited),
                                    ip=next(visitors)).status_code)
    for invited in numbers[4:allowed + 2]:
        statuses.append(post_signup(client, form_data(client, invited_phone=invited), ip=next(visitors)).status_code)
    assert 429 in statuses  # the prefix limit was breached, and Flask-Limiter logged the breach with its key

    keys = [key.decode() for key in runtime.redis.keys("*") if not key.startswith(b"rq:")]
    assert any("signup-prefix" in key for key in keys), keys
    logged = "\n".join(caplog.text.splitlines() + [record.getMessage() for record in caplog.records])
    for phone in numbers:
        for run in _digit_runs(phone):
            assert not [key for key in keys if run in key], (run, keys)
            assert run not in logged, run
