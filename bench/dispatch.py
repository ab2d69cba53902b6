"""Dispatch throughput: N nudges come due, workers drain them to the local fake providers.

    python -m bench.dispatch [--nudges 10000] [--workers 2] [--concurrency 80] [--batch 240] [--latency 0.1]

Two workers of 80 sending threads hold the same 160 requests in flight as four of 40, for 15-20% less
CPU a nudge on two cores (fewer processes, and each worker's group commit writes bigger rounds), so that is the
default; the ceiling is always measured over workers x concurrency connections.

1. A committed scratch database `closer_bench` (on BENCH_DATABASE_URL's server, else on an embedded
   PostgreSQL of the run's own), an embedded Redis and the fake Twilio/SendGrid server (its own process,
   answering after `--latency`).
2. N/4 couples, both partners on SMS and email, all due now; `closer worker` processes already waiting.
3. One scheduler pass plans and enqueues the N prompt nudges; the clock runs from the start of that
   pass until the database holds N `sent` nudges. The fake's own record must show each nudge once.
4. The raw HTTP ceiling: the same N requests to the same fake over the same number of concurrent
   keep-alive connections (workers x concurrency), with no Closer in the way.
5. With SMS_RATE_PER_SECOND below what the workers can do, the achieved rate (from the fake's clock)
   must be within 5% of the limit, and no one-second window may hold more than the limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from typing import Any
from urllib.parse import urlencode

from cryptography.fernet import Fernet
from redis import Redis
from rq.suspension import resume, suspend
from sqlalchemy import func, insert, select

from bench.common import ROOT, run_load, scratch_database
from service.crypto import install_cipher, token_digest
from service.db import Database
from service.migrations import upgrade
from service.models import (
    ConsentState,
    Couple,
    Enrollment,
    EnrollmentStatus,
    Nudge,
    NudgeStatus,
    Partner,
    PartnerSchedule,
)
from service.redis_runtime import die_with_parent, start_embedded_redis
from service.settings import Settings

PUBLIC_BASE_URL = "https://bench.closer.example"
ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "bench-auth-token-" + "0" * 15
PROGRAM = "appreciation"
POSTAL_ADDRESS = "1 Example Street, Springfield, IL 62701"


def seed(database: Database, couples: int, *, channels: tuple[str, ...], due: datetime, tag: str) -> int:
    """Couples whose partners are all due at `due`, inserted in bulk; returns the nudges that will come due."""
    now = datetime.now(UTC)
    with database.transaction() as session:
        first_couple = session.execute(insert(Couple).returning(Couple.id), [{"created_at": now}] * couples)
        couple_ids = [row[0] for row in first_couple]
        partners = []
        for n, couple_id in enumerate(couple_ids):
            for position in (1, 2):
                token = secrets.token_urlsafe(24)
                partners.append({
                    "couple_id": couple_id, "position": position, "first_name": f"Partner{position}",
                    "phone_e164": f"+1415{(3000000 + 2 * n + position) % 10000000:07d}" if "sms" in channels else None,
                    "email": f"{tag}.{n}.{position}@example.com" if "email" in channels else None,
                    "timezone": "America/New_York", "preferred_time": clock(9, 0),
                    # No quiet hours: the benchmark must not depend on the hour it runs at.
                    "quiet_start": clock(0, 0), "quiet_end": clock(0, 0),
                    "sms_consent": ConsentState.CONFIRMED if "sms" in channels else ConsentState.NONE,
                    "email_consent": ConsentState.CONFIRMED if "email" in channels else ConsentState.NONE,
                    "reply_token": secrets.token_hex(12), "log_token": token, "log_token_hash": token_digest(token),
                    "log_token_issued_at": now, "created_at": now,
                })
        partner_rows = session.execute(insert(Partner).returning(Partner.id, Partner.couple_id), partners).all()
        enrollments = session.execute(
            insert(Enrollment).returning(Enrollment.id, Enrollment.couple_id),
            [{"couple_id": c, "program_key": PROGRAM, "status": EnrollmentStatus.ACTIVE, "created_at": now,
              "started_at": now} for c in couple_ids],
        ).all()
        enrollment_of = {couple_id: enrollment_id for enrollment_id, couple_id in enrollments}
        session.execute(insert(PartnerSchedule), [
            {"enrollment_id": enrollment_of[couple_id], "partner_id": partner_id, "next_day": 1,
             "first_local_date": date.today(), "next_send_at": due}
            for partner_id, couple_id in partner_rows
        ])
    return couples * 2 * len(channels)


class Fake:
    """The fake providers in their own process, so their work does not share our interpreter."""

    def __init__(self, latency: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_providers", "--latency", str(latency)],
            stdout=subprocess.PIPE, cwd=ROOT, text=True, preexec_fn=die_with_parent,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise RuntimeError("the fake providers did not start")

    def records(self) -> list[list[Any]]:
        with urllib.request.urlopen(self.url + "/_fake/records?light=1", timeout=60) as response:  # noqa: S310
            rows: list[list[Any]] = json.load(response)
            return rows

    def reset(self) -> None:
        request = urllib.request.Request(self.url + "/_fake/reset", data=b"{}", method="POST")  # noqa: S310
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def worker_env(base: dict[str, str], **overrides: str) -> dict[str, str]:
    return {**os.environ, **base, **overrides}


def start_workers(count: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"], env=env, cwd=ROOT, preexec_fn=die_with_parent
        )
        for _ in range(count)
    ]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def wait_until_sent(database: Database, timeout: float) -> tuple[float, int]:
    """When the database first held no nudge still `queued` or `sending` (to 20 ms), and how many were
    `sent` then (all of them, when every send went through).

    Polling costs PostgreSQL CPU the workers need, so what is polled is what is left, which gets cheaper
    to count as the drain ends (counting the growing `sent` set every 20 ms took a third of a core from
    PostgreSQL in a run's last second); it is done every 250 ms until the end is near."""
    deadline = time.monotonic() + timeout
    unsettled = Nudge.status.in_([NudgeStatus.QUEUED, NudgeStatus.SENDING])
    first: int | None = None
    while True:
        with database.transaction() as session:
            left = session.scalar(select(func.count(Nudge.id)).where(unsettled)) or 0
        if left == 0 or time.monotonic() > deadline:
            finished = time.perf_counter()
            with database.transaction() as session:
                sent = session.scalar(select(func.count(Nudge.id)).where(Nudge.status == NudgeStatus.SENT)) or 0
            return finished, sent
        first = first or left
        time.sleep(0.02 if left <= 0.1 * first else 0.25)


def run_pass_in_process(settings: Settings, now: datetime) -> dict[str, int | str]:
    from jobs.scheduler import run_pass
    from service.app import create_app
    from service.web.context import runtime_of

    app = create_app(settings)
    runtime = runtime_of(app)
    try:
        return run_pass(runtime, now)
    finally:
        runtime.database.dispose()


def once_each(records: list[list[Any]]) -> tuple[int, int]:
    """(nudges received at least once, nudges received more than once) from the fake's record."""
    counts = Counter((channel, nudge_id) for channel, nudge_id, _, outcome, _ in records
                     if outcome in ("accepted", "hung") and nudge_id is not None)
    return len(counts), sum(1 for n in counts.values() if n > 1)


def ceiling_requests(count: int) -> list[bytes]:
    """Requests like the SDKs send (Twilio form, SendGrid JSON), for the raw HTTP ceiling."""
    requests = []
    for n in range(count):
        if n % 2 == 0:
            body = urlencode({"To": f"+1415{3000000 + n:07d}", "From": "+15005550006",
                              "Body": "Alex, what is one small thing Sam did this week that made your day easier?",
                              "StatusCallback": f"{PUBLIC_BASE_URL}/webhooks/twilio/status?nudge={n}"}).encode()
            path, kind = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json", "application/x-www-form-urlencoded"
            auth = "Basic " + __import__("base64").b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        else:
            body = json.dumps({
                "from": {"email": "prompts@bench.closer.example", "name": "Closer"}, "subject": "A small thing",
                "personalizations": [{"to": [{"email": f"p{n}@example.com"}], "custom_args": {"nudge_id": str(n)}}],
                "content": [{"type": "text/plain", "value": "x" * 900}, {"type": "text/html", "value": "y" * 2400}],
            }).encode()
            path, kind, auth = "/v3/mail/send", "application/json", "Bearer SG.bench"
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\nAuthorization: {auth}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        requests.append(head + body)
    return requests


_clock_offset = time.time() - time.perf_counter()


def wall_at(perf: float) -> float:
    """A perf_counter reading on the wall clock the fake stamps its records with."""
    return perf + _clock_offset


def max_in_window(times: list[float], window: float = 1.0) -> int:
    ordered = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--nudges", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2, help="closer worker processes")
    parser.add_argument("--concurrency", type=int, default=80, help="provider calls in flight per worker")
    # A multiple of the sending threads (3 x 80): a batch of 250 leaves 10 nudges for a fourth round. In
    # interleaved runs (batches handed off at their tail) 240 drained at 991-993/s, 250 at 815-946/s.
    parser.add_argument("--batch", type=int, default=240, help="nudges per send job")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the fake takes to answer")
    parser.add_argument("--rate-limit", type=float, default=300.0, help="SMS_RATE_PER_SECOND for the rate run")
    parser.add_argument("--rate-nudges", type=int, default=3000)
    parser.add_argument("--skip-rate", action="store_true")
    parser.add_argument("--database", default="closer_bench", help="scratch database name (dropped and made again)")
    args = parser.parse_args()

    database_url = scratch_database(args.database)
    with contextlib.ExitStack() as stack:
        embedded = start_embedded_redis()
        stack.callback(embedded.stop)
        fake = Fake(args.latency)
        stack.callback(fake.stop)
        return run(args, database_url, embedded.url, fake)


def run(args: argparse.Namespace, database_url: str, redis_url: str, fake: Fake) -> int:
    key = Fernet.generate_key().decode()
    env = {
        "CLOSER_ENV": "production", "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "SECRET_KEY": secrets.token_urlsafe(32), "DATA_ENCRYPTION_KEY": key, "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_API_BASE_URL": fake.url, "SENDGRID_API_KEY": "SG.bench",
        "SENDGRID_FROM_EMAIL": "prompts@bench.closer.example", "SENDGRID_API_HOST": fake.url,
        "INBOUND_PARSE_SECRET": secrets.token_urlsafe(16), "SENDER_POSTAL_ADDRESS": POSTAL_ADDRESS,
        "SEND_BATCH_SIZE": str(args.batch), "SEND_CONCURRENCY": str(args.concurrency), "LOG_LEVEL": "WARNING",
        "SMS_RATE_PER_SECOND": "0", "EMAIL_RATE_PER_SECOND": "0",
    }
    settings = Settings.from_env(env)
    install_cipher(settings.data_encryption_key)
    upgrade(settings)
    database = Database(database_url)
    redis = Redis.from_url(redis_url)
    in_flight = args.workers * args.concurrency
    try:
        expected = seed(database, max(1, args.nudges // 4), channels=("sms", "email"),
                        due=datetime.now(UTC) - timedelta(minutes=1), tag="drain")
        print(f"dispatch: {expected} nudges due (SMS and email), {args.workers} workers x {args.concurrency} "
              f"in flight, batches of {args.batch}, fake latency {1000 * args.latency:.0f} ms, "
              f"database {database_url.split(':', 1)[0]}")
        closer_rate, ok = drain(args, settings, env, database, redis, fake, expected)
        fake.reset()
        ceiling = run_load(fake.url, ceiling_requests(expected), in_flight)
        ratio = closer_rate / ceiling.rps
        print(f"  ceiling: the same fake over {in_flight} keep-alive connections, no Closer: "
              f"{ceiling.rps:,.0f} requests/s")
        print(f"  ratio closer/ceiling: {ratio:.2f} (target >= 0.50); nudges/s target >= 1,000")
        ok = ok and closer_rate >= 1000 and ratio >= 0.5
        if not args.skip_rate:
            ok = rate_limited(args, settings, env, database, redis, fake) and ok
    finally:
        database.dispose()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"dispatch: {'all targets met' if ok else 'TARGETS MISSED'} (load average now {load} on "
          f"{os.cpu_count()} CPUs: other work on the machine lowers every figure)")
    return 0 if ok else 1


def run_suspended_then_drain(
    settings: Settings, env: dict[str, str], workers_count: int, database: Database, redis: Redis,
    fake: Fake | None = None,
) -> tuple[dict[str, int | str], float, float, int]:
    """Workers start held back (RQ's suspend), one scheduler pass plans and enqueues, then they drain.
    Returns the pass report, its duration, the wall-clock time all were sent, and how many were.
    With `fake`, prints where the CPU went while they drained."""
    suspend(redis)
    workers = start_workers(workers_count, worker_env(env))
    try:
        time.sleep(3)  # every worker has loaded the app and waits
        planning = time.perf_counter()
        report = run_pass_in_process(settings, datetime.now(UTC))
        planned = time.perf_counter()
        meter = contextlib.nullcontext()
        if fake is not None:
            meter = CpuMeter(database, {"workers": [w.pid for w in workers], "fake": [fake.process.pid],
                                        "redis": [int(redis.info("server")["process_id"])]})
        with meter:
            resume(redis)
            finished, sent = wait_until_sent(database, timeout=300)
        if isinstance(meter, CpuMeter):
            print(meter.line(sent))
    finally:
        resume(redis)
        stop_workers(workers)
    return report, planned - planning, wall_at(finished), sent


def drain(
    args: argparse.Namespace, settings: Settings, env: dict[str, str], database: Database, redis: Redis,
    fake: Fake, expected: int,
) -> tuple[float, bool]:
    report, planning, finished, sent = run_suspended_then_drain(settings, env, args.workers, database, redis, fake)
    records = fake.records()
    received, doubled = once_each(records)
    # From the first request reaching the fake to the last nudge recorded as sent in the database.
    seconds = finished - min(at for _, _, at, _, _ in records)
    rate = sent / seconds
    print(f"  scheduler pass: {report.get('created')} nudges planned and enqueued in {planning:.2f} s "
          f"({expected / planning:,.0f} nudges/s)")
    print(f"  closer:  {sent} sent in {seconds:.2f} s = {rate:,.0f} nudges/s "
          f"(the fake received {received} distinct nudges, {doubled} more than once)")
    return rate, sent == expected and received == expected and doubled == 0


class CpuMeter:
    """CPU seconds each part of the run used while the workers drained: where a nudge's cost goes.

    PostgreSQL backends are found (and their CPU read) while the run goes on, since they come and go."""

    def __init__(self, database: Database, groups: dict[str, list[int]]) -> None:
        import psutil

        self._psutil = psutil
        self.database = database
        self.groups = {name: [psutil.Process(pid) for pid in pids] for name, pids in groups.items()}
        self.groups["bench"] = [psutil.Process()]
        self.start: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.backends: dict[int, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _cpu(self, process: Any) -> float | None:
        try:
            times = process.cpu_times()
            return float(times.user + times.system)
        except self._psutil.Error:
            return None

    def _find_backends(self, *, late: bool) -> None:
        with contextlib.suppress(Exception), self.database.engine.connect() as conn:
            for (pid,) in conn.exec_driver_sql(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"):
                if pid not in self.backends:
                    self.backends[pid] = process = self._psutil.Process(pid)
                    # A backend that started during the drain counts all it used; one from before (the
                    # seeding, the scheduler pass) only what it used from now on.
                    self.start[pid] = 0.0 if late else (self._cpu(process) or 0.0)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._find_backends(late=True)
            for pid, process in self.backends.items():
                value = self._cpu(process)
                if value is not None:
                    self.last[pid] = value
            self._stop.wait(0.25)

    def __enter__(self) -> CpuMeter:
        self.cores = self._psutil.cpu_times()
        self.started = time.perf_counter()
        for processes in self.groups.values():
            for process in processes:
                self.start[process.pid] = self._cpu(process) or 0.0
        self._find_backends(late=False)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.elapsed = time.perf_counter() - self.started
        self.used: dict[str, float] = {}
        for name, processes in self.groups.items():
            self.used[name] = sum((self._cpu(p) or self.start[p.pid]) - self.start[p.pid] for p in processes)
        self._stop.set()
        self._thread.join()
        self.used["postgres"] = sum(self.last.get(pid, 0.0) - self.start[pid] for pid in self.backends)
        end = self._psutil.cpu_times()
        busy = sum(getattr(end, f) - getattr(self.cores, f) for f in ("user", "system", "nice", "irq", "softirq"))
        self.used["everything else on the machine"] = max(0.0, busy - sum(self.used.values()))

    def line(self, nudges: int) -> str:
        parts = ", ".join(f"{name} {1000 * seconds / max(1, nudges):.2f}" for name, seconds in self.used.items())
        return (f"  CPU in ms per nudge while draining ({os.cpu_count()} CPUs x {self.elapsed:.1f} s = "
                f"{1000 * (os.cpu_count() or 1) * self.elapsed / max(1, nudges):.2f} available): {parts}")


class AdmissionLog:
    """Collects every admission from the limiter's sliding-window log in Redis while a run goes on (each
    entry lives about a second there, so a poll every 200 ms sees them all)."""

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis, self.key = redis, key
        self.admitted: dict[bytes, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for member, score in self.redis.zrange(self.key, 0, -1, withscores=True):
                self.admitted[member] = score / 1_000_000
            self._stop.wait(0.2)

    def __enter__(self) -> AdmissionLog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def rate_limited(
    args: argparse.Namespace, settings: Settings, env: dict[str, str], database: Database, redis: Redis,
    fake: Fake,
) -> bool:
    fake.reset()
    limit = args.rate_limit
    expected = seed(database, max(1, args.rate_nudges // 2), channels=("sms",),
                    due=datetime.now(UTC) - timedelta(minutes=1), tag="rate")
    limited = {**env, "SMS_RATE_PER_SECOND": str(limit)}
    with AdmissionLog(redis, "closer:rate:sms:log") as log:
        run_suspended_then_drain(settings, limited, args.workers, database, redis)
    times = [at for channel, _, at, outcome, _ in fake.records() if channel == "sms" and outcome == "accepted"]
    span = max(times) - min(times)
    achieved = (len(times) - 1) / span if span > 0 else float("inf")
    admitted = max_in_window(list(log.admitted.values()))
    received = max_in_window(times)
    print(f"  rate limit {limit:,.0f} SMS/s across {args.workers} workers: {len(times)} SMS at {achieved:,.1f}/s "
          f"as the fake saw them ({100 * (achieved - limit) / limit:+.1f}% of the limit)")
    print(f"    busiest second, on the limiter's clock (Redis, shared by every worker): {admitted} admitted of "
          f"{len(log.admitted)} (never above {limit:,.0f}: {'yes' if admitted <= limit else 'NO'}); as the fake "
          f"stamped arrivals: {received} (scheduling jitter of a loaded machine included)")
    return (len(times) == expected and abs(achieved - limit) / limit <= 0.05 and achieved <= limit
            and admitted <= limit)


if __name__ == "__main__":
    sys.exit(main())
