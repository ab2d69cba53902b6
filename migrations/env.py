"""Alembic environment: the database URL comes from Closer's Settings, like everything else."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

import service.models  # noqa: F401 - registers every table on Base.metadata
from service.crypto import install_cipher
from service.db import Base, make_engine
from service.settings import Settings

config = context.config
settings: Settings = config.attributes.get("closer_settings") or Settings.from_env()
install_cipher(settings.data_encryption_key)
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(settings.database_url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
