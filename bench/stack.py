"""The servers and processes the fault suite owns: its own PostgreSQL cluster and redis-server (so it can
restart them without touching anyone else's), the fake providers, and Closer's own processes.

Everything here is started by this process, on free loopback ports, and stopped (the PostgreSQL cluster
dropped) on exit; a child dies with its parent even when the parent is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_lib

from bench.common import ROOT, free_port
from service.embedded_postgres import EmbeddedPostgres, EmbeddedPostgresError
from service.redis_runtime import die_with_parent


class StackError(RuntimeError):
    """A server the suite needs could not be started; the message says what is missing."""


def _run(argv: list[str], *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise StackError(f"{' '.join(argv)} exited with {done.returncode}: {(done.stderr or done.stdout)[-2000:]}")
    return done


class OwnPostgres(EmbeddedPostgres):
    """A PostgreSQL server of our own (the embedded one), so a scenario can restart or stop it."""

    def __init__(self, workdir: Path, *, max_connections: int = 300) -> None:
        super().__init__(workdir / "pgdata", max_connections=max_connections, options={"shared_buffers": "256MB"})

    def create(self) -> OwnPostgres:
        try:
            self.start()
        except EmbeddedPostgresError as exc:
            raise StackError(str(exc)) from exc
        return self

    def create_database(self, name: str, *, fresh: bool = True) -> str:
        return super().create_database(name, fresh=fresh)

    def drop(self) -> None:
        self.remove()


class OwnRedis:
    """A redis-server of our own on a free port, without persistence, so a restart loses everything."""

    def __init__(self, workdir: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise StackError("No redis-server on PATH: install redis-server to run the fault suite.")
        self.server = server
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis_lib.Redis:
        return redis_lib.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)

    def start(self) -> OwnRedis:
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [self.server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--daemonize", "no", "--loglevel", "warning"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return self
            except redis_lib.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise StackError("our redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Like a crash of a Redis without persistence: everything in it is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, down_seconds: float = 2.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def used_memory(self) -> int:
        return int(self.client().info("memory")["used_memory"])


class FakeProviderProcess:
    """tests/support/fake_providers.py in its own process, so its threads never wait on ours."""

    def __init__(self, workdir: Path, *, latency: float = 0.0) -> None:
        self.port = free_port()
        self.latency = latency
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeProviderProcess:
        log = (self.workdir / "fake-providers.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_providers", "--port", str(self.port),
             "--latency", str(self.latency)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True, preexec_fn=die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                self.records()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise StackError("the fake providers did not start") from None
                time.sleep(0.1)

    def _post(self, path: str, payload: dict[str, Any]) -> None:
        request = urllib.request.Request(  # noqa: S310 - our own loopback server
            self.url + path, data=json.dumps(payload).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
            response.read()

    def configure(self, *, rules: list[dict[str, Any]] | None = None, clear: bool = False,
                  latency: float | None = None) -> None:
        payload: dict[str, Any] = {"rules": rules or [], "clear_rules": clear}
        if latency is not None:
            payload["latency"] = latency
        self._post("/_fake/config", payload)

    def reset(self) -> None:
        self._post("/_fake/reset", {})

    def records(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/_fake/records", timeout=60) as response:  # noqa: S310
            rows: list[dict[str, Any]] = json.loads(response.read())
        return rows

    def stop(self) -> None:
        _stop_process(self.process)


def _stop_process(process: subprocess.Popen[bytes] | None, *, timeout: float = 20) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class CloserProcess:
    role: str
    process: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class CloserProcesses:
    """Closer's own processes (`closer worker`, `closer scheduler`, gunicorn, `closer tick`), all
    configured through the environment exactly as in production."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = {**os.environ, **env}
        self.logdir = logdir
        self.workers: list[CloserProcess] = []
        self.scheduler: CloserProcess | None = None
        self.web: CloserProcess | None = None
        self.web_url = ""
        self.restarts: dict[str, int] = {"worker": 0, "scheduler": 0, "web": 0}
        self.kills = 0
        self._serial = 0

    def _spawn(self, role: str, argv: list[str]) -> CloserProcess:
        self._serial += 1
        log = (self.logdir / f"{role}-{self._serial}.log").open("ab")
        process = subprocess.Popen(
            argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log.close()
        return CloserProcess(role, process)

    def start_worker(self) -> CloserProcess:
        worker = self._spawn("worker", [sys.executable, "-m", "service.cli", "worker"])
        self.workers.append(worker)
        return worker

    def start_workers(self, count: int) -> None:
        for _ in range(count):
            self.start_worker()

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn("scheduler", [sys.executable, "-m", "service.cli", "scheduler"])

    def start_web(self, *, workers: int = 2, threads: int = 8) -> str:
        port = free_port()
        self.web = self._spawn("web", [
            sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--worker-class", "gthread", "--threads", str(threads), "--keep-alive", "30", "--log-level", "warning",
            "--graceful-timeout", "10", "service.app:create_app()",
        ])
        self.web_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.web_url + "/healthz", timeout=2)  # noqa: S310 - loopback only
                return self.web_url
            except OSError:
                if not self.web.alive or time.monotonic() > deadline:
                    raise StackError("gunicorn did not start; see its log in " + str(self.logdir)) from None
                time.sleep(0.2)

    def kill_worker(self, worker: CloserProcess) -> None:
        """kill -9: no clean-up of any kind, as when a machine dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        self.workers.remove(worker)
        self.kills += 1

    def restart_worker(self, worker: CloserProcess) -> CloserProcess:
        """A deploy-style restart: SIGTERM (RQ finishes its current job), then a fresh worker."""
        _stop_process(worker.process, timeout=60)
        self.workers.remove(worker)
        self.restarts["worker"] += 1
        return self.start_worker()

    def supervise(self) -> None:
        """What a process manager does: a process that died on its own is started again."""
        for worker in list(self.workers):
            if not worker.alive:
                self.workers.remove(worker)
                self.start_worker()
                self.restarts["worker"] += 1
        if self.scheduler is not None and not self.scheduler.alive:
            self.start_scheduler()
            self.restarts["scheduler"] += 1

    def tick(self, now_iso: str) -> dict[str, Any]:
        """`closer tick --now`: one scheduler pass as of an instant; retried while another pass holds the lock."""
        for _ in range(60):
            done = subprocess.run(
                [sys.executable, "-m", "service.cli", "tick", "--now", now_iso], env=self.env, cwd=ROOT,
                capture_output=True, text=True, timeout=300,
            )
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            report: dict[str, Any] = json.loads(lines[-1]) if lines else {"status": "error", "rc": done.returncode}
            if report.get("status") == "ok":
                return report
            time.sleep(1)
        return report

    def stop_all(self) -> None:
        for process in [*self.workers, self.scheduler, self.web]:
            if process is not None:
                _stop_process(process.process)
        self.workers.clear()
        self.scheduler = self.web = None


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
