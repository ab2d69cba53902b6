"""Browser fixtures: the test app served over HTTP on a free loopback port, and Chromium pages on it.

`live_server` serves the test's own app, whose database is one connection inside the test's rolled-back
transaction. A connection is not safe to share between threads, so every request holds `live_server.lock`
for its whole length, and a test reads or writes the database only through `live_server.session()`,
which holds the same lock. `page` is a fresh Chromium context per test (a phone-sized viewport); use
`browser` directly for other settings (JavaScript off, another time zone).

Chromium is Debian's (/usr/bin/chromium); `make test` installs it when it is missing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright
from sqlalchemy.orm import Session
from werkzeug.serving import BaseWSGIServer, make_server

from service.web.context import runtime_of

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PHONE_VIEWPORT = {"width": 390, "height": 844}


@dataclass
class LiveServer:
    app: Flask
    server: BaseWSGIServer
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A database session for the test itself, committed on success, while no request runs."""
        with self.lock:
            session = runtime_of(self.app).database.new_session()
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()


def _one_request_at_a_time(app: Flask, lock: threading.RLock) -> Callable[..., Any]:
    wsgi = app.wsgi_app

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with lock:
            # The body is read (and the response closed) inside the lock: teardown may still use the session.
            result = wsgi(environ, start_response)
            try:
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    return serve


@pytest.fixture()
def live_server(app: Flask) -> Iterator[LiveServer]:
    lock = threading.RLock()
    server = make_server("127.0.0.1", 0, _one_request_at_a_time(app, lock), threaded=False)
    live = LiveServer(app=app, server=server, lock=lock)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield live
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in the main thread while
# it is alive, and later tests (the fault suite's load generators) need to start loops of their own.
@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (or apt-get install -y chromium)")
    launched = playwright_driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield launched
    launched.close()


@pytest.fixture()
def browser_context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport=PHONE_VIEWPORT, timezone_id="America/Chicago", locale="en-US")
    context.set_default_timeout(15_000)
    yield context
    context.close()


@pytest.fixture()
def page(browser_context: BrowserContext) -> Page:
    return browser_context.new_page()
