"""Fixtures: one app per test session on the real database and Redis; each test in a rolled-back transaction.

TEST_DATABASE_URL and REDIS_URL choose the servers (CI sets both); without them the suite starts an
embedded PostgreSQL (service/embedded_postgres.py) in a temporary folder and an embedded Redis.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from jobs.runtime import using_runtime
from service.app import create_app
from service.db import make_engine
from service.embedded_postgres import start_embedded_postgres
from service.migrations import upgrade
from service.redis_runtime import start_embedded_redis
from service.runtime import Runtime
from service.settings import Settings
from service.web.context import close_db_session, db_session, runtime_of

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _reset_database(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix="closer-test-pg-"))
    server = start_embedded_postgres(folder / "data", durable=False)
    yield server.create_database("closer_test")
    server.remove()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    embedded = start_embedded_redis()
    yield embedded.url
    embedded.stop()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(
        closer_env="testing",
        database_url=database_url,
        redis_url=redis_url,
        public_base_url="https://closer.example.test",
        twilio_auth_token="test-twilio-auth-token-0123456789",
        inbound_email_domain="reply.closer.example.test",
        inbound_parse_secret="test-inbound-parse-secret",
        sender_name="Closer",
        sender_postal_address="1 Example Street, Springfield, IL 62701",
        support_contact="help@closer.example.test",
        send_concurrency=1,
        sms_rate_per_second=0,
        email_rate_per_second=0,
        operator_users=(),
    ).validated()


@pytest.fixture(scope="session")
def migrated(settings: Settings) -> Settings:
    _reset_database(settings.database_url)
    upgrade(settings)
    return settings


@pytest.fixture(scope="session")
def session_app(migrated: Settings) -> Iterator[Flask]:
    app = create_app(migrated)
    yield app
    runtime_of(app).database.dispose()


@pytest.fixture()
def app(session_app: Flask) -> Iterator[Flask]:
    """The app with every session bound to one connection whose transaction is rolled back after; jobs
    run in this process (send_batch, an in-process worker) use its runtime."""
    runtime = runtime_of(session_app)
    connection = runtime.database.engine.connect()
    transaction = connection.begin()
    runtime.database.bind_to(connection)
    runtime.redis.flushdb()
    with session_app.app_context(), using_runtime(runtime):
        yield session_app
        close_db_session()
    runtime.database.unbind()
    if transaction.is_active:
        transaction.rollback()
    connection.close()


@pytest.fixture()
def runtime(app: Flask) -> Runtime:
    return runtime_of(app)


@pytest.fixture()
def db(app: Flask) -> Session:
    """The app context's session: requests made by the test client share it (they reuse the context)."""
    return db_session()


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def redis(runtime: Runtime) -> redis_lib.Redis:
    return runtime.redis


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
