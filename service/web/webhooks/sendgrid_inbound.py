"""POST /webhooks/sendgrid/inbound: email replies from SendGrid Inbound Parse.

Guarded by INBOUND_PARSE_SECRET as HTTP basic auth (put it in the parse URL:
https://closer:SECRET@host/webhooks/sendgrid/inbound). No credentials gets 401 with a challenge, wrong
ones 403; either way nothing changes. If the database is down the message is spooled to Redis and
accepted; if Redis is down too we answer 503 and SendGrid retries (it does, for up to three days).
"""

from __future__ import annotations

import hmac
import logging
from datetime import UTC, datetime

from flask import jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import InterfaceError, OperationalError

from service import spool
from service.domain.email_replies import InboundEmailError, parse_inbound, receive_email
from service.queues import enqueue_committed
from service.web.context import current_runtime, db_session
from service.web.webhooks import bp

log = logging.getLogger(__name__)

MAX_INBOUND_BYTES = 5 * 1024 * 1024


@bp.post("/sendgrid/inbound")
def sendgrid_inbound() -> ResponseReturnValue:
    runtime = current_runtime()
    secret = runtime.settings.inbound_parse_secret
    try:
        auth = request.authorization
    except ValueError:
        # Werkzeug's base64 decoding raises on non-ASCII bytes after "Basic": those are no credentials.
        auth = None
    if auth is None or auth.type != "basic":
        response = jsonify(error="authentication required", detail="Use the parse URL with its credentials.")
        response.headers["WWW-Authenticate"] = 'Basic realm="closer-inbound"'
        return response, 401
    if not secret or not hmac.compare_digest((auth.password or "").encode(), secret.encode()):
        return jsonify(error="forbidden", detail="Wrong credentials for the inbound parse webhook."), 403
    if request.content_length is not None and request.content_length > MAX_INBOUND_BYTES:
        return jsonify(error="too large", detail=f"Inbound email is limited to {MAX_INBOUND_BYTES} bytes."), 413
    request.max_content_length = MAX_INBOUND_BYTES
    form = {key: request.form.get(key, "") for key in request.form}
    try:
        email = parse_inbound(form)
    except InboundEmailError as exc:
        return jsonify(error="malformed", detail=str(exc)), 400
    session = db_session()
    try:
        outcome = receive_email(
            session, email, programs=runtime.programs, settings=runtime.settings, now=datetime.now(UTC)
        )
        session.commit()
    except (OperationalError, InterfaceError):
        session.rollback()
        log.warning("database unavailable: spooling inbound email")
        try:
            spool.spool_inbound(runtime.redis, spool.SENDGRID_INBOUND, form)
        except Exception:  # any Redis failure means we cannot keep it: let SendGrid retry
            log.exception("inbound spool unavailable")
            return jsonify(error="unavailable", detail="Try again later."), 503
        return jsonify(status="spooled"), 200
    if outcome.reply is not None:
        enqueue_committed(runtime, outcome.reply.nudge_ids)
    log.info("inbound email", extra={"outcome": outcome.status})
    return jsonify(status=outcome.status), 200
