"""The ceiling for bench/webhooks.py: a bare Flask endpoint that answers empty TwiML and does nothing else."""

from __future__ import annotations

from flask import Flask, Response


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/webhooks/twilio/sms")
    def inbound() -> Response:
        return Response('<?xml version="1.0" encoding="UTF-8"?><Response />', mimetype="text/xml")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok")

    return app
