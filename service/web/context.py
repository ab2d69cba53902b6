"""The Runtime as views see it: the Flask app holds it, and each request (or app context) gets one
database session, closed at teardown."""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlalchemy.orm import Session

from service.runtime import Runtime


def runtime_of(app: Flask) -> Runtime:
    runtime: Runtime = app.extensions["closer"]
    return runtime


def current_runtime() -> Runtime:
    return runtime_of(current_app)


def db_session() -> Session:
    """The session of this request, closed (and rolled back if uncommitted) at teardown."""
    session: Session | None = g.get("_closer_session")
    if session is None:
        session = current_runtime().database.new_session()
        g._closer_session = session
    return session


def close_db_session(_exc: BaseException | None = None) -> None:
    session: Session | None = g.pop("_closer_session", None)
    if session is not None:
        session.close()
