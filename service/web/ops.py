"""/ops: the operator's status page, its JSON, and the controls, all behind a login.

Logins come from OPERATOR_USERS. Every form carries a CSRF token (Flask-WTF checks it app-wide);
every action is recorded with who did it and when. The page shows counts and ids only.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis as redis_lib
from flask import (
    Blueprint,
    Flask,
    Response,
    flash,
    g,
    get_flashed_messages,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from service.domain import ops_queues
from service.domain.operators import (
    CLOSE_OUTCOMES,
    MAX_REASON_CHARS,
    Operator,
    ReviewError,
    authenticate,
    close_reviewed,
    operators_from,
    recent_actions,
    record_action,
    resend_reviewed,
    set_sending_paused,
)
from service.domain.ops_status import HourlyActivity, StatusReport, status_report
from service.queues import commit_then_enqueue
from service.web.context import current_runtime, db_session, runtime_of
from service.web.errors import error_response
from service.web.limits import limiter

log = logging.getLogger(__name__)

bp = Blueprint("ops", __name__, url_prefix="/ops")

LOGIN_LIMIT = "5 per minute;30 per hour"
SESSION_MAX_AGE_SECONDS = 12 * 3600
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
OPEN_ENDPOINTS = frozenset({"ops.login_form", "ops.login"})
_SESSION_KEYS = ("ops_operator", "ops_fp", "ops_since")


@bp.record_once
def _check_operator_users(state: Any) -> None:
    """A malformed OPERATOR_USERS stops the app at start, not at the first login."""
    app: Flask = state.app
    operators_from(runtime_of(app).settings.operator_users)


# --- who is logged in ---------------------------------------------------------------------------


def _operators() -> dict[str, Operator]:
    return operators_from(current_runtime().settings.operator_users)


def current_operator() -> str | None:
    name = session.get("ops_operator")
    if not name:
        return None
    operator = _operators().get(name)
    since = session.get("ops_since")
    fresh = isinstance(since, int | float) and 0 <= time.time() - since < SESSION_MAX_AGE_SECONDS
    if operator is None or session.get("ops_fp") != operator.fingerprint or not fresh:
        for key in _SESSION_KEYS:
            session.pop(key, None)
        return None
    return operator.name


@bp.before_request
def _require_operator() -> ResponseReturnValue | None:
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    operator = current_operator()
    if operator is not None:
        g.operator = operator
        return None
    if request.method == "GET" and not request.path.endswith(".json"):
        return redirect(url_for("ops.login_form", next=request.full_path.rstrip("?")))
    return error_response(401, "Log in first", "This page is for Closer's operators. Log in at /ops/login.")


@bp.after_request
def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/ops") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("ops.status_page")


@bp.get("/login")
def login_form() -> ResponseReturnValue:
    if current_operator() is not None:
        return redirect(_safe_next(request.args.get("next")))
    return render_template("ops/login.html", next=request.args.get("next", ""), error=None,
                           configured=bool(_operators()))


@bp.post("/login")
@limiter.limit(LOGIN_LIMIT)
def login() -> ResponseReturnValue:
    name = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    next_url = request.form.get("next", "")
    if not name or not password or len(name) > 64 or len(password) > 1024:
        return render_template("ops/login.html", next=next_url, configured=bool(_operators()),
                               error="Give your operator name and password."), 400
    operator = authenticate(_operators(), name, password)
    if operator is None:
        log.warning("operator login refused")
        return render_template("ops/login.html", next=next_url, configured=bool(_operators()),
                               error="That name and password do not match."), 401
    _reset_session()
    session["ops_operator"], session["ops_fp"], session["ops_since"] = operator.name, operator.fingerprint, time.time()
    db = db_session()
    record_action(db, operator.name, "login", None, datetime.now(UTC))
    db.commit()
    return redirect(_safe_next(next_url), 303)


def _reset_session() -> None:
    """Start from an empty session, keeping only the CSRF secret the tokens on open pages are signed with."""
    csrf_secret = session.get("csrf_token")
    session.clear()
    if csrf_secret:
        session["csrf_token"] = csrf_secret


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    _reset_session()
    return redirect(url_for("ops.login_form"), 303)


# --- the status ---------------------------------------------------------------------------------


@dataclass
class Health:
    database_ok: bool
    redis_ok: bool
    workers: list[ops_queues.WorkerInfo] = field(default_factory=list)
    queues: list[ops_queues.QueueStats] = field(default_factory=list)
    failed_jobs: list[ops_queues.FailedJob] = field(default_factory=list)


def scheduler_is_fresh(age_seconds: float | None) -> bool:
    interval = current_runtime().settings.scheduler_interval_seconds
    return age_seconds is not None and age_seconds <= max(60.0, 6 * interval)


def _health(now: datetime) -> Health:
    runtime = current_runtime()
    try:
        db_session().execute(text("SELECT 1"))
        database_ok = True
    except SQLAlchemyError:
        db_session().rollback()
        database_ok = False
    health = Health(database_ok=database_ok, redis_ok=True)
    try:
        runtime.redis.ping()
        health.workers = ops_queues.workers(runtime.redis)
        health.queues = ops_queues.queue_stats(runtime.redis, now)
        health.failed_jobs = ops_queues.failed_jobs(runtime.redis)
    except redis_lib.RedisError:
        health.redis_ok = False
    return health


def _status_dict(now: datetime, health: Health, report: StatusReport | None) -> dict[str, Any]:
    scheduler_age = report.controls.scheduler_age_seconds(now) if report else None
    data: dict[str, Any] = {
        "generated_at": now.isoformat(),
        "health": {
            "database": {"ok": health.database_ok},
            "redis": {"ok": health.redis_ok},
            "workers": {"count": len(health.workers),
                        "busy": sum(1 for w in health.workers if w.state == "busy"),
                        "items": [w.as_dict() for w in health.workers]},
            "scheduler": {
                "last_pass": report.controls.scheduler_last_pass.isoformat()
                if report and report.controls.scheduler_last_pass else None,
                "age_seconds": scheduler_age,
                "ok": scheduler_is_fresh(scheduler_age),
            },
        },
        "sending_paused": report.controls.sending_paused if report else None,
        "queues": [q.as_dict() for q in health.queues],
        "failed_jobs": [j.as_dict() for j in health.failed_jobs],
    }
    if report is not None:
        data.update(report.as_dict())
    return data


def _gather() -> tuple[datetime, Health, StatusReport | None]:
    now = datetime.now(UTC)
    health = _health(now)
    report = None
    if health.database_ok:
        try:
            report = status_report(db_session(), now)
        except SQLAlchemyError:
            log.exception("status report failed")
            db_session().rollback()
            health.database_ok = False
    return now, health, report


@bp.get("/status.json")
def status_json() -> ResponseReturnValue:
    now, health, report = _gather()
    body = _status_dict(now, health, report)
    if report is not None:
        body["recent_actions"] = _actions_dict()
    return jsonify(body), 200 if report is not None else 503


def _actions_dict() -> list[dict[str, Any]]:
    return [{"operator": a.operator, "action": a.action, "target": a.target, "at": a.created_at.isoformat()}
            for a in recent_actions(db_session())]


@bp.get("")
def status_page() -> ResponseReturnValue:
    now, health, report = _gather()
    refresh = request.args.get("refresh", type=int)
    if refresh is not None and not 10 <= refresh <= 600:
        refresh = None
    context = {
        "now": now, "health": health, "report": report, "operator": g.operator, "refresh": refresh,
        "chart": activity_chart(report.activity) if report else None,
        "due_chart": due_chart(report.due.hours, report.due.counts) if report else None,
        "actions": recent_actions(db_session()) if report else [],
        "close_outcomes": CLOSE_OUTCOMES, "max_reason": MAX_REASON_CHARS,
        "scheduler_ok": scheduler_is_fresh(report.controls.scheduler_age_seconds(now) if report else None),
        "messages": get_flashed_messages(with_categories=True),
        "age": format_age, "rate": format_rate,
    }
    return render_template("ops/status.html", **context), 200 if report is not None else 503


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_rate(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


# --- the charts (server-rendered SVG; presentation attributes only, as CSP forbids style="") -----


@dataclass
class Series:
    key: str
    label: str
    color: str
    values: list[int]
    points: str = ""
    bars: list[tuple[float, float, float, int, str]] = field(default_factory=list)  # x, y, height, value, hour
    dots: list[tuple[float, float, int, str]] = field(default_factory=list)  # x, y, value, hour


@dataclass
class Chart:
    width: int
    height: int
    left: int
    top: int
    plot_height: int
    plot_width: int
    y_max: int
    y_ticks: list[tuple[float, int]]
    x_labels: list[tuple[float, str]]
    lines: list[Series]
    bars: list[Series]
    bar_width: float


def nice_step(value: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50... at least `value`."""
    bound = 1
    while True:
        for step in (1, 2, 5):
            if step * bound >= value:
                return step * bound
        bound *= 10


