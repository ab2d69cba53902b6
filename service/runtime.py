"""What one app holds at run time, reachable from views, jobs and commands alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
from flask import Flask, current_app, g
from sqlalchemy.orm import Session

from service.db import Database
from service.providers import Providers
from service.settings import Settings

if TYPE_CHECKING:
    from service.programs import ProgramLibrary
    from service.redis_runtime import EmbeddedRedis


@dataclass
class Runtime:
    settings: Settings
    database: Database
    redis_url: str
    providers: Providers
    programs: ProgramLibrary
    embedded_redis: EmbeddedRedis | None = None
    _redis: redis.Redis | None = field(default=None, repr=False)

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=5)
        return self._redis


def runtime_of(app: Flask) -> Runtime:
    runtime: Runtime = app.extensions["closer"]
    return runtime


def current_runtime() -> Runtime:
    return runtime_of(current_app)


def db_session() -> Session:
    """The session of this request or job, closed (and rolled back if uncommitted) at teardown."""
    session: Session | None = g.get("_closer_session")
    if session is None:
        session = current_runtime().database.new_session()
        g._closer_session = session
    return session


def close_db_session(_exc: BaseException | None = None) -> None:
    session: Session | None = g.pop("_closer_session", None)
    if session is not None:
        session.close()
