"""The migration chain on a database of its own: upgrade from empty, `alembic check`, down to base, up."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from service.db import make_engine, normalize_url
from service.migrations import check, downgrade, upgrade
from service.settings import Settings


@pytest.fixture()
def scratch_settings(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    url = make_url(normalize_url(settings.database_url))
    if url.get_backend_name() != "postgresql":
        yield settings.with_overrides(database_url=f"sqlite:///{tmp_path / 'migrations.db'}")
        return
    name = f"closer_migrations_{uuid.uuid4().hex[:8]}"
    admin = make_engine(url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield settings.with_overrides(database_url=url.set(database=name).render_as_string(hide_password=False))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _tables(settings: Settings) -> set[str]:
    engine = make_engine(settings.database_url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_check_downgrade_upgrade(scratch_settings: Settings) -> None:
    upgrade(scratch_settings)
    assert {"couples", "partners", "nudges", "log_entries", "consent_records"} <= _tables(scratch_settings)
    check(scratch_settings)  # raises when models and migrations disagree
    downgrade(scratch_settings, "base")
    assert _tables(scratch_settings) == set()
    upgrade(scratch_settings)
    check(scratch_settings)
    backend = make_url(scratch_settings.database_url).get_backend_name()
    print(f"migrations: upgrade, check, downgrade to base and upgrade passed on {backend}")


def test_0002_rebuilds_an_index_a_failed_concurrent_build_left_invalid(scratch_settings: Settings) -> None:
    if make_url(scratch_settings.database_url).get_backend_name() != "postgresql":
        pytest.skip("CREATE INDEX CONCURRENTLY and invalid indexes are PostgreSQL's")
    upgrade(scratch_settings, "0001")
    engine = make_engine(scratch_settings.database_url)
    try:
        with engine.begin() as conn:  # what an interrupted CONCURRENTLY build leaves: an index marked invalid
            conn.execute(text("CREATE INDEX ix_nudges_partner_id_sent_at ON nudges (partner_id)"))
            conn.execute(text("UPDATE pg_index SET indisvalid = false "
                              "WHERE indexrelid = 'ix_nudges_partner_id_sent_at'::regclass"))
        upgrade(scratch_settings)
        with engine.connect() as conn:
            valid, definition = conn.execute(text(
                "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index AS i "
                "WHERE i.indexrelid = 'ix_nudges_partner_id_sent_at'::regclass")).one()
    finally:
        engine.dispose()
    assert valid
    assert definition.endswith("(partner_id, sent_at)")
