"""POST /webhooks/twilio/sms: inbound texts (keywords and replies), answered in TwiML.

The X-Twilio-Signature is checked first (`twilio_auth.twilio_signed`, against PUBLIC_BASE_URL plus the path
and every POSTed field), so an unsigned, forged or altered request gets 403 and changes nothing. Then each
field is parsed strictly (400 with the reason), the text goes through `receive_sms` (the same path as the
development outbox), the transaction commits and only then are follow-up sends enqueued. A MessageSid
seen before is a Twilio retry: it gets an empty TwiML answer and changes nothing.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import asdict
from datetime import UTC, datetime

import phonenumbers
from flask import Response, abort, request
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError
from twilio.twiml.messaging_response import MessagingResponse
from werkzeug.datastructures import MultiDict

from service import spool
from service.domain.inbound import InboundSms, receive_sms
from service.models import mask_phone
from service.providers.twilio_sms import TWILIO
from service.queues import QUEUE_HIGH, enqueue_committed
from service.web.context import current_runtime, db_session
from service.web.webhooks import bp
from service.web.webhooks.twilio_auth import twilio_signed

log = logging.getLogger(__name__)

MAX_BODY_CHARS = 1600  # Twilio's own limit for one message
MAX_MEDIA = 10  # Twilio delivers at most ten media items per MMS
MESSAGE_SID = re.compile(r"[A-Za-z]{2}[0-9a-fA-F]{32}")
MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,63}/[A-Za-z0-9!#$&^_.+-]{1,63}", re.ASCII)


def parse_inbound_sms(form: MultiDict[str, str]) -> InboundSms:
    """The message Twilio posted; aborts with 400 and the reason when a field is malformed."""
    sid = form.get("MessageSid", "")
    if not sid:
        abort(400, "MessageSid is missing.")
    if not MESSAGE_SID.fullmatch(sid):
        abort(400, "MessageSid must be two letters and 32 hexadecimal digits.")
    sender = form.get("From", "")
    from_number = _e164(sender)
    if from_number is None:
        abort(400, "From must be a phone number in E.164 format, such as +14155550123.")
    to_number = form.get("To", "")
    if len(to_number) > 64:
        abort(400, "To is longer than 64 characters.")
    body = form.get("Body", "")
    if len(body) > MAX_BODY_CHARS:
        abort(400, f"Body is longer than {MAX_BODY_CHARS} characters.")
    raw_media = form.get("NumMedia", "0").strip() or "0"
    if not raw_media.isascii() or not raw_media.isdigit():
        abort(400, "NumMedia must be a whole number.")
    num_media = int(raw_media) if len(raw_media) <= 6 else MAX_MEDIA + 1
    if num_media > MAX_MEDIA:
        abort(400, f"NumMedia must be at most {MAX_MEDIA}.")
    media_types = []
    for index in range(num_media):
        media_type = form.get(f"MediaContentType{index}", "")
        if not MEDIA_TYPE.fullmatch(media_type):
            abort(400, f"MediaContentType{index} must be a MIME type such as image/jpeg.")
        media_types.append(media_type.lower())
    # A NUL cannot be stored or shown; dropping it keeps the rest of the partner's words.
    return InboundSms(message_sid=sid, from_number=from_number, to_number=to_number, body=body.replace("\x00", ""),
                      num_media=num_media, media_types=tuple(media_types), provider=TWILIO)


def _e164(raw: str) -> str | None:
    if not raw or len(raw) > 32 or not raw.startswith("+"):
        return None
    return _parse_e164(raw)


# Parsing with phonenumbers costs more than the rest of the request's parsing together, and the same
# few thousand partners text again and again; the answer for a given string never changes.
@functools.lru_cache(maxsize=16384)
def _parse_e164(raw: str) -> str | None:
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# What str(MessagingResponse()) renders with no message: most inbound texts (replies, retries) get it.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'


def twiml(reply: str | None) -> Response:
    if not reply:
        return Response(EMPTY_TWIML, mimetype="text/xml")
    response = MessagingResponse()
    response.message(reply)
    return Response(str(response), mimetype="text/xml")


@bp.post("/twilio/sms")
@twilio_signed
def twilio_sms() -> ResponseReturnValue:
    runtime = current_runtime()
    message = parse_inbound_sms(request.form)
    session = db_session()
    try:
        result = receive_sms(session, message, settings=runtime.settings, programs=runtime.programs,
                             now=datetime.now(UTC))
        session.commit()
    except (OperationalError, InterfaceError):
        session.rollback()
        # Twilio does not retry an inbound text on an error, so keep it in Redis until the database is back.
        log.warning("database unavailable: spooling inbound sms")
        try:
            spool.spool_inbound(runtime.redis, spool.TWILIO_SMS, asdict(message))
        except RedisError:
            log.exception("inbound spool unavailable")
            abort(503, "Try again later.")
        return twiml(None)
    log.info("inbound sms", extra={"kind": result.kind, "duplicate": result.duplicate,
                                   "from": mask_phone(message.from_number)})
    if result.duplicate:
        return twiml(None)
    enqueue_committed(runtime, result.nudge_ids, queue_name=QUEUE_HIGH)
    return twiml(result.reply)

