"""Shared pieces of the benchmarks: scratch databases, servers on free loopback ports, a bounded load."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy import text
from sqlalchemy.engine import make_url

from service.db import make_engine, normalize_url
from service.embedded_postgres import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_embedded: EmbeddedPostgres | None = None


def scratch_database(name: str) -> str:
    """A fresh PostgreSQL database: on BENCH_DATABASE_URL's server if set, else on an embedded server of
    this run's own (a temporary folder, removed at exit), so a clone with no server measures too."""
    global _embedded
    base = os.environ.get("BENCH_DATABASE_URL")
    if not base:
        if _embedded is None:
            folder = Path(tempfile.mkdtemp(prefix="closer-bench-pg-"))
            _embedded = EmbeddedPostgres(folder / "data", max_connections=300).start()
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            atexit.register(_embedded.remove)  # runs first: atexit calls in reverse order
            print(f"(embedded PostgreSQL {_embedded.version} from {_embedded.bin}; set BENCH_DATABASE_URL "
                  "to measure on another server)", file=sys.stderr)
        return _embedded.create_database(name, fresh=True)
    url = make_url(normalize_url(base))
    admin = make_engine(url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


@contextmanager
def gunicorn(app_spec: str, env: dict[str, str], *, workers: int, threads: int) -> Iterator[str]:
    """One gunicorn (gthread workers, keep-alive) on a free port, stopped on exit."""
    port = free_port()
    argv = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
        "--worker-class", "gthread", "--threads", str(threads), "--keep-alive", "30", "--log-level", "warning",
        app_spec,
    ]
    process = subprocess.Popen(argv, env={**os.environ, **env}, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2)  # noqa: S310 - loopback only
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn {app_spec} did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class LoadResult:
    requests: int
    seconds: float
    statuses: dict[int, int]
    latencies: list[float]
    cpu: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 400 or status == 0)

    def line(self) -> str:
        return (f"{self.rps:8.1f} req/s  p50 {1000 * statistics.median(self.latencies):6.1f} ms  "
                f"p99 {1000 * self.percentile(0.99):6.1f} ms  errors {self.errors}  statuses {self.statuses}")

    def cpu_line(self) -> str:
        """CPU milliseconds per request by kind of process: where the machine's two cores went."""
        shares = sorted(self.cpu.items(), key=lambda item: -item[1])
        return "  ".join(f"{kind} {1000 * seconds / self.requests:.2f}" for kind, seconds in shares if seconds > 0)


async def _worker(host: str, port: int, requests: Sequence[bytes], cursor: list[int], result: LoadResult) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            index = cursor[0]
            if index >= len(requests):
                return
            cursor[0] += 1
            started = time.perf_counter()
            writer.write(requests[index])
            await writer.drain()
            status_line = await reader.readline()
            status = int(status_line.split()[1]) if status_line else 0
            length, close = 0, False
            while True:
                header = await reader.readline()
                if header in (b"\r\n", b""):
                    break
                name, _, value = header.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and value.strip().lower() == "close":
                    close = True
            if length:
                await reader.readexactly(length)
            result.latencies.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) each process on the machine has used so far, with its kind."""
    used: dict[int, tuple[str, float]] = {}
    for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times = process.info["cpu_times"]
        if times is None:
            continue
        name = process.info["name"] or ""
        cmdline = " ".join(process.info["cmdline"] or ())
        if process.pid == os.getpid():
            kind = "load generator"
        elif "gunicorn" in cmdline:
            kind = "gunicorn"
        elif name.startswith("postgres") or "postgres:" in cmdline:
            kind = "postgres"
        elif name.startswith("redis"):
            kind = "redis"
        else:
            kind = "other"
        used[process.pid] = (kind, times.user + times.system)
    return used


def cpu_used_between(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds by kind between two `cpu_seconds` readings. Per process, so one that exited in between
    (a backend, a server shutting down) is not taken off the total; one that started counts from zero."""
    totals: dict[str, float] = {}
    for pid, (kind, seconds) in after.items():
        earlier = before.get(pid)
        totals[kind] = totals.get(kind, 0.0) + seconds - (earlier[1] if earlier is not None else 0.0)
    return totals


def run_load(url: str, requests: Sequence[bytes], connections: int) -> LoadResult:
    """Send every prepared request once over `connections` keep-alive connections; bounded by construction."""
    parsed = make_url_host(url)
    result = LoadResult(requests=len(requests), seconds=0.0, statuses={}, latencies=[], cpu={})
    cursor = [0]

    async def main() -> None:
        await asyncio.gather(*(_worker(parsed[0], parsed[1], requests, cursor, result) for _ in range(connections)))

    cpu_before = cpu_seconds()
    started = time.perf_counter()
    asyncio.run(main())
    result.seconds = time.perf_counter() - started
    result.cpu = cpu_used_between(cpu_before, cpu_seconds())
    return result


def make_url_host(url: str) -> tuple[str, int]:
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    return host, int(port)
