"""The couple's shared log at a private link, and what either partner can do with it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from flask import Blueprint, Response, abort, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue

from service.domain.data_rights import erase_own_words, export_couple, export_csv, request_forget
from service.domain.links import rotate_log_token
from service.domain.shared_log import build_log, partner_by_log_token
from service.models import Partner
from service.web.context import current_runtime, db_session
from service.web.limits import limiter

bp = Blueprint("log", __name__, url_prefix="/log")

# Tokens carry 192 random bits; the limit keeps guessing from even being tried at volume.
LOG_RATE_LIMIT = "60 per minute"


def _viewer(token: str) -> Partner:
    partner = partner_by_log_token(db_session(), token)
    if partner is None:
        abort(404, description="This log link doesn't work. It may have been replaced: text LOG to get yours.")
    return partner


@bp.after_request
def _private(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


@bp.get("/<token>")
@limiter.limit(LOG_RATE_LIMIT)
def show(token: str) -> ResponseReturnValue:
    viewer = _viewer(token)
    runtime = current_runtime()
    days = build_log(db_session(), viewer, runtime.programs)
    other = next((p for p in viewer.couple.partners if p.id != viewer.id), None)
    return render_template("log/show.html", viewer=viewer, other=other, days=days, token=token)


@bp.post("/<token>/new-link")
@limiter.limit(LOG_RATE_LIMIT)
def new_link(token: str) -> ResponseReturnValue:
    viewer = _viewer(token)
    new_token = rotate_log_token(viewer, datetime.now(UTC))
    db_session().commit()
    flash("Here is your new link. The old one no longer works, so bookmark this page.")
    return redirect(url_for("log.show", token=new_token), 303)


@bp.get("/<token>/export.json")
@limiter.limit(LOG_RATE_LIMIT)
def export_json(token: str) -> ResponseReturnValue:
    viewer = _viewer(token)
    data = export_couple(db_session(), viewer.couple)
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False), mimetype="application/json",
        headers={"Content-Disposition": 'attachment; filename="closer-log.json"'},
    )


@bp.get("/<token>/export.csv")
@limiter.limit(LOG_RATE_LIMIT)
def export_csv_view(token: str) -> ResponseReturnValue:
    viewer = _viewer(token)
    data = export_couple(db_session(), viewer.couple)
    return Response(
        export_csv(data), mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="closer-log.csv"'},
    )


@bp.post("/<token>/erase-mine")
@limiter.limit(LOG_RATE_LIMIT)
def erase_mine(token: str) -> ResponseReturnValue:
    viewer = _viewer(token)
    count = erase_own_words(db_session(), viewer)
    db_session().commit()
    flash(f"Erased your {count} answer{'s' if count != 1 else ''}. They are gone for good.")
    return redirect(url_for("log.show", token=token), 303)


@bp.post("/<token>/forget")
@limiter.limit(LOG_RATE_LIMIT)
def forget(token: str) -> ResponseReturnValue:
    viewer = _viewer(token)
    other = next((p.first_name for p in viewer.couple.partners if p.id != viewer.id), "your partner")
    erased = request_forget(db_session(), viewer, datetime.now(UTC))
    db_session().commit()
    if erased:
        return render_template("log/forgotten.html")
    flash(f"We've noted your request. The whole log is erased once {other} asks too, within 30 days. "
          "Your own answers you can erase right now, below.")
    return redirect(url_for("log.show", token=token), 303)
