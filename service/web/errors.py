"""Every error is a clear 4xx (or an honest 5xx) in the format the client asked for, never a stack trace."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError

try:  # the web process runs under gunicorn, which parses a chunked body while the view reads the stream
    from gunicorn.http.errors import NoMoreData, ParseException

    BROKEN_BODY: tuple[type[Exception], ...] = (ParseException, NoMoreData)
except ImportError:  # pragma: no cover - another WSGI server
    BROKEN_BODY = ()

log = logging.getLogger(__name__)


def _wants_json() -> bool:
    if request.path.startswith(("/webhooks/", "/ops/status.json", "/healthz")):
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json"


def error_response(status: int, title: str, detail: str) -> tuple[Response | str, int]:
    if _wants_json():
        return jsonify(error=title, detail=detail, status=status), status
    return render_template("pages/error.html", status=status, title=title, detail=detail), status


def register(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> tuple[Response | str, int]:
        return error_response(400, "This form has expired", "Please go back, reload the page and try again.")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response | str, int]:
        if exc.code is None:
            return error_response(500, "Something went wrong on our side", "Please try again.")
        if exc.code == 429:
            return error_response(429, "Please slow down", "Too many requests just now. Try again in a little while.")
        return error_response(exc.code, exc.name, exc.description or "")

    def _broken_body(exc: Exception) -> tuple[Response | str, int]:
        # A malformed body (a chunk size that is no number, a missing chunk terminator, the client gone
        # mid-body) surfaces as gunicorn's parse error where the view reads the stream: the client's fault.
        log.info("malformed request body", extra={"error": type(exc).__name__})
        return error_response(400, "Malformed request", "The request body could not be read.")

    for broken in BROKEN_BODY:
        app.register_error_handler(broken, _broken_body)

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _database_unavailable(exc: Exception) -> tuple[Response | str, int]:
        # The database is down, restarting, or dropped this process's connection (the pool is renewed
        # on such an error): nothing was written, so asking to try again is the honest answer.
        log.warning("database unavailable", extra={"error": type(exc).__name__})
        body, status = error_response(503, "Closer is briefly unavailable", "Please try again in a moment.")
        response = app.make_response((body, status))
        response.headers["Retry-After"] = "5"
        return response, status

    @app.errorhandler(InternalServerError)
    def _internal(exc: InternalServerError) -> tuple[Response | str, int]:
        log.error("unhandled error", exc_info=exc.original_exception or exc)
        return error_response(500, "Something went wrong on our side", "It has been logged. Please try again.")
