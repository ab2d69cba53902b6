"""Fixtures and helpers for delivery tests: the fake providers, the shared Prism mocks, the real SDK
providers pointed at either, an in-process RQ worker, and a committed scratch database for tests that run
real `closer worker` processes.

The providers are never mocked: `TwilioSms` and `SendGridEmail` (the official SDKs) get
TWILIO_API_BASE_URL / SENDGRID_API_HOST pointing at a local HTTP server, which is the only thing replaced.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis as redis_lib
from flask import Flask
from rq import Queue, SimpleWorker

from jobs.runtime import using_runtime
from service.migrations import upgrade
from service.providers import Providers
from service.providers.sendgrid_email import SendGridEmail
from service.providers.twilio_sms import TwilioSms
from service.queues import QUEUE_NAMES
from service.redis_runtime import die_with_parent
from service.runtime import Runtime
from service.settings import Settings
from tests.support.databases import scratch_database
from tests.support.fake_providers import FakeProviders
from tests.support.prism import PrismPair, shared_mocks

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT_SID = "AC" + "1" * 32
FROM_NUMBER = "+15005550006"
MESSAGING_SERVICE_SID = "MG" + "2" * 32
FROM_EMAIL = "prompts@closer.example.test"
SENDGRID_KEY = "SG.test-key"


def sdk_providers(
    settings: Settings, *, twilio_url: str, sendgrid_url: str, messaging_service: bool = False,
    timeout: float = 15.0,
) -> Providers:
    """The production providers, with their HTTP endpoints moved to `twilio_url` / `sendgrid_url`."""
    return Providers(
        sms=TwilioSms(ACCOUNT_SID, settings.twilio_auth_token, from_number="" if messaging_service else FROM_NUMBER,
                      messaging_service_sid=MESSAGING_SERVICE_SID if messaging_service else "",
                      api_base_url=twilio_url, public_base_url=settings.public_base_url, timeout=timeout),
        email=SendGridEmail(SENDGRID_KEY, FROM_EMAIL, from_name=settings.sender_name, api_host=sendgrid_url,
                            timeout=timeout),
    )


@pytest.fixture()
def fake() -> Iterator[FakeProviders]:
    with FakeProviders() as server:
        yield server


@pytest.fixture()
def prism() -> PrismPair:
    """Prism mocks of both official specs, started once per test session (on first use)."""
    return shared_mocks()


@pytest.fixture()
def use_providers(runtime: Runtime) -> Iterator[Callable[[Providers], None]]:
    """Swap the app's providers for the test (the app is shared by the session)."""
    original = runtime.providers

    def use(providers: Providers) -> None:
        runtime.providers = providers

    yield use
    runtime.providers = original


@pytest.fixture()
def use_settings(runtime: Runtime) -> Iterator[Callable[..., Settings]]:
    """Change some settings of the app for the test."""
    original = runtime.settings

    def change(**overrides: object) -> Settings:
        runtime.settings = runtime.settings.with_overrides(**overrides)
        return runtime.settings

    yield change
    runtime.settings = original


def run_worker_burst(connection: redis_lib.Redis) -> None:
    """An RQ SimpleWorker in this process, on real Redis, until the queues are empty."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker = SimpleWorker([Queue(name, connection=connection) for name in QUEUE_NAMES], connection=connection)
        worker.work(burst=True, logging_level="WARNING")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def queued_jobs(connection: redis_lib.Redis) -> int:
    return sum(Queue(name, connection=connection).count for name in QUEUE_NAMES)


# --- a committed scratch database, for real worker processes ------------------------------------


@dataclass
class Scratch:
    """A migrated database of its own (committed, unlike the test transaction) and the app on it."""

    settings: Settings
    app: Flask
    runtime: Runtime

    def worker_env(self, fake_url: str, **extra: str) -> dict[str, str]:
        s = self.settings
        env = {
            **os.environ, "CLOSER_ENV": "testing", "DATABASE_URL": s.database_url, "REDIS_URL": s.redis_url or "",
            "SECRET_KEY": s.secret_key, "DATA_ENCRYPTION_KEY": ",".join(s.data_encryption_key),
            "PUBLIC_BASE_URL": s.public_base_url, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": s.twilio_auth_token, "TWILIO_FROM_NUMBER": FROM_NUMBER,
            "TWILIO_API_BASE_URL": fake_url, "SENDGRID_API_KEY": SENDGRID_KEY, "SENDGRID_FROM_EMAIL": FROM_EMAIL,
            "SENDGRID_API_HOST": fake_url, "SENDER_POSTAL_ADDRESS": s.sender_postal_address,
            "INBOUND_PARSE_SECRET": s.inbound_parse_secret, "INBOUND_EMAIL_DOMAIN": s.inbound_email_domain,
            "SMS_RATE_PER_SECOND": "0", "EMAIL_RATE_PER_SECOND": "0", "LOG_LEVEL": "WARNING",
        }
        env.update(extra)
        return env

    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self, env: dict[str, str], *, burst: bool = False, fork: bool = False) -> subprocess.Popen[bytes]:
        """`closer worker` in a process group of its own: `kill_worker` takes the group (with a `--fork`
        worker's work horse), as a crashed container or machine would."""
        argv = [sys.executable, "-m", "service.cli", "worker", *(["--burst"] if burst else []),
                *(["--fork"] if fork else [])]
        process = subprocess.Popen(argv, env=env, cwd=ROOT, preexec_fn=die_with_parent, start_new_session=True)
        self.workers.append(process)
        return process

    def kill_worker(self, process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def stop_workers(self) -> None:
        for process in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)

    def redis(self) -> redis_lib.Redis:
        return self.runtime.redis


@pytest.fixture()
def scratch(settings: Settings) -> Iterator[Scratch]:
    """A committed database of its own, migrated, with an app on it; dropped afterwards. Jobs run in this
    process (send_batch, an in-process worker) use the app's runtime.

    Tests that run real worker processes cannot see the rolled-back test transaction, so they use this.
    """
    from service.app import create_app
    from service.web.context import runtime_of

    with scratch_database(settings.database_url, "scratch") as url:
        scratch_settings = settings.with_overrides(database_url=url)
        upgrade(scratch_settings)
        app = create_app(scratch_settings)
        runtime = runtime_of(app)
        runtime.redis.flushdb()
        scratch = Scratch(scratch_settings, app, runtime)
        try:
            with using_runtime(runtime):
                yield scratch
        finally:
            scratch.stop_workers()
            runtime.redis.flushdb()
            runtime.database.dispose()


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Poll until `predicate()` holds (for processes we do not control); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
