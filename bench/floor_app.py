"""The floors for bench/webhooks.py, in the same Flask and gunicorn as the bare endpoint and Closer.

`create_signature_only_app` checks the Twilio signature and answers: what any authenticated webhook costs,
with nothing stored. `create_app` is the least an inbound SMS endpoint can do and still keep the promise
that an accepted reply is never lost.

It checks the Twilio signature and commits the message (one INSERT, deduplicated on MessageSid) to
PostgreSQL before answering empty TwiML; nothing else: no partner lookup, no prompt, no encryption, no
ORM, no pool (each gunicorn thread keeps one psycopg connection). Closer cannot be faster than this
while it commits before it answers, so its rate against this one shows what Closer's own logic costs,
and this one's rate against the bare endpoint shows what the durable commit alone costs on this machine.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import psycopg
from flask import Flask, Response, abort, request
from twilio.request_validator import RequestValidator

from bench.bare_app import empty_twiml, healthz


def _signature_check() -> Callable[[], None]:
    """Aborts the request with 403 unless it carries Twilio's signature of PUBLIC_BASE_URL's webhook URL."""
    validator = RequestValidator(os.environ["TWILIO_AUTH_TOKEN"])
    signed_url = os.environ["PUBLIC_BASE_URL"].rstrip("/") + "/webhooks/twilio/sms"

    def check() -> None:
        if not validator.validate(signed_url, request.form, request.headers.get("X-Twilio-Signature", "")):
            abort(403)

    return check


def _app(inbound: Callable[[], Response]) -> Flask:
    app = Flask(__name__)
    app.add_url_rule("/webhooks/twilio/sms", "inbound", inbound, methods=["POST"])
    app.add_url_rule("/healthz", "healthz", healthz)
    return app


def create_signature_only_app() -> Flask:
    check_signature = _signature_check()

    def inbound() -> Response:
        check_signature()
        return empty_twiml()

    return _app(inbound)


def create_app() -> Flask:
    conninfo = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://", 1)
    check_signature = _signature_check()
    local = threading.local()
    with psycopg.connect(conninfo, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS bench_floor (message_sid text PRIMARY KEY, body text NOT NULL, "
                      "received_at timestamptz NOT NULL DEFAULT now())")

    def connection() -> psycopg.Connection[tuple[object, ...]]:
        conn: psycopg.Connection[tuple[object, ...]] | None = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = psycopg.connect(conninfo)
        return conn

    def inbound() -> Response:
        check_signature()
        conn = connection()
        with conn.transaction():
            conn.execute("INSERT INTO bench_floor (message_sid, body) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                         (request.form["MessageSid"], request.form.get("Body", "")))
        return empty_twiml()

    return _app(inbound)
