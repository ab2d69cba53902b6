"""The ceiling for bench/webhooks.py: a bare Flask endpoint that answers empty TwiML and does nothing else."""

from __future__ import annotations

from flask import Flask, Response

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'


def empty_twiml() -> Response:
    return Response(EMPTY_TWIML, mimetype="text/xml")


def healthz() -> Response:
    return Response("ok")


def create_app() -> Flask:
    app = Flask(__name__)
    app.add_url_rule("/webhooks/twilio/sms", "inbound", empty_twiml, methods=["POST"])
    app.add_url_rule("/healthz", "healthz", healthz)
    return app
