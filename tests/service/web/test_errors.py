"""A database that is down or just dropped our connection gets a 503 with Retry-After, never a 500."""

from __future__ import annotations

import secrets

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import sessionmaker

from service.db import make_engine
from service.runtime import Runtime
from service.web.context import close_db_session


@pytest.mark.parametrize("accept", ["text/html", "application/json"])
def test_a_page_that_needs_the_database_answers_503_while_it_is_unreachable(
    client: FlaskClient, runtime: Runtime, accept: str
) -> None:
    bound = runtime.database.session_factory
    close_db_session()
    # A real driver failing to reach a real (absent) server: nothing listens on port 1.
    down = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/closer?connect_timeout=2")
    runtime.database.session_factory = sessionmaker(bind=down)
    try:
        response = client.get(f"/log/{secrets.token_urlsafe(24)}", headers={"Accept": accept})
    finally:
        close_db_session()
        runtime.database.session_factory = bound
        down.dispose()
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    assert "try again" in response.get_data(as_text=True).lower()
    assert client.get("/programs").status_code == 200, "and the app carries on once the database answers"
