"""GET /unsubscribe/<token>: a page with a button; POST /unsubscribe/<token>: stop email to that partner.

The POST also serves RFC 8058 one-click unsubscribes: mail clients POST `List-Unsubscribe=One-Click` to
the URL in our List-Unsubscribe header, without cookies or a CSRF token, so this view is CSRF-exempt.
The signed token (purpose "unsubscribe") is the only credential, and it names one partner: one
partner's unsubscribe never touches the other's email. A GET never changes anything, so link
scanners cannot unsubscribe anyone.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, abort, render_template, request
from flask.typing import ResponseReturnValue

from service.domain.delivery import unsubscribe_email
from service.domain.tokens import TokenError, read_token
from service.models import Channel, ConsentState, Partner
from service.web.context import current_runtime, db_session

bp = Blueprint("unsubscribe", __name__)

MAX_TOKEN_LENGTH = 200
ONE_CLICK = "One-Click"


def _partner(token: str) -> Partner:
    if len(token) > MAX_TOKEN_LENGTH:
        abort(404, "This unsubscribe link is not valid. Use the link from one of our emails.")
    try:
        partner_id = read_token(current_runtime().settings.secret_key, "unsubscribe", token)
    except TokenError:
        abort(404, "This unsubscribe link is not valid. Use the link from one of our emails.")
    partner = db_session().get(Partner, partner_id)
    if partner is None or not partner.email:
        abort(404, "There is nothing to unsubscribe here any more.")
    return partner


def _masked(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def _page(partner: Partner, *, done: bool) -> str:
    return render_template(
        "unsubscribe/page.html", done=done, masked_email=_masked(partner.email or ""),
        texts_continue=partner.consent(Channel.SMS) is ConsentState.CONFIRMED,
    )


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str) -> ResponseReturnValue:
    partner = _partner(token)
    response = Response(_page(partner, done=partner.email_consent == ConsentState.OPTED_OUT))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/unsubscribe/<token>")
def unsubscribe_post(token: str) -> ResponseReturnValue:
    partner = _partner(token)
    one_click = request.form.get("List-Unsubscribe") == ONE_CLICK
    session = db_session()
    unsubscribe_email(session, partner, source_detail="one-click" if one_click else "unsubscribe page",
                      now=datetime.now(UTC))
    session.commit()
    if one_click:
        return Response("Unsubscribed.\n", mimetype="text/plain")
    response = Response(_page(partner, done=True))
    response.headers["Cache-Control"] = "no-store"
    return response
