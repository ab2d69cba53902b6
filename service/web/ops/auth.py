"""The ops blueprint and its gate: every page but the login form needs a logged-in operator.

Logins come from OPERATOR_USERS. A session names its operator, their password's fingerprint (so a changed
password logs them out), when they logged in (so a session lasts at most SESSION_MAX_AGE_SECONDS) and a
random session id that Redis must still hold (service.domain.operators): logout deletes it there, so the
signed cookie is worthless afterwards, wherever it is replayed from. With Redis unreachable a session
cannot be checked, and every /ops page answers 503: the gate fails closed.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import redis as redis_lib
from flask import (
    Blueprint,
    Flask,
    Response,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from limits import parse_many

from service.domain.operators import (
    Operator,
    authenticate,
    end_operator_session,
    open_operator_session,
    operator_of_session,
    operators_from,
    record_action,
)
from service.web.context import current_runtime, db_session, runtime_of
from service.web.errors import error_response
from service.web.limits import limiter

log = logging.getLogger(__name__)

bp = Blueprint("ops", "service.web.ops", url_prefix="/ops")

LOGIN_LIMIT = "5 per minute;30 per hour"
SESSION_MAX_AGE_SECONDS = 12 * 3600
OPEN_ENDPOINTS = frozenset({"ops.login_form", "ops.login"})
_SESSION_KEYS = ("ops_operator", "ops_fp", "ops_since", "ops_sid")
SESSION_STORE_RETRY_AFTER = "10"
LIMIT_DOWN_RETRY_AFTER = "30"


@bp.record_once
def _check_operator_users(state: Any) -> None:
    """A malformed OPERATOR_USERS stops the app at start, not at the first login."""
    app: Flask = state.app
    operators_from(runtime_of(app).settings.operator_users)


def _operators() -> dict[str, Operator]:
    return operators_from(current_runtime().settings.operator_users)


def current_operator() -> str | None:
    name = session.get("ops_operator")
    if not name:
        return None
    operator = _operators().get(name)
    since = session.get("ops_since")
    fresh = isinstance(since, int | float) and 0 <= time.time() - since < SESSION_MAX_AGE_SECONDS
    session_id = session.get("ops_sid")
    valid = (operator is not None and session.get("ops_fp") == operator.fingerprint and fresh
             and isinstance(session_id, str)
             # Raises RedisError when the store cannot answer: see _session_store_down.
             and operator_of_session(current_runtime().redis, session_id) == operator.name)
    if not valid or operator is None:
        for key in _SESSION_KEYS:
            session.pop(key, None)
        return None
    return operator.name


@bp.errorhandler(redis_lib.RedisError)
def _session_store_down(exc: redis_lib.RedisError) -> ResponseReturnValue:
    """Sessions live in Redis: when it cannot say whether one is still open, nobody gets through."""
    log.warning("operator session store unavailable", extra={"error": type(exc).__name__})
    body, status = error_response(503, "The operator pages are briefly unavailable",
                                  "Closer cannot check operator sessions right now. Try again in a moment.")
    response = make_response(body, status)
    response.headers["Retry-After"] = SESSION_STORE_RETRY_AFTER
    return response


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


def _login_attempt_counted() -> bool:
    """Whether the limiter counted this attempt against every login limit.

    The app lets the limiter swallow storage errors (RATELIMIT_SWALLOW_ERRORS) so that signups, which a
    daily cap in SQL still guards, keep working with Redis down. Password guessing has no other guard, so
    a login attempt the limiter could not count is refused instead: when its storage fails, the limiter
    evaluates no limit for the request and `current_limits` stays empty.
    """
    counted = {request_limit.limit for request_limit in limiter.current_limits}
    return set(parse_many(LOGIN_LIMIT)) <= counted


def _login_unavailable() -> ResponseReturnValue:
    log.warning("operator login refused: the login limit cannot be counted")
    response = make_response(render_template(
        "ops/login.html", next=request.form.get("next", ""), configured=bool(_operators()),
        error="Logging in is briefly unavailable: Closer cannot count login attempts right now. "
              "Try again in a minute."), 503)
    response.headers["Retry-After"] = LIMIT_DOWN_RETRY_AFTER
    return response


@bp.post("/login")
@limiter.limit(LOGIN_LIMIT)
def login() -> ResponseReturnValue:
    if not _login_attempt_counted():
        return _login_unavailable()
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
    session_id = open_operator_session(current_runtime().redis, operator.name, SESSION_MAX_AGE_SECONDS)
    _reset_session()
    session["ops_operator"], session["ops_fp"], session["ops_since"] = operator.name, operator.fingerprint, time.time()
    session["ops_sid"] = session_id
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
    session_id = session.get("ops_sid")
    _reset_session()
    if isinstance(session_id, str):
        end_operator_session(current_runtime().redis, session_id)
    return redirect(url_for("ops.login_form"), 303)
