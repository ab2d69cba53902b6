"""Engine, sessions and the declarative base.

Views and jobs own their transactions: they get a session from `Database.session()` and commit;
domain functions and models only add, flush and query.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import ColumnElement, Integer, MetaData, any_, bindparam, cast, create_engine, event
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.engine import Connection, Engine, Result, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Session, sessionmaker

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine on PostgreSQL, the only database Closer runs on."""
    url = normalize_url(url)
    if make_url(url).get_backend_name() != "postgresql":
        raise ValueError("DATABASE_URL must be a PostgreSQL URL (postgresql://...)")
    ping_idle = not kwargs.get("pool_pre_ping", False)
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
    engine = create_engine(url, **kwargs)
    if ping_idle:
        _ping_after_idle(engine)
    return engine


# A connection that was in use a moment ago is almost surely alive; one that sat idle may have been cut
# by a server restart, a failover or a proxy's idle timeout. SQLAlchemy's pool_pre_ping would cost one
# extra round trip on every checkout (a quarter of an inbound webhook's wall time under load), so only
# connections idle longer than this are pinged. A connection that dies while busy fails its statement
# once; SQLAlchemy then invalidates the whole pool, pages answer 503 and inbound texts are spooled.
PING_AFTER_IDLE_SECONDS = 5.0


def _ping_after_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _note_idle(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out a fresh one (or raises if it cannot).
            raise DisconnectionError("idle connection failed its ping") from exc


def normalize_url(url: str) -> str:
    """Heroku-style `postgres://` and bare `postgresql://` URLs use psycopg 3, which we install."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class Database:
    """The engine and session factory of one app; tests rebind it to a connection in a transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.session_factory = sessionmaker(bind=self.engine, expire_on_commit=False)

    def bind_to(self, connection: Connection) -> None:
        """Route every session through one connection whose outer transaction the caller rolls back."""
        self.session_factory = sessionmaker(
            bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )

    def unbind(self) -> None:
        self.session_factory = sessionmaker(bind=self.engine, expire_on_commit=False)

    def new_session(self) -> Session:
        return self.session_factory()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        session = self.new_session()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


# Every id column is PostgreSQL's `integer`: a larger number names no row, and sent as a parameter it
# fails the whole statement ("integer out of range"), so callers check an id from outside first.
MAX_ROW_ID = 2**31 - 1


def is_row_id(value: int) -> bool:
    """True when `value` can be the id of a row (1 to MAX_ROW_ID); anything else names no row."""
    return 0 < value <= MAX_ROW_ID


def affected_rows(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE touched (typed access to the cursor result's rowcount)."""
    return int(getattr(result, "rowcount", 0) or 0)


def insert_or_ignore(session: Session, model: type[Base], values: dict[str, Any], conflict: list[str]) -> int | None:
    """INSERT ... ON CONFLICT DO NOTHING in one round trip; the new row's id, or None if it existed.

    Concurrent duplicates are settled by the unique index itself: the second insert waits for the
    first to commit and then does nothing, so no provider retry is ever stored twice.
    """
    table: Any = model.__table__
    stmt = insert(table).values(**values).on_conflict_do_nothing(index_elements=conflict).returning(table.c.id)
    inserted = session.execute(stmt).scalar()
    return None if inserted is None else int(inserted)


def id_in(column: ColumnElement[int] | InstrumentedAttribute[int], ids: list[int]) -> ColumnElement[bool]:
    """`column = ANY(array)`: one parameter however many ids, so the statement text never grows."""
    return column == any_(cast(bindparam(None, ids, type_=ARRAY(Integer)), ARRAY(Integer)))