def _chart_frame(hours: list[datetime], peak: int, width: int = 760, height: int = 240) -> Chart:
    left, top, bottom, right = 48, 12, 28, 12
    plot_width, plot_height = width - left - right, height - top - bottom
    # Gridlines at round numbers, about four of them, the top one at or above the peak.
    step = nice_step(max(peak, 1) / 4)
    y_max = step * max(1, -(-peak // step))
    y_ticks = [(round(top + plot_height - plot_height * v / y_max, 1), v) for v in range(0, y_max + 1, step)]
    slot = plot_width / max(len(hours), 1)
    x_labels = [(left + (i + 0.5) * slot, h.strftime("%H:00")) for i, h in enumerate(hours) if i % 3 == 0]
    return Chart(width=width, height=height, left=left, top=top, plot_height=plot_height, plot_width=plot_width,
                 y_max=y_max, y_ticks=y_ticks, x_labels=x_labels, lines=[], bars=[], bar_width=slot * 0.6)


def _y(chart: Chart, value: int) -> float:
    return round(chart.top + chart.plot_height - chart.plot_height * value / chart.y_max, 1)


def _x(chart: Chart, index: int, count: int) -> float:
    return round(chart.left + (index + 0.5) * chart.plot_width / max(count, 1), 1)


def activity_chart(activity: HourlyActivity) -> Chart:
    """Sends, deliveries and replies as lines; failures as red bars underneath them."""
    hours = activity.hours
    peak = max([*activity.sends, *activity.deliveries, *activity.failures, *activity.replies, 0])
    chart = _chart_frame(hours, peak)
    labels = [h.strftime("%H:00") for h in hours]
    failures = Series("failures", "Failures", "#c0392b", activity.failures)
    for i, value in enumerate(activity.failures):
        y = _y(chart, value)
        failures.bars.append((round(_x(chart, i, len(hours)) - chart.bar_width / 2, 1), y,
                              round(chart.top + chart.plot_height - y, 1), value, labels[i]))
    chart.bars.append(failures)
    for key, label, color, values in (("sends", "Sends", "#2f6690", activity.sends),
                                      ("deliveries", "Deliveries", "#2e8b57", activity.deliveries),
                                      ("replies", "Replies", "#8e5ea2", activity.replies)):
        series = Series(key, label, color, values)
        coords = [(_x(chart, i, len(hours)), _y(chart, v)) for i, v in enumerate(values)]
        series.points = " ".join(f"{x},{y}" for x, y in coords)
        series.dots = [(x, y, values[i], labels[i]) for i, (x, y) in enumerate(coords)]
        chart.lines.append(series)
    return chart


def due_chart(hours: list[datetime], counts: list[int]) -> Chart:
    chart = _chart_frame(hours, max([*counts, 0]), height=180)
    due = Series("due", "Due", "#2f6690", counts)
    for i, value in enumerate(counts):
        y = _y(chart, value)
        due.bars.append((round(_x(chart, i, len(hours)) - chart.bar_width / 2, 1), y,
                         round(chart.top + chart.plot_height - y, 1), value, hours[i].strftime("%H:00")))
    chart.bars.append(due)
    return chart


# --- controls -----------------------------------------------------------------------------------


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


@bp.post("/nudges/<int:nudge_id>/resend")
def resend_nudge(nudge_id: int) -> ResponseReturnValue:
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
