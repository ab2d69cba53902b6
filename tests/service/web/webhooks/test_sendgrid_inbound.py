"""POST /webhooks/sendgrid/inbound: authenticated, parsed, routed, deduped; bad input is a 4xx."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from jobs.inbound import drain_spool
from service import spool
from service.db import make_engine
from service.models import LogEntry, Partner
from service.runtime import Runtime
from service.web.context import close_db_session, db_session
from tests.factories import make_couple, make_sent_prompt

URL = "/webhooks/sendgrid/inbound"


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"closer:{secret}".encode()).decode()}


def _form(partner: Partner, domain: str, text: str, message_id: str = "<abc@mail.example.com>") -> dict[str, str]:
    return {
        "headers": f"Message-ID: {message_id}\nSubject: Re: A small thing\n",
        "from": f"Partner <{partner.email}>",
        "to": f"reply+{partner.reply_token}@{domain}",
        "subject": "Re: A small thing",
        "text": text,
        "envelope": json.dumps({"to": [f"reply+{partner.reply_token}@{domain}"], "from": partner.email}),
        "attachments": "0",
    }


@pytest.fixture()
def auth(runtime: Runtime) -> dict[str, str]:
    return _auth(runtime.settings.inbound_parse_secret)


def test_reply_is_stripped_stored_once_and_tied(client: FlaskClient, db: Session, runtime: Runtime,
                                                auth: dict[str, str]) -> None:
    couple = make_couple(db)
    alex = couple.partners[0]
    prompt = make_sent_prompt(db, alex, channel="email", sent_at=datetime.now(UTC) - timedelta(hours=1))
    text = ("We cooked together and laughed a lot.\n\n--\nSent from my phone\n\n"
            "On Tue, Nov 24, 2026 at 9:00 AM Closer <closer@example.com> wrote:\n> What made you smile?\n")
    form = _form(alex, runtime.settings.inbound_email_domain, text)
    first = client.post(URL, data=form, headers=auth)
    retry = client.post(URL, data=form, headers=auth)
    assert first.status_code == 200 and first.get_json()["status"] == "stored"
    assert retry.status_code == 200 and retry.get_json()["status"] == "duplicate"
    entries = db.scalars(select(LogEntry)).all()
    assert [e.body for e in entries] == ["We cooked together and laughed a lot."]
    assert entries[0].nudge_id == prompt.id and entries[0].channel == "email"


def test_reply_from_another_address_is_not_stored(client: FlaskClient, db: Session, runtime: Runtime,
                                                  auth: dict[str, str]) -> None:
    alex = make_couple(db).partners[0]
    form = _form(alex, runtime.settings.inbound_email_domain, "hello")
    form["from"] = "Mallory <mallory@evil.example>"
    form["envelope"] = '{"to": [], "from": "mallory@evil.example"}'
    response = client.post(URL, data=form, headers=auth)
    assert response.status_code == 200 and response.get_json()["status"] == "wrong_sender"
    assert db.scalar(select(func.count(LogEntry.id))) == 0


def test_a_sender_that_is_no_address_is_a_wrong_sender_not_an_error(
    client: FlaskClient, db: Session, runtime: Runtime, auth: dict[str, str]
) -> None:
    alex = make_couple(db).partners[0]
    form = _form(alex, runtime.settings.inbound_email_domain, "hello")
    form["from"] = "@0"  # found by the bad-input sweep: the address parser raised, and the request got a 500
    response = client.post(URL, data=form, headers=auth)
    assert response.status_code == 200 and response.get_json()["status"] == "wrong_sender"
    assert db.scalar(select(func.count(LogEntry.id))) == 0


def test_unknown_reply_token_changes_nothing(client: FlaskClient, db: Session, runtime: Runtime,
                                             auth: dict[str, str]) -> None:
    alex = make_couple(db).partners[0]
    form = _form(alex, runtime.settings.inbound_email_domain, "hello")
    form["to"] = f"reply+{'0' * 24}@{runtime.settings.inbound_email_domain}"
    form["envelope"] = "{}"
    assert client.post(URL, data=form, headers=auth).get_json()["status"] == "unknown_token"
    assert db.scalar(select(func.count(LogEntry.id))) == 0


def test_missing_credentials_401_wrong_credentials_403(client: FlaskClient, db: Session, runtime: Runtime) -> None:
    alex = make_couple(db).partners[0]
    form = _form(alex, runtime.settings.inbound_email_domain, "hello")
    missing = client.post(URL, data=form)
    assert missing.status_code == 401 and "Basic" in missing.headers["WWW-Authenticate"]
    assert client.post(URL, data=form, headers=_auth("not-the-secret")).status_code == 403
    assert db.scalar(select(func.count(LogEntry.id))) == 0


def test_malformed_and_oversized(client: FlaskClient, auth: dict[str, str]) -> None:
    no_sender = client.post(URL, data={"to": "reply+x@y.z", "text": "hi"}, headers=auth)
    assert no_sender.status_code == 400 and "sender" in no_sender.get_json()["detail"]
    bad_envelope = client.post(URL, data={"from": "a@b.c", "to": "reply+x@y.z", "envelope": "{"}, headers=auth)
    assert bad_envelope.status_code == 400
    attachments = client.post(URL, data={"from": "a@b.c", "to": "x@y.z", "attachments": "9" * 40}, headers=auth)
    assert attachments.status_code == 400 and "attachments" in attachments.get_json()["detail"]
    huge = client.post(URL, data={"from": "a@b.c", "to": "x@y.z", "text": "x" * (6 * 1024 * 1024)}, headers=auth)
    assert huge.status_code == 413


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(
    st.sampled_from(["headers", "from", "to", "cc", "subject", "text", "html", "envelope", "attachments"]),
    st.text(max_size=300),
))
def test_any_form_gets_a_4xx_or_200_never_a_5xx(client: FlaskClient, auth: dict[str, str],
                                               form: dict[str, Any]) -> None:
    response = client.post(URL, data=form, headers=auth)
    assert response.status_code in (200, 400), response.get_data(as_text=True)


def test_database_down_spools_and_the_scheduler_replays(client: FlaskClient, db: Session, runtime: Runtime,
                                                       auth: dict[str, str]) -> None:
    couple = make_couple(db)
    db.commit()
    alex = couple.partners[0]
    form = _form(alex, runtime.settings.inbound_email_domain, "Written while the database was away")
    bound = runtime.database.session_factory
    close_db_session()
    # A real driver failing to reach a real (absent) server: nothing listens on port 1.
    down = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/closer?connect_timeout=2")
    runtime.database.session_factory = sessionmaker(bind=down)
    try:
        response = client.post(URL, data=form, headers=auth)
    finally:
        close_db_session()
        runtime.database.session_factory = bound
        down.dispose()
    assert response.status_code == 200 and response.get_json()["status"] == "spooled"
    assert spool.depth(runtime.redis) == 1
    raw = runtime.redis.lindex(spool.SPOOL_KEY, 0)
    assert raw is not None and b"database was away" not in raw  # encrypted in Redis too
    assert db_session().scalar(select(func.count(LogEntry.id))) == 0
    assert drain_spool(runtime) == 1
    assert drain_spool(runtime) == 0
    assert [e.body for e in db_session().scalars(select(LogEntry))] == ["Written while the database was away"]


@pytest.mark.parametrize("value", ["Basic \xff\xfe\xfd", "Basic \xc3\xa9t\xc3\xa9", "Basic caf\xe9:x"])
def test_basic_credentials_that_are_not_ascii_are_401(client: FlaskClient, db: Session, value: str) -> None:
    """Raw non-ASCII bytes after `Basic` are no credentials at all: a challenge, never a 500."""
    response = client.post(URL, data={"text": "hi"}, headers={"Authorization": value})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert db.scalar(select(func.count(LogEntry.id))) == 0
