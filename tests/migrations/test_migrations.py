"""The migration chain on a database of its own: upgrade from empty, `alembic check`, down to base, up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import inspect, text

from service.db import make_engine
from service.migrations import check, downgrade, upgrade
from service.settings import Settings
from tests.support.databases import scratch_database


@pytest.fixture()
def scratch_settings(settings: Settings) -> Iterator[Settings]:
    with scratch_database(settings.database_url, "migrations") as url:
        yield settings.with_overrides(database_url=url)


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


def test_0002_rebuilds_an_index_a_failed_concurrent_build_left_invalid(scratch_settings: Settings) -> None:
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
