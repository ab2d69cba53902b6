"""POST /webhooks/twilio/status: Twilio's status callbacks for the texts we sent.

The X-Twilio-Signature is checked first (`twilio_auth.twilio_signed`, the same check inbound texts pass)
against PUBLIC_BASE_URL plus the path and query (the query carries our nudge id) and every POSTed field:
anything else gets 403 and changes nothing. The fields are checked here; `twilio_sms.status_report`
reads them in Closer's terms (where the message got to, what a carrier error code means) and
`apply_delivery_status` acts on that. Each (MessageSid, MessageStatus) is stored
once, and a nudge only ever moves forward: queued/sent, then delivered, undelivered or failed (with the
carrier's error code kept); a 21610 (the number texted STOP) stops texts to it.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

from flask import abort, request
from flask.typing import ResponseReturnValue

from service.domain.delivery import apply_delivery_status
from service.providers.twilio_sms import STATUSES, status_report
from service.telemetry import count_callback_outcomes
from service.web.context import current_runtime, db_session
from service.web.webhooks import bp
from service.web.webhooks.twilio_auth import twilio_signed

log = logging.getLogger(__name__)

MESSAGE_SID = re.compile(r"^(SM|MM)[0-9a-fA-F]{32}$")
ERROR_CODE = re.compile(r"^\d{1,8}$")
NUDGE_ID = re.compile(r"^\d{1,18}$")


@bp.post("/twilio/status")
@twilio_signed
def twilio_status() -> ResponseReturnValue:
    sid = request.form.get("MessageSid", "")
    status = request.form.get("MessageStatus", "").strip().lower()
    error_code = request.form.get("ErrorCode", "").strip() or None
    hint = request.args.get("nudge", "")
    if not MESSAGE_SID.match(sid):
        abort(400, "MessageSid must be SM or MM and 32 hexadecimal digits.")
    if status not in STATUSES:
        abort(400, f"MessageStatus must be one of {', '.join(sorted(STATUSES))}.")
    if error_code is not None and not ERROR_CODE.match(error_code):
        abort(400, "ErrorCode must be a number.")
    if hint and not NUDGE_ID.match(hint):
        abort(400, "The nudge parameter must be a number.")
    session = db_session()
    report = status_report(message_sid=sid, status=status, error_code=error_code,
                           nudge_hint=int(hint) if hint else None)
    result = apply_delivery_status(session, report, now=datetime.now(UTC))
    session.commit()
    count_callback_outcomes(current_runtime(), [result])
    if result.fresh:
        log.info("twilio status", extra={"nudge_id": result.nudge_id, "status": status, "code": error_code,
                                         "moved": result.moved_to.value if result.moved_to else None})
    return "", 204
