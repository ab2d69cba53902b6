"""POST /webhooks/sendgrid/events: SendGrid's Event Webhook (Signed Event Webhook on).

The ECDSA signature over the timestamp header and the raw body is checked with the SDK's
`EventWebhook` and SENDGRID_EVENT_PUBLIC_KEY; without a key, or with a bad signature, the answer is 403
and nothing changes. Each event is stored once by `sg_event_id`, so SendGrid's retries (and replays of a
signed batch) are harmless. `sendgrid_email.event_report` reads each event in Closer's terms and
`apply_delivery_status` acts on it: bounce, dropped, spamreport and unsubscribe stop email to that partner.
"""

from __future__ import annotations

import binascii
import json
import logging
from datetime import UTC, datetime
from functools import lru_cache

from flask import abort, request
from flask.typing import ResponseReturnValue
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader

from service.domain.delivery import apply_delivery_status
from service.providers.sendgrid_email import event_report
from service.telemetry import count_callback_outcomes
from service.web.context import current_runtime, db_session
from service.web.webhooks import bp

log = logging.getLogger(__name__)

MAX_EVENTS = 5000


@lru_cache(maxsize=4)
def _verifier(public_key: str) -> EventWebhook:
    return EventWebhook(public_key)


def _signature_ok(public_key: str, raw: bytes) -> bool:
    signature = request.headers.get(EventWebhookHeader.SIGNATURE, "")
    timestamp = request.headers.get(EventWebhookHeader.TIMESTAMP, "")
    if not public_key or not signature or not timestamp:
        return False
    try:
        return bool(_verifier(public_key).verify_signature(raw.decode("utf-8"), signature, timestamp))
    except (ValueError, TypeError, UnicodeDecodeError, binascii.Error):
        # A malformed key, signature or body is a failed check, not a server error.
        return False


@bp.post("/sendgrid/events")
def sendgrid_events() -> ResponseReturnValue:
    settings = current_runtime().settings
    raw = request.get_data(cache=True)
    if not _signature_ok(settings.sendgrid_event_public_key, raw):
        abort(403, "The Event Webhook signature does not match this request.")
    try:
        events = json.loads(raw)
    except ValueError:
        abort(400, "The body must be a JSON array of events.")
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        abort(400, "The body must be a JSON array of event objects.")
    if len(events) > MAX_EVENTS:
        abort(413, f"At most {MAX_EVENTS} events per request.")
    session = db_session()
    now = datetime.now(UTC)
    counts = {"fresh": 0, "repeated": 0, "suppressed": 0}
    results = []
    for event in events:
        try:
            report = event_report(event)
        except ValueError as exc:
            session.rollback()
            abort(400, str(exc))
        result = apply_delivery_status(session, report, now=now)
        results.append(result)
        counts["fresh" if result.fresh else "repeated"] += 1
        counts["suppressed"] += int(result.suppressed)
    session.commit()
    count_callback_outcomes(current_runtime(), results)
    log.info("sendgrid events", extra=counts)
    return "", 204
