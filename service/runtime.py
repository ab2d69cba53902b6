"""What every process holds at run time, built once by `build_runtime`: the web app (create_app keeps it
in `app.extensions`), the worker (jobs.runtime), the scheduler and the CLI commands. No Flask here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import redis

from service.crypto import install_cipher
from service.db import Database
from service.embedded_postgres import with_database
from service.programs import ProgramLibrary, load_programs
from service.providers import Providers, build_providers
from service.redis_runtime import EmbeddedRedis, start_embedded_redis
from service.settings import Settings, SettingsError


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

    def close(self) -> None:
        """Let go of the database's connections, and stop a Redis this process started."""
        self.database.dispose()
        if self.embedded_redis is not None:
            self.embedded_redis.stop()


def build_runtime(settings: Settings, *, programs_dir: Path | None = None) -> Runtime:
    """Programs, the cipher, the database, Redis and the providers, as web, worker, scheduler and CLI
    share them. `programs_dir` replaces message_templates/programs/ (tests, content drafts)."""
    # First, so an invalid program stops the start before anything (an embedded Redis) is running.
    programs = load_programs(programs_dir)
    install_cipher(settings.data_encryption_key)
    # The servers: each from its URL setting, else, in development, one this process starts or finds.
    settings = with_database(settings)
    database = Database(settings.database_url)
    redis_url, embedded_redis = _redis_url(settings)
    return Runtime(
        settings=settings,
        database=database,
        redis_url=redis_url,
        providers=build_providers(settings, database),
        programs=programs,
        embedded_redis=embedded_redis,
    )


def _redis_url(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """REDIS_URL; unset (development, tests), an embedded Redis that stops with this process."""
    if settings.redis_url:
        return settings.redis_url, None
    if settings.is_production:
        raise SettingsError("Set REDIS_URL: outside development Closer does not start its own Redis.")
    embedded = start_embedded_redis()
    return embedded.url, embedded
