"""Trust: what the rate limits do when their storage is down, and what they keep about the people they count."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.service.web.test_signup import couples, form_data, post_signup
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
