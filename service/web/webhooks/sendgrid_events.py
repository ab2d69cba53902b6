"""POST /webhooks/sendgrid/events: SendGrid's Event Webhook (Signed Event Webhook on).

The ECDSA signature over the timestamp header and the raw body is checked with the SDK's
`EventWebhook` and SENDGRID_EVENT_PUBLIC_KEY; without a key, or with a bad signature, the answer is 403
and nothing changes. Each event is stored once by `sg_event_id`, so SendGrid's retries (and replays of a
signed batch) are harmless. `sendgrid_email.event_report` reads each event in Closer's terms and
`apply_delivery_status` acts on it: bounce, dropped, spamreport and unsubscribe stop email to that partner.
A signed timestamp more than 10 minutes from now is refused (403) as a replay. An event that cannot be
read (no identity, a NUL byte) is skipped, logged by count and reason and counted in
`closer_sendgrid_events_skipped`; the rest of the batch is applied (a batch with no readable event is 400).
"""

from __future__ import annotations

import binascii
import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from functools import lru_cache

from flask import abort, request
from flask.typing import ResponseReturnValue
from prometheus_client import Counter as PrometheusCounter
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader

from service.domain.delivery import apply_delivery_status
from service.providers.sendgrid_email import UnreadableEvent, event_report, event_timestamp_problem
from service.telemetry import count_callback_outcomes
from service.web.context import current_runtime, db_session
from service.web.webhooks import bp

log = logging.getLogger(__name__)

MAX_EVENTS = 5000
SKIPPED_EVENTS = PrometheusCounter(
    "closer_sendgrid_events_skipped", "SendGrid Event Webhook events skipped as unreadable, by reason.", ["reason"]
)


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
    stale = event_timestamp_problem(request.headers.get(EventWebhookHeader.TIMESTAMP, ""), time.time())
    if stale is not None:
        abort(403, stale)
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
    skipped: Counter[str] = Counter()
    for event in events:
        # Each event is checked before it touches the database: one unreadable event is skipped, never
        # allowed to fail the statement and roll back the batch's bounces and unsubscribes.
        try:
            report = event_report(event)
        except UnreadableEvent as exc:
            skipped[exc.reason] += 1
            continue
        result = apply_delivery_status(session, report, now=now)
        results.append(result)
        counts["fresh" if result.fresh else "repeated"] += 1
        counts["suppressed"] += int(result.suppressed)
    if skipped:
        # Counts and fixed reasons only: an event's fields may carry addresses.
        log.warning("sendgrid events skipped", extra={"skipped": sum(skipped.values()), "reasons": dict(skipped)})
        for reason, amount in skipped.items():
            SKIPPED_EVENTS.labels(reason=reason).inc(amount)
        if not results:
            session.rollback()
            abort(400, f"No event in this batch could be read ({', '.join(sorted(skipped))}).")
    session.commit()
    count_callback_outcomes(current_runtime(), results)
    log.info("sendgrid events", extra=counts)
    return "", 204
