"""Scratch databases: an empty PostgreSQL database beside the test database, for tests that need committed
data another process can see (real workers, a gunicorn app) or a schema of their own (the migrations)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import make_url

from service.db import make_engine, normalize_url


@contextmanager
def scratch_database(base: str, label: str) -> Iterator[str]:
    """The URL of a new, empty database `<test database>_<label>` on `base`'s server, dropped afterwards.

    The name follows the test database's, so suites run side by side on one server (each with a test
    database of its own) never share a scratch database; one left over by a killed run is dropped first.
    """
    url = make_url(normalize_url(base))
    name = f"{url.database}_{label}"
    admin = make_engine(url.set(database="postgres").render_as_string(hide_password=False),
                        isolation_level="AUTOCOMMIT")

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    try:
        drop()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        drop()
        admin.dispose()
