"""service/db.py on a real server: connections that sat idle are pinged, busy ones are not."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from service import db as db_module
from service.db import make_engine


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _cut(engine: Engine, pid: int, database_url: str) -> None:
    with make_engine(database_url).connect() as admin:
        assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    time.sleep(0.2)


def test_a_connection_cut_while_idle_is_replaced_before_use(
    engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend_pid(engine)
    _cut(engine, first, database_url)
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 0.0)

    second = _backend_pid(engine)  # no error: the ping found it dead and the pool reconnected

    assert second != first


def test_a_connection_in_steady_use_is_not_pinged_and_a_cut_fails_one_statement_only(
    engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 3600.0)
    first = _backend_pid(engine)
    _cut(engine, first, database_url)

    with pytest.raises(OperationalError):  # not pinged: the dead connection reached the statement
        _backend_pid(engine)

    assert _backend_pid(engine) != first  # the pool was invalidated; the next checkout reconnects
