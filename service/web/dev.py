"""Development only: what the console providers "sent", and a form to simulate a partner's reply."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from service.domain.inbound import InboundSms, receive_sms
from service.models import OutboxMessage
from service.queues import commit_then_enqueue
from service.web.context import current_runtime, db_session
from service.web.phone import normalize_phone

bp = Blueprint("dev", __name__, url_prefix="/dev")


@bp.before_request
def _development_only() -> None:
    if current_runtime().settings.is_production:
        abort(404)


@bp.get("/outbox")
def outbox() -> ResponseReturnValue:
    messages = db_session().scalars(select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(200)).all()
    return render_template("dev/outbox.html", messages=messages)


@bp.post("/outbox/reply")
def simulate_reply() -> ResponseReturnValue:
    runtime = current_runtime()
    phone = normalize_phone(request.form.get("from", ""), runtime.settings.allowed_countries)
    body = request.form.get("body", "")
    if phone is None or not body.strip() or len(body) > 1600:
        flash("Give a phone number we know and a message of up to 1600 characters.")
        return redirect(url_for("dev.outbox")), 303
    session = db_session()
    result = receive_sms(
        session,
        InboundSms(message_sid="SMdev" + uuid.uuid4().hex[:27], from_number=phone,
                   to_number=runtime.settings.twilio_from_number or "+15550000000", body=body,
                   provider=runtime.providers.sms.name),
        settings=runtime.settings, programs=runtime.programs, now=datetime.now(UTC),
    )
    commit_then_enqueue(session, runtime, result.nudge_ids)
    flash(f"Simulated reply handled as {result.kind}." + (f" Answer: {result.reply}" if result.reply else ""))
    return redirect(url_for("dev.outbox")), 303
