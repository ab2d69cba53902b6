"""Alembic, driven from the same Settings as the web and the workers."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from service.embedded_postgres import with_database
from service.settings import PROJECT_ROOT, Settings


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.set_main_option("version_path_separator", "os")
    config.attributes["closer_settings"] = with_database(settings)
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str = "-1") -> None:
    command.downgrade(alembic_config(settings), revision)


def check(settings: Settings) -> None:
    command.check(alembic_config(settings))


def revision(settings: Settings, message: str) -> None:
    command.revision(alembic_config(settings), message=message, autogenerate=True)
