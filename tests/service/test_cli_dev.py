"""`closer dev` as a developer runs it: everything comes up, and nothing it started outlives it.

Each test starts the real command in a subprocess with no DATABASE_URL or REDIS_URL, so it starts its own
embedded PostgreSQL (in the test's folder) and Redis, waits for the web process to answer, then stops it
with Ctrl-C (SIGINT) or kills it outright (SIGKILL), and checks every process it had started, found by
parentage while it ran: web, worker, scheduler, postgres and redis-server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from service.redis_runtime import free_loopback_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CLOSER = Path(sys.executable).parent / "closer"
START_TIMEOUT = 90.0
ROLES = {"web": ("service.cli", "run"), "worker": ("service.cli", "worker"), "scheduler": ("service.cli", "scheduler")}


@dataclass
class DevRun:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"REDIS_URL", "DATABASE_URL", "TEST_DATABASE_URL"} and not k.startswith("FLASK_")}
    env.update(
        CLOSER_ENV="development",
        EMBEDDED_POSTGRES_DIR=str(tmp_path / "postgres"),
        PYTHONUNBUFFERED="1",
        SCHEDULER_INTERVAL_SECONDS="1",
    )
    return env


@pytest.fixture()
def dev(tmp_path: Path) -> Iterator[DevRun]:
    assert CLOSER.exists(), f"{CLOSER} is missing: install the project into this virtualenv"
    port = free_loopback_port()
    log = tmp_path / "closer-dev.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(CLOSER), "dev", "--port", str(port)],
            cwd=REPO, env=_environment(tmp_path), stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
        )
    run = DevRun(process, port, log)
    started: list[psutil.Process] = []
    try:
        _wait_until_serving(run)
        started = _descendants(process.pid)
        yield run
    finally:
        # Whatever the test asserted, leave nothing running behind.
        started += _descendants(process.pid) if process.poll() is None else []
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for child in started:
            if _alive(child):
                child.kill()


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait_until_serving(run: DevRun) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if run.process.poll() is not None:
            pytest.fail(f"closer dev exited with {run.process.returncode} before serving:\n{run.output()}")
        try:
            if _get(run.port, "/healthz") == 200:
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    else:
        pytest.fail(f"closer dev did not answer /healthz within {START_TIMEOUT:.0f} s:\n{run.output()}")
    assert _get(run.port, "/dev/outbox") == 200, run.output()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie; `is_running` also tells a reused pid from the process we saw."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _role(process: psutil.Process) -> str:
    try:
        cmdline = process.cmdline()
        name = process.name()
    except psutil.NoSuchProcess:
        return "gone"
    if "redis-server" in name or any("redis-server" in part for part in cmdline[:1]):
        return "redis"
    if name == "postgres":
        return "postgres"
    for role, (module, command) in ROLES.items():
        if module in cmdline and command in cmdline:
            return role
    return name


def _listening(port: int) -> bool:
    return any(
        conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN
        for conn in psutil.net_connections(kind="tcp")
    )


def _survivors(processes: list[psutil.Process], within: float) -> list[str]:
    deadline = time.monotonic() + within
    while True:
        alive = [f"{_role(p)} (pid {p.pid})" for p in processes if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def test_ctrl_c_stops_web_worker_scheduler_postgres_and_redis(dev: DevRun, tmp_path: Path) -> None:
    children = _descendants(dev.process.pid)
    roles = {_role(child) for child in children}
    assert {"web", "worker", "scheduler", "postgres", "redis"} <= roles, f"started {roles}:\n{dev.output()}"
    assert (tmp_path / "postgres" / "PG_VERSION").exists()
    redis_ports = [conn.laddr.port for child in children if _role(child) == "redis"
                   for conn in child.net_connections(kind="tcp") if conn.status == psutil.CONN_LISTEN]
    assert redis_ports

    dev.process.send_signal(signal.SIGINT)
    try:
        returncode = dev.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"closer dev was still running 20 s after Ctrl-C:\n{dev.output()}")

    assert returncode == 0, dev.output()
    assert "closer dev: stopped" in dev.output()
    assert _survivors(children, within=2) == [], dev.output()
    assert not _listening(dev.port)
    assert not any(_listening(port) for port in redis_ports)
    assert not (tmp_path / "postgres" / "postmaster.pid").exists(), "postgres was not shut down cleanly"


def test_kill_9_of_closer_dev_leaves_no_orphans(dev: DevRun) -> None:
    children = _descendants(dev.process.pid)
    assert {"web", "worker", "scheduler", "postgres", "redis"} <= {_role(child) for child in children}, dev.output()

    dev.process.kill()  # SIGKILL: no handler runs; only the children's parent-death signal can stop them
    dev.process.wait(timeout=10)

    assert _survivors(children, within=10) == [], dev.output()
    assert not _listening(dev.port)
