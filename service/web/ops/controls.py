"""The operator's controls: pause or resume sending, retry or discard failed jobs, resend or close a nudge
awaiting review. Every action is recorded with who did it and when; each answers with a redirect to /ops.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from flask import flash, g, redirect, request, url_for
from flask.typing import ResponseReturnValue

from service.db import is_row_id
from service.domain import ops_queues
from service.domain.operators import (
    CLOSE_OUTCOMES,
    MAX_REASON_CHARS,
    ReviewError,
    close_reviewed,
    record_action,
    resend_reviewed,
    set_sending_paused,
)
from service.queues import commit_then_enqueue
from service.web.context import current_runtime, db_session
from service.web.errors import error_response
from service.web.ops.auth import bp

JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _back() -> ResponseReturnValue:
    return redirect(url_for("ops.status_page"), 303)


@bp.post("/sending")
def sending() -> ResponseReturnValue:
    action = request.form.get("action", "")
    if action not in ("pause", "resume"):
        return error_response(400, "Unknown action", "Choose pause or resume.")
    db = db_session()
    changed = set_sending_paused(db, action == "pause", operator=g.operator, now=datetime.now(UTC))
    db.commit()
    if action == "pause":
        flash("Sending is paused: no scheduler pass plans and no worker sends until you resume."
              if changed else "Sending was already paused.", "ok")
    else:
        flash("Sending resumed." if changed else "Sending was not paused.", "ok")
    return _back()


def _job_target(queue_name: str, job_id: str) -> ResponseReturnValue | None:
    if not ops_queues.known_queue(queue_name):
        return error_response(404, "No such queue", f"Closer's queues are {', '.join(ops_queues.QUEUE_NAMES)}.")
    if not JOB_ID.fullmatch(job_id):
        return error_response(400, "Not a job id", "Job ids are letters, digits, - and _.")
    return None


@bp.post("/jobs/<queue_name>/<job_id>/<verb>")
def failed_job(queue_name: str, job_id: str, verb: str) -> ResponseReturnValue:
    refused = _job_target(queue_name, job_id)
    if refused is not None:
        return refused
    if verb not in ("retry", "discard"):
        return error_response(404, "Unknown action", "Failed jobs can be retried or discarded.")
    redis = current_runtime().redis
    try:
        ops_queues.check_failed(redis, queue_name, job_id)
    except ops_queues.UnknownJob:
        flash(f"Job {job_id} is no longer among the failed jobs of {queue_name}.", "error")
        return _back()
    db = db_session()
    record_action(db, g.operator, f"{verb}_job", f"{queue_name}:{job_id}", datetime.now(UTC))
    db.commit()
    try:
        if verb == "retry":
            ops_queues.retry_failed(redis, queue_name, job_id)
            flash(f"Job {job_id} is back on {queue_name}.", "ok")
        else:
            ops_queues.discard_failed(redis, queue_name, job_id)
            flash(f"Job {job_id} discarded. Its nudges stay in the database; the scheduler re-enqueues "
                  "any still queued.", "ok")
    except ops_queues.UnknownJob:
        flash(f"Job {job_id} was gone before it could be {verb}ed.", "error")
    return _back()


@bp.post("/jobs/<queue_name>/all/<verb>")
def failed_jobs_all(queue_name: str, verb: str) -> ResponseReturnValue:
    if not ops_queues.known_queue(queue_name):
        return error_response(404, "No such queue", f"Closer's queues are {', '.join(ops_queues.QUEUE_NAMES)}.")
    if verb not in ("retry", "discard"):
        return error_response(404, "Unknown action", "Failed jobs can be retried or discarded.")
    redis = current_runtime().redis
    pending = len(ops_queues.failed_job_ids(redis, queue_name))
    db = db_session()
    record_action(db, g.operator, f"{verb}_all_jobs", f"{queue_name} ({pending} jobs)", datetime.now(UTC))
    db.commit()
    if verb == "retry":
        done = ops_queues.retry_all_failed(redis, queue_name)
        flash(f"{done} failed job(s) of {queue_name} are back on the queue.", "ok")
    else:
        done = ops_queues.discard_all_failed(redis, queue_name)
        flash(f"{done} failed job(s) of {queue_name} discarded.", "ok")
    return _back()


def _no_such_nudge(nudge_id: int) -> ResponseReturnValue | None:
    # The URL converter takes any run of digits; an id no row can have must not reach PostgreSQL.
    if is_row_id(nudge_id):
        return None
    return error_response(404, "No such nudge", "No nudge has that id.")


@bp.post("/nudges/<int:nudge_id>/resend")
def resend_nudge(nudge_id: int) -> ResponseReturnValue:
    refused = _no_such_nudge(nudge_id)
    if refused is not None:
        return refused
    db = db_session()
    try:
        resend_reviewed(db, nudge_id, operator=g.operator, now=datetime.now(UTC))
    except ReviewError:
        db.rollback()
        flash(f"Nudge {nudge_id} is not awaiting review (someone may have resolved it).", "error")
        return _back()
    if commit_then_enqueue(db, current_runtime(), [nudge_id]):
        flash(f"Nudge {nudge_id} is queued to be sent again.", "ok")
    else:
        flash(f"Nudge {nudge_id} is queued in the database; Redis is unavailable, so the scheduler will "
              "enqueue it once Redis is back.", "error")
    return _back()


@bp.post("/nudges/<int:nudge_id>/close")
def close_nudge(nudge_id: int) -> ResponseReturnValue:
    refused = _no_such_nudge(nudge_id)
    if refused is not None:
        return refused
    outcome = request.form.get("outcome", "")
    reason = request.form.get("reason", "")
    if outcome not in CLOSE_OUTCOMES:
        return error_response(400, "Choose an outcome", f"Close a nudge as one of: {', '.join(CLOSE_OUTCOMES)}.")
    if len(reason) > MAX_REASON_CHARS:
        return error_response(400, "Reason too long", f"Keep the reason under {MAX_REASON_CHARS} characters.")
    db = db_session()
    try:
        close_reviewed(db, nudge_id, outcome, reason, operator=g.operator, now=datetime.now(UTC))
    except ReviewError:
        db.rollback()
        flash(f"Nudge {nudge_id} is not awaiting review (someone may have resolved it).", "error")
        return _back()
    db.commit()
    flash(f"Nudge {nudge_id} closed as {outcome}.", "ok")
    return _back()
