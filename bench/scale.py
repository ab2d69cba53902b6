"""A million couples: does a scheduler pass cost what is due, or what exists?

    python -m bench.scale [--couples 1000000] [--small 10000] [--due 5000] [--peak 100000]
                          [--drain-seconds 60] [--workers 4] [--keep]

1. A scratch database `closer_scale` (on BENCH_DATABASE_URL's server, else on an embedded PostgreSQL of
   the run's own) and a redis-server of our own. `--small` enrolled couples are generated in bulk
   (bench/seed.py: COPY, a progress bar), both partners on SMS, every schedule due hours from now except
   `--due` partners due this minute.
2. The scheduler pass (jobs.scheduler.run_pass, in this process) over those `--due` partners: the median
   time of five runs and the Python memory peak (tracemalloc) of a sixth, the state reset in between (the
   machine is shared, so single runs are noisy; the fastest is printed too).
3. The population grows to `--couples` in bulk (2 partners, 1 enrollment and 2 schedules each) and the same
   `--due` partners are measured again. The ratio of the two is the point: at most 1.5 means the pass
   costs what is due, not how many couples exist.
4. `--peak` partners in one time zone are made due within one minute (the morning peak) and one pass plans
   them all: its time, and Redis' used_memory before and after it enqueued their send jobs.
5. Drain: `--workers` `closer worker` processes send to the local fake provider for `--drain-seconds` at
   the configured SMS_RATE_PER_SECOND (Closer's default unless set); the time to drain the whole peak is
   computed from the measured rate, since a full drain at 10/s would take hours. A second sample with the
   rate limit off shows what the workers themselves could do.

The database is dropped at the end unless `--keep`. Seeded names share one ciphertext (see bench/seed.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine, make_url

from bench.common import ROOT, scratch_database
from bench.seed import PartnerSpec, day_zone, seed_couples
from bench.stack import CloserProcesses, FakeProviderProcess, workdir
from service.app import create_app
from service.crypto import Cipher
from service.db import make_engine
from service.domain.scheduling import zone
from service.migrations import upgrade
from service.models import ConsentState, Nudge
from service.redis_runtime import start_embedded_redis
from service.settings import Settings
from service.web.context import runtime_of

PUBLIC_BASE_URL = "https://scale.closer.example"
ACCOUNT_SID = "AC" + "fedcba9876543210" * 2
AUTH_TOKEN = "scale-twilio-auth-token-0123456789"  # noqa: S105 - a fixture, not a secret
RATIO_TARGET = 1.5
# The peak spread over its minute: one partner in sixty due at each second of it.
_MAKE_DUE = ("UPDATE partner_schedules SET next_day = 1, first_local_date = :day, "
             "next_send_at = :start + (partner_id % 60) * interval '1 second' "
             "WHERE partner_id BETWEEN :lo AND :hi")
TIMED_RUNS = 5


@dataclass
class PassFigures:
    couples: int
    due: int
    seconds: list[float] = field(default_factory=list)
    python_peak_mib: float = 0.0
    rss_growth_mib: float = 0.0
    created: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0


@dataclass
class Figures:
    database: str
    zone: str
    seed_seconds: float = 0.0
    small: PassFigures | None = None
    large: PassFigures | None = None
    peak: PassFigures | None = None
    redis_before_mib: float = 0.0
    redis_after_mib: float = 0.0
    redis_jobs: int = 0
    configured_rate: float = 0.0
    drained_at_rate: float = 0.0
    drained_unlimited: float = 0.0
    drain_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def time_ratio(self) -> float:
        return self.large.median / self.small.median if self.small and self.large and self.small.median else 0.0

    @property
    def memory_ratio(self) -> float:
        if not (self.small and self.large and self.small.python_peak_mib):
            return 0.0
        return self.large.python_peak_mib / self.small.python_peak_mib


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.now = datetime.now(UTC)
        self.zone = day_zone(self.now)
        self.local_time = self.now.astimezone(zone(self.zone)).time().replace(second=0, microsecond=0)
        self.key = Fernet.generate_key().decode()
        self.database_url = scratch_database(args.database)
        self.redis = start_embedded_redis()
        self.settings = self._settings()
        upgrade(self.settings)
        self.engine: Engine = make_engine(self.database_url)
        self.app = create_app(self.settings)
        self.runtime = runtime_of(self.app)
        self.figures = Figures(database="postgresql", zone=self.zone)
        # Partners due in the measured passes: the first `due` of them, the same rows at both sizes.
        self.due_partners = range(1, args.due + 1)
        self.due_at = self.now - timedelta(seconds=30)

    def _settings(self) -> Settings:
        rate = float(os.environ.get("SMS_RATE_PER_SECOND") or Settings.sms_rate_per_second)
        return Settings(
            closer_env="production", database_url=self.database_url, redis_url=self.redis.url,
            secret_key="s" * 40, data_encryption_key=(self.key,), public_base_url=PUBLIC_BASE_URL,
            twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN, twilio_from_number="+15005550006",
            sms_rate_per_second=rate, log_level="WARNING",
        ).validated()

    # --- generation --------------------------------------------------------------------------------

    def spec_for(self, first_partner: int, *, due: range) -> Callable[[int, int], PartnerSpec]:
        later = self.now + timedelta(hours=2)

        def spec(index: int, position: int) -> PartnerSpec:
            partner_id = first_partner + 2 * index + position - 1
            # The rest spread over the next day, as preferred times and zones would: none due for hours.
            at = self.due_at if partner_id in due else later + timedelta(seconds=(partner_id * 7919) % 86_400)
            return PartnerSpec(self.zone, self.local_time, sms=ConsentState.CONFIRMED, next_send_at=at)

        return spec

    def grow_to(self, couples: int) -> None:
        have = self.count("couples")
        if couples <= have:
            return
        seeded = seed_couples(self.engine, couples - have, self.spec_for(2 * have + 1, due=self.due_partners),
                              cipher=Cipher([self.key]), now=self.now, first_couple_id=have + 1,
                              label=f"to {couples:,}")
        self.figures.seed_seconds += seeded.seconds
        self.analyze()

    def analyze(self) -> None:
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
            # Write the load's dirty pages out now, not in the middle of a measured pass.
            conn.execute(text("CHECKPOINT"))

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608

    # --- one pass --------------------------------------------------------------------------------------

    def reset_due(self, partners: range, at: datetime) -> None:
        """Back to before the pass: no nudges, the due schedules due again, Redis empty."""
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM nudges"))
            conn.execute(text(
                "UPDATE partner_schedules SET next_day = 1, next_send_at = :at, "
                "first_local_date = :day WHERE partner_id BETWEEN :lo AND :hi"),
                {"at": at, "day": self.due_at.astimezone(zone(self.zone)).date(), "lo": partners.start,
                 "hi": partners.stop - 1})
        self.runtime.redis.flushdb()

    def one_pass(self, now: datetime, *, trace: bool = False) -> tuple[float, float, float, dict[str, Any]]:
        from jobs.scheduler import run_pass

        process = psutil.Process()
        rss_before = process.memory_info().rss
        if trace:
            tracemalloc.start()
        started = time.perf_counter()
        with self.app.app_context():
            report = run_pass(self.runtime, now)
        seconds = time.perf_counter() - started
        peak = 0.0
        if trace:
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        return seconds, peak, (process.memory_info().rss - rss_before) / 2**20, report

    def measure(self, couples: int) -> PassFigures:
        figures = PassFigures(couples=self.count("couples"), due=len(self.due_partners))
        for run in range(TIMED_RUNS + 1):
            self.reset_due(self.due_partners, self.due_at)
            seconds, peak, rss, report = self.one_pass(datetime.now(UTC), trace=run == TIMED_RUNS)
            if report.get("status") != "ok" or int(report.get("created", 0)) != len(self.due_partners):
                raise RuntimeError(f"the pass did not plan the {len(self.due_partners)} due partners: {report}")
            figures.created = int(report["created"])
            if run < TIMED_RUNS:
                figures.seconds.append(seconds)
            else:
                figures.python_peak_mib = peak
            figures.rss_growth_mib = max(figures.rss_growth_mib, rss)
        self.reset_due(self.due_partners, self.now + timedelta(hours=30))
        print(f"  pass over {figures.due:,} due at {figures.couples:,} couples: median "
              f"{figures.median:.2f} s of {', '.join(f'{s:.2f}' for s in figures.seconds)}; "
              f"Python peak {figures.python_peak_mib:.1f} MiB", flush=True)
        return figures

    # --- the peak ----------------------------------------------------------------------------------------

    def peak(self, size: int) -> PassFigures:
        """`size` partners (after the measured ones) due within one minute, planned in one pass: timed, then
        once more (from the same state) under tracemalloc for its memory."""
        from rq import Queue

        from service.queues import QUEUE_SEND

        partners = range(len(self.due_partners) + 1, len(self.due_partners) + 1 + size)
        window_end = self.make_due_within_a_minute(partners)
        self.figures.redis_before_mib = self.redis_mib()
        seconds, _, _, report = self.one_pass(window_end)
        self.figures.redis_after_mib = self.redis_mib()
        self.figures.redis_jobs = Queue(QUEUE_SEND, connection=self.runtime.redis).count
        figures = PassFigures(couples=self.count("couples"), due=size, seconds=[seconds],
                              created=int(report.get("created", 0)))
        print(f"  peak: {size:,} due within one minute planned in {seconds:.1f} s ({figures.created:,} nudges, "
              f"{self.figures.redis_jobs:,} send jobs); Redis used_memory {self.figures.redis_before_mib:.1f} -> "
              f"{self.figures.redis_after_mib:.1f} MiB", flush=True)
        _, figures.python_peak_mib, _, _ = self.one_pass(self.make_due_within_a_minute(partners), trace=True)
        print(f"  peak pass again under tracemalloc: Python peak {figures.python_peak_mib:.1f} MiB", flush=True)
        return figures

    def make_due_within_a_minute(self, partners: range) -> datetime:
        """No nudges, Redis empty, and `partners` due across the last minute; returns that minute's end."""
        window_end = datetime.now(UTC)
        window_start = window_end - timedelta(seconds=60)
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM nudges"))
            conn.execute(text(_MAKE_DUE), {
                "day": window_start.astimezone(zone(self.zone)).date(), "start": window_start,
                "lo": partners.start, "hi": partners.stop - 1})
        self.runtime.redis.flushdb()
        return window_end

    def redis_mib(self) -> float:
        return float(self.runtime.redis.info("memory")["used_memory"]) / 2**20

    # --- draining --------------------------------------------------------------------------------------

    def sent(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM nudges WHERE status IN ('sent', 'delivered')"))
                       .scalar_one())

    def drain_sample(self, seconds: float, *, rate: float | None) -> float:
        """Run workers against the fake provider for `seconds`; the achieved sends per second."""
        with workdir("closer-scale-") as path:
            fake = FakeProviderProcess(path, latency=0.05).start()
            env = {
                "CLOSER_ENV": "production", "DATABASE_URL": self.database_url, "REDIS_URL": self.redis.url,
                "SECRET_KEY": self.settings.secret_key, "DATA_ENCRYPTION_KEY": self.key,
                "PUBLIC_BASE_URL": PUBLIC_BASE_URL, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_FROM_NUMBER": "+15005550006",
                "TWILIO_API_BASE_URL": fake.url, "LOG_LEVEL": "WARNING",
                "SMS_RATE_PER_SECOND": str(self.settings.sms_rate_per_second if rate is None else rate),
            }
            processes = CloserProcesses(env, path)
            try:
                processes.start_workers(self.args.workers)
                # Measure from a running start: once the workers have imported, connected and sent a little.
                before, deadline = self.sent(), time.monotonic() + 60
                while self.sent() < before + 2 * self.args.workers and time.monotonic() < deadline:
                    time.sleep(0.2)
                started = datetime.now(UTC)
                time.sleep(seconds)
            finally:
                processes.stop_all()
                fake.stop()
        return self.send_rate_since(started)

    def send_rate_since(self, started: datetime) -> float:
        """Sends per second between the first and the last send recorded since `started`.

        Timed by the sends themselves, not by the sample's length: without a rate limit the workers may
        empty the queue before the sample ends, and idle seconds after that are not a slower drain.
        """
        with self.engine.connect() as conn:
            count, first, last = conn.execute(
                select(func.count(), func.min(Nudge.sent_at), func.max(Nudge.sent_at)).where(Nudge.sent_at >= started)
            ).one()
        if count < 2 or first is None or last is None or last <= first:
            return 0.0
        return float(count - 1) / (last - first).total_seconds()

    def drain(self) -> None:
        seconds = self.args.drain_seconds
        rate = self.settings.sms_rate_per_second
        self.figures.configured_rate = rate
        self.figures.drain_seconds = seconds
        self.figures.drained_at_rate = self.drain_sample(seconds, rate=None)
        print(f"  drain at SMS_RATE_PER_SECOND={rate:g}: {self.figures.drained_at_rate:.2f} sends/s over {seconds:g} s",
              flush=True)
        self.figures.drained_unlimited = self.drain_sample(min(seconds, 30), rate=0)
        print(f"  drain with no rate limit: {self.figures.drained_unlimited:.0f} sends/s "
              f"({self.args.workers} workers)", flush=True)

    def close(self) -> None:
        self.runtime.database.dispose()
        self.engine.dispose()
        self.redis.stop()
        if not self.args.keep:
            name = make_url(self.database_url).database
            admin = make_engine(make_url(self.database_url).set(database="postgres")
                                .render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def report(figures: Figures, args: argparse.Namespace) -> str:
    small, large, peak = figures.small, figures.large, figures.peak
    assert small and large and peak
    drain_rate = figures.drained_at_rate or figures.configured_rate
    lines = [
        "",
        f"bench/scale.py on {figures.database}, partners in {figures.zone}",
        f"  generated {large.couples:,} couples ({2 * large.couples:,} partners, {large.couples:,} enrollments, "
        f"{2 * large.couples:,} schedules) in {figures.seed_seconds:.0f} s",
        "",
        f"  {'scheduler pass':<30}{'couples':>12}{'due':>8}{'median s':>10}{'fastest s':>10}{'Python peak MiB':>17}",
        *(f"  {label:<30}{f.couples:>12,}{f.due:>8,}{f.median:>10.2f}{min(f.seconds):>10.2f}"
          f"{f.python_peak_mib:>17.1f}" for label, f in (("small", small), ("large", large))),
        f"  ratio large/small: time {figures.time_ratio:.2f}, memory {figures.memory_ratio:.2f} "
        f"(target <= {RATIO_TARGET})",
        "",
        f"  morning peak: {peak.due:,} partners due within one minute, one pass {peak.median:.1f} s "
        f"({peak.created:,} nudges, {figures.redis_jobs:,} send jobs of {args.batch}), Python peak "
        f"{peak.python_peak_mib:.1f} MiB; each batch of 1,000 is committed and enqueued as it is planned",
        f"  Redis used_memory {figures.redis_before_mib:.1f} MiB before, {figures.redis_after_mib:.1f} MiB after "
        f"enqueueing (+{figures.redis_after_mib - figures.redis_before_mib:.1f} MiB)",
        f"  drain at SMS_RATE_PER_SECOND={figures.configured_rate:g}: measured {figures.drained_at_rate:.2f}/s over "
        f"{figures.drain_seconds:g} s -> {peak.created:,} sends take {peak.created / drain_rate / 60:.0f} min "
        f"({peak.created / drain_rate / 3600:.1f} h)",
        f"  without a rate limit the {args.workers} workers sent {figures.drained_unlimited:.0f}/s -> "
        f"{peak.created / max(figures.drained_unlimited, 0.001) / 60:.1f} min: the provider's limit is the bound",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--couples", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000, help="couples at the first measurement")
    parser.add_argument("--due", type=int, default=5_000, help="partners due in each measured pass")
    parser.add_argument("--peak", type=int, default=100_000, help="partners due within the peak minute")
    parser.add_argument("--drain-seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--database", default="closer_scale", help="scratch database name (dropped first)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--json", type=Path, default=ROOT / "test-artifacts" / "scale.json",
                        help="where the figures are written")
    args = parser.parse_args(argv)
    args.small = min(args.small, args.couples)
    args.due = min(args.due, 2 * args.small)
    args.peak = min(args.peak, 2 * args.couples - args.due)
    bench = Bench(args)
    args.batch = bench.settings.send_batch_size
    figures = bench.figures
    print(f"bench/scale: {args.small:,} then {args.couples:,} couples, {args.due:,} due per measured pass, "
          f"a peak of {args.peak:,}; database {figures.database}", flush=True)
    try:
        bench.grow_to(args.small)
        figures.small = bench.measure(args.small)
        bench.grow_to(args.couples)
        figures.large = bench.measure(args.couples)
        figures.peak = bench.peak(args.peak)
        bench.drain()
    finally:
        bench.close()
    print(report(figures, args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(asdict(figures), indent=2, default=str))
    return 0 if figures.time_ratio <= RATIO_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
