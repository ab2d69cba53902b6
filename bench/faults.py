"""`make faults`: Closer's guarantees under faults, each during a morning peak, judged by the providers.

    python -m bench.faults [--size 10000] [--scenario NAME ...] [--workers 4] [--real-time]

Every scenario runs against this suite's own PostgreSQL cluster and redis-server (started here on free
ports, so restarting them disturbs nobody), the local fake Twilio/SendGrid (tests/support/fake_providers.py)
and Closer's real processes: several `closer worker`, one `closer scheduler`, gunicorn for webhooks, all
configured through the environment as in production. Each scenario seeds a fresh database with a peak of
at least `--size` prompts due within the same half minute (10,000 by default; the CI run in tests/faults
uses 1,000), injects its faults while they go out, waits for the system to settle, and then judges:

- doubled: a nudge the fake provider accepted (or held on a hung connection) more than once, counted by
  our nudge id and by recipient + text;
- lost: an expected prompt that was never planned, a nudge that did not end `sent`/`delivered`, `failed`,
  `undelivered`, `skipped` or `cancelled` with a reason, or one we recorded as sent that the provider never
  accepted. Nudges a worker was sending when it died (or whose provider call hung) cannot be known to have
  gone out: Closer marks them for operator review instead of resending them; they are counted apart
  ("review"), never as lost;
- wrong consent: any provider request for a partner who was opted out or unconfirmed on that channel,
  or who texted STOP before the request's claim;
- quiet hours: any provider request that reached a partner inside their quiet hours;
- replies: every inbound text we acknowledged is stored exactly once (none left in the spool);
- callbacks: every status callback applied once, each nudge ending in the latest state it was told.

Waiting: Closer recovers on timers. A `queued` nudge whose job Redis lost is enqueued again after
STALE_QUEUED_AFTER (2 minutes), a job whose worker died is handed back after its execution TTL (the job
timeout + 60 s, 6 minutes), a nudge stuck in `sending` goes to review after STALE_SENDING_AFTER
(5 minutes). Rather than wait those out, once nothing has moved for STALL_SECONDS the suite runs one
`closer tick --now` as far ahead as the longest of them: the same code, with the clock moved on. That keeps
a full run near 10 minutes. `--real-time` runs no such pass and waits for the real timers instead (about
half an hour); a scenario that has not settled after `--timeout-minutes` is judged as it stands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import secrets
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import psutil
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool
from twilio.request_validator import RequestValidator

from bench.common import ROOT
from bench.seed import PartnerSpec, Seeded, day_zone, night_zone, phone_for, seed_couples
from bench.stack import CloserProcess, CloserProcesses, FakeProviderProcess, OwnPostgres, OwnRedis, StackError, workdir
from service.crypto import Cipher
from service.db import make_engine
from service.domain.planner import STALE_QUEUED_AFTER, STALE_SENDING_AFTER
from service.domain.scheduling import in_quiet_hours
from service.migrations import upgrade
from service.models import ConsentState
from service.queues import QUEUE_SEND, SEND_JOB_TIMEOUT
from service.settings import Settings
from service.spool import SPOOL_KEY

PUBLIC_BASE_URL = "https://faults.closer.example"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "faults-twilio-auth-token-0123456789"  # noqa: S105 - a fixture, not a secret
TWILIO_NUMBER = "+15005550006"
TERMINAL = ("sent", "delivered", "failed", "undelivered", "skipped", "cancelled")
SENT = ("sent", "delivered")
TRANSACTIONAL_KINDS = ("confirmation", "confirmation_reminder")
# A full peak comes due over 30 s, a CI-sized one over at least 10 s.
PEAK_WINDOW_SECONDS = 30
# Longer than a provider call may take (15 s timeouts), so "nothing moved" means nothing is in flight.
STALL_SECONDS = 18.0
# RQ gives up on a job whose worker died once its execution TTL (the job timeout + 60 s) has passed.
ABANDONED_JOB_AFTER = timedelta(seconds=SEND_JOB_TIMEOUT + 60)

_YES, _NO, _ASKED, _STOPPED = ConsentState.CONFIRMED, ConsentState.NONE, ConsentState.PENDING, ConsentState.OPTED_OUT
# Who the peak is made of, by partner number modulo 10: (SMS, email, lives where it is night now).
# Ten partners get ten prompts planned, nine to send: the night one is skipped, it would land in quiet hours.
GROUPS: tuple[tuple[ConsentState, ConsentState, bool], ...] = (
    (_YES, _NO, False), (_YES, _NO, False), (_YES, _NO, False), (_YES, _NO, False),  # texts only
    (_NO, _YES, False), (_NO, _YES, False),  # email only
    (_YES, _YES, False),  # both
    (_STOPPED, _YES, False),  # opted out of texts, still on email
    (_YES, _NO, True),  # in quiet hours now
    (_ASKED, _ASKED, False),  # never confirmed
)
SENDABLE_PER_TEN = 9


# --- the peak ------------------------------------------------------------------------------------


@dataclass
class Peak:
    seeded: Seeded
    specs: dict[int, PartnerSpec]
    t0: datetime
    window: int  # seconds over which the peak comes due
    sendable: int
    expected: set[tuple[int, str]]  # (partner id, channel) that must get a step-1 prompt nudge

    def group(self, partner_id: int) -> int:
        return (partner_id - self.seeded.partner_ids.start) % 10


def seed_peak(engine: Engine, cipher: Cipher, sendable: int, *, now: datetime) -> Peak:
    partners = math.ceil(sendable * 10 / SENDABLE_PER_TEN)
    couples = math.ceil(partners / 2)
    day, night = day_zone(now), night_zone(now)
    day_time = now.astimezone(ZoneInfo(day)).time().replace(second=0, microsecond=0)
    night_time = now.astimezone(ZoneInfo(night)).time().replace(second=0, microsecond=0)
    t0 = now + timedelta(seconds=2)
    window = max(10, min(PEAK_WINDOW_SECONDS, round(PEAK_WINDOW_SECONDS * sendable / 10_000)))

    def spec_for(index: int, position: int) -> PartnerSpec:
        number = 2 * index + position - 1
        sms, email, at_night = GROUPS[number % 10]
        due = t0 + timedelta(seconds=number % window)
        if at_night:
            return PartnerSpec(night, night_time, sms=sms, email=email, next_send_at=due)
        return PartnerSpec(day, day_time, sms=sms, email=email, next_send_at=due)

    seeded = seed_couples(engine, couples, spec_for, cipher=cipher, now=now, label="peak", progress=False)
    specs: dict[int, PartnerSpec] = {}
    expected: set[tuple[int, str]] = set()
    for index in range(couples):
        for position in (1, 2):
            partner_id = 2 * (seeded.first_couple_id + index) - 2 + position
            spec = specs[partner_id] = spec_for(index, position)
            for channel, state in (("sms", spec.sms), ("email", spec.email)):
                if state is ConsentState.CONFIRMED:
                    expected.add((partner_id, channel))
    sendable_count = sum(1 for pid, _ in expected if specs[pid].timezone == day)
    return Peak(seeded, specs, t0, window, sendable_count, expected)


# --- one scenario's run ----------------------------------------------------------------------------


@dataclass
class Config:
    size: int = 10_000
    workers: int = 4
    compress_waits: bool = True
    sms_rate: float = 400.0
    email_rate: float = 400.0
    latency: float = 0.02
    timeout_minutes: float = 12.0
    artifacts: Path = ROOT / "test-artifacts" / "faults"
    quiet: bool = False


@dataclass
class Stack:
    postgres: OwnPostgres
    redis: OwnRedis
    fake: FakeProviderProcess
    workdir: Path


@contextlib.contextmanager
def own_stack(latency: float = 0.02) -> Iterator[Stack]:
    """Our PostgreSQL cluster, redis-server and fake providers, dropped and stopped on the way out."""
    with workdir("closer-faults-") as path:
        postgres = OwnPostgres(path)
        redis = OwnRedis(path)
        fake = FakeProviderProcess(path, latency=latency)
        try:
            postgres.create()
            redis.start()
            fake.start()
            yield Stack(postgres, redis, fake, path)
        finally:
            fake.stop()
            redis.stop()
            postgres.drop()


@dataclass
class Inbound:
    """Texts sent to the SMS webhook: what was sent, and what the web answered."""

    sids: list[str] = field(default_factory=list)
    bodies: dict[str, str] = field(default_factory=dict)
    senders: dict[str, int] = field(default_factory=dict)  # sid -> partner id
    stops: dict[int, float] = field(default_factory=dict)  # partner id -> when the STOP was acknowledged
    statuses: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    requests: int = 0


@dataclass
class Callbacks:
    posted: list[tuple[str, int, str]] = field(default_factory=list)  # (sid, nudge id, status)
    final: dict[str, tuple[int, str]] = field(default_factory=dict)  # sid -> (nudge id, expected end status)
    rejected: int = 0


@dataclass
class Row:
    scenario: str
    peak: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0
    review: int = 0
    lost: int = 0
    doubled: int = 0
    wrong_consent: int = 0
    quiet_hours: int = 0
    replies: int = 0
    replies_lost: int = 0
    replies_doubled: int = 0
    callbacks_wrong: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not any((self.lost, self.doubled, self.wrong_consent, self.quiet_hours,
                                              self.replies_lost, self.replies_doubled, self.callbacks_wrong))


class Run:
    def __init__(self, stack: Stack, config: Config, name: str, *, sendable: int) -> None:
        self.stack, self.config, self.name = stack, config, name
        self.logdir = config.artifacts / name
        self.logdir.mkdir(parents=True, exist_ok=True)
        for old in self.logdir.glob("*.log"):
            old.unlink()
        self.started = time.monotonic()
        self.key = Fernet.generate_key().decode()
        self.database_url = stack.postgres.create_database(f"closer_faults_{name.replace('-', '_')}")
        stack.redis.client().flushall()
        stack.fake.configure(clear=True)
        stack.fake.reset()
        self.settings = Settings(
            closer_env="testing", database_url=self.database_url, redis_url=stack.redis.url,
            secret_key="x" * 32, data_encryption_key=(self.key,),
        ).validated()
        upgrade(self.settings)
        self.engine = make_engine(self.database_url, poolclass=NullPool)
        self.peak = seed_peak(self.engine, Cipher([self.key]), sendable, now=datetime.now(UTC))
        self.processes = CloserProcesses(self.env(), self.logdir)
        self.inbound = Inbound()
        self.callbacks = Callbacks()
        self.row = Row(name)
        self.ticks = 0

    def env(self, *, sms_url: str | None = None, email_url: str | None = None) -> dict[str, str]:
        fake = self.stack.fake.url
        return {
            "CLOSER_ENV": "production", "DATABASE_URL": self.database_url, "REDIS_URL": self.stack.redis.url,
            "SECRET_KEY": secrets.token_urlsafe(32), "DATA_ENCRYPTION_KEY": self.key,
            "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_FROM_NUMBER": TWILIO_NUMBER,
            "TWILIO_API_BASE_URL": sms_url or fake,
            "SENDGRID_API_KEY": "SG.faults", "SENDGRID_FROM_EMAIL": "prompts@faults.closer.example",
            "SENDGRID_API_HOST": email_url or fake,
            "INBOUND_PARSE_SECRET": "faults-inbound-secret", "INBOUND_EMAIL_DOMAIN": "reply.faults.closer.example",
            "SENDER_POSTAL_ADDRESS": "1 Example Street, Springfield, IL 62701",
            "SUPPORT_CONTACT": "help@faults.closer.example",
            "SMS_RATE_PER_SECOND": str(self.config.sms_rate), "EMAIL_RATE_PER_SECOND": str(self.config.email_rate),
            "SCHEDULER_INTERVAL_SECONDS": "1", "LOG_LEVEL": "WARNING",
        }

    def say(self, message: str) -> None:
        if not self.config.quiet:
            print(f"  [{self.name} {time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    # --- observing -------------------------------------------------------------------------------

    def counts(self) -> dict[str, int] | None:
        """Nudges by state, due schedules not yet planned and the inbound spool; None while a server is down."""
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(text(
                    "SELECT status, needs_review, count(*) FROM nudges GROUP BY status, needs_review")).all()
                due = conn.execute(text("SELECT count(*) FROM partner_schedules WHERE next_send_at <= :now"),
                                   {"now": datetime.now(UTC)}).scalar_one()
            spool = int(self.stack.redis.client().llen(SPOOL_KEY))
        except Exception:
            return None
        counts: Counter[str] = Counter()
        for status, review, count in rows:
            counts["review" if review and status not in TERMINAL else status] += count
        counts["due"] = int(due)
        counts["spool"] = spool
        counts["unsettled"] = sum(counts[s] for s in ("scheduled", "queued", "sending"))
        return dict(counts)

    def sent_share(self) -> float:
        counts = self.counts()
        if counts is None:
            return -1.0
        return sum(counts.get(s, 0) for s in SENT) / max(1, self.peak.sendable)

    def wait_for_share(self, share: float, *, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.sent_share() < share and time.monotonic() < deadline:
            self.processes.supervise()
            time.sleep(0.3)

    def planned(self, counts: dict[str, int]) -> bool:
        window_over = datetime.now(UTC) > self.peak.t0 + timedelta(seconds=self.peak.window + 2)
        return window_over and counts.get("due", 1) == 0

    def settle(self, *, extra: Callable[[], bool] = lambda: True) -> None:
        """Wait until nothing is left to do; when nothing moves, run the pass the clock would bring."""
        deadline = time.monotonic() + 60 * self.config.timeout_minutes
        last: dict[str, int] | None = None
        last_change = time.monotonic()
        fruitless = 0
        while time.monotonic() < deadline:
            self.processes.supervise()
            counts = self.counts()
            if counts is not None:
                if counts["unsettled"] == 0 and counts["spool"] == 0 and self.planned(counts) and extra():
                    return
                if counts != last:
                    last, last_change, fruitless = counts, time.monotonic(), 0
                elif time.monotonic() - last_change > STALL_SECONDS:
                    if fruitless >= 3:
                        self.row.problems.append(f"stuck: {_brief(counts)}, unchanged by three passes ahead of "
                                                 "the clock")
                        return
                    fruitless += self._move_clock(counts)
                    last_change = time.monotonic()
            time.sleep(0.5)
        self.row.problems.append(f"did not settle within {self.config.timeout_minutes:g} min")

    def _move_clock(self, counts: dict[str, int]) -> int:
        """One pass as far ahead as the recovery it waits for; 1 if it ran, 0 if this run waits in real time."""
        if not self.config.compress_waits:
            return 0
        ahead = max(STALE_QUEUED_AFTER, ABANDONED_JOB_AFTER, STALE_SENDING_AFTER) + timedelta(seconds=30)
        now = (datetime.now(UTC) + ahead).isoformat()
        report = self.processes.tick(now)
        self.ticks += 1
        self.say(f"nothing moved for {STALL_SECONDS:g}s ({_brief(counts)}): one pass as of +{ahead}: "
                 f"requeued {report.get('requeued')}, to review {report.get('to_review')}")
        return 1

    # --- the loop around a scenario -------------------------------------------------------------

    def start(self, *, web: bool = False, sms_url: str | None = None, email_url: str | None = None) -> None:
        if sms_url or email_url:
            self.processes = CloserProcesses(self.env(sms_url=sms_url, email_url=email_url), self.logdir)
        if web:
            self.processes.start_web()
        self.processes.start_workers(self.config.workers)
        self.processes.start_scheduler()
        self.say(f"peak of {self.peak.sendable:,} prompts to send ({len(self.peak.expected):,} planned) "
                 f"due over {self.peak.window} s from {self.peak.t0:%H:%M:%S}Z; {self.config.workers} workers")

    def finish(self) -> Row:
        self.processes.stop_all()
        judge(self)
        self.row.seconds = time.monotonic() - self.started
        if self.ticks:
            self.row.notes.append(f"{self.ticks} pass(es) run ahead of the clock")
        restarts = {k: v for k, v in self.processes.restarts.items() if v}
        if restarts:
            self.row.notes.append("restarted: " + ", ".join(f"{k} x{v}" for k, v in restarts.items()))
        self.engine.dispose()
        return self.row


def _brief(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v and k != "unsettled")


# --- judging ---------------------------------------------------------------------------------------


def _fake_identity(record: dict[str, Any]) -> tuple[str, str]:
    """(recipient, text) of one provider request, whatever the channel."""
    if record["channel"] == "sms":
        form = record.get("form") or {}
        return form.get("To", ""), form.get("Body", "")
    body = record.get("json_body") or {}
    try:
        to = body["personalizations"][0]["to"][0]["email"]
        contents = "".join(c.get("value", "") for c in body.get("content", []))
        return to, str(body.get("subject") or body["personalizations"][0].get("subject", "")) + contents
    except (KeyError, IndexError, TypeError):
        return "", json.dumps(body, sort_keys=True)


def _complete(record: dict[str, Any]) -> bool:
    """Whether the fake received a whole request: every field we always send is there."""
    if record["channel"] == "sms":
        form = record.get("form") or {}
        return all(form.get(k) for k in ("To", "Body", "StatusCallback"))
    body = record.get("json_body")
    return isinstance(body, dict) and bool(body.get("personalizations")) and bool(body.get("content"))


def judge(run: Run) -> None:
    row, peak = run.row, run.peak
    records = [r for r in run.stack.fake.records() if r["channel"] in ("sms", "email")]
    # A worker killed while writing its request leaves a truncated body, which the fake still answers but
    # a real provider would refuse as a malformed request: it never went out.
    truncated = [r for r in records if not _complete(r)]
    records = [r for r in records if _complete(r)]
    went_out = [r for r in records if r["outcome"] in ("accepted", "hung")]
    if truncated:
        row.notes.append(f"{len(truncated)} truncated requests (writer killed mid-request) not counted as sent")
    with run.engine.connect() as conn:
        nudges = {r.id: r for r in conn.execute(text(
            "SELECT id, partner_id, kind, step_day, channel, status, status_reason, error_code, needs_review, "
            "provider_message_id, sending_at FROM nudges")).all()}
        partners = {r.id: r for r in conn.execute(text(
            "SELECT id, phone_e164, email, timezone, quiet_start, quiet_end FROM partners")).all()}
        log_entries = Counter(sid for (sid,) in conn.execute(text("SELECT provider_message_id FROM log_entries")))
        inbound_rows = Counter(sid for (sid,) in conn.execute(text(
            "SELECT provider_message_id FROM inbound_messages WHERE provider = 'twilio'")))
        events = Counter(eid for (eid,) in conn.execute(text(
            "SELECT provider_event_id FROM delivery_events WHERE provider = 'twilio'")))
    spooled = int(run.stack.redis.client().llen(SPOOL_KEY))

    row.peak = len(peak.expected)
    # Doubled: by our id, and by what the partner would see.
    by_id = Counter((r["channel"], r["nudge_id"]) for r in went_out if r["nudge_id"] is not None)
    by_text = Counter((r["channel"], *_fake_identity(r)) for r in went_out)
    doubled_ids = {key for key, n in by_id.items() if n > 1}
    doubled_texts = sum(1 for n in by_text.values() if n > 1)
    row.doubled = max(len(doubled_ids), doubled_texts)

    # Lost: never planned, never settled, settled without a reason, or "sent" that the provider never saw.
    accepted_ids = {(r["channel"], r["nudge_id"]) for r in records if r["outcome"] == "accepted"}
    planned = {(n.partner_id, n.channel) for n in nudges.values() if n.kind == "prompt" and n.step_day == 1}
    lost: Counter[str] = Counter()
    # A partner who texted STOP before their step came due is rightly never planned on SMS.
    unplanned = peak.expected - planned
    opted_out_first = {(pid, "sms") for pid in run.inbound.stops} & unplanned
    lost["never planned"] = len(unplanned - opted_out_first)
    if opted_out_first:
        row.notes.append(f"{len(opted_out_first)} texted STOP before their step was planned")
    for nudge in nudges.values():
        if nudge.status not in TERMINAL:
            if nudge.needs_review:
                row.review += 1
            else:
                lost[f"left {nudge.status}"] += 1
            continue
        if nudge.status in SENT:
            row.sent += 1
            if (nudge.channel, nudge.id) not in accepted_ids:
                lost["recorded sent, never accepted"] += 1
        elif nudge.status in ("failed", "undelivered"):
            row.failed += 1
        elif nudge.status == "skipped":
            row.skipped += 1
        else:
            row.cancelled += 1
        if nudge.status not in SENT and not (nudge.status_reason or nudge.error_code):
            lost[f"{nudge.status} without a reason"] += 1
    row.lost = sum(lost.values())
    row.problems += [f"lost: {reason} x{n}" for reason, n in lost.items() if n]

    # Wrong consent and quiet hours, judged on every request that may have reached a partner.
    wrong: Counter[str] = Counter()
    for record in went_out:
        nudge = nudges.get(record["nudge_id"]) if record["nudge_id"] is not None else None
        if nudge is None:
            wrong["a send we cannot tie to a nudge"] += 1
            row.problems.append(f"untied provider request: {json.dumps(record)[:500]}")
            continue
        if nudge.kind in TRANSACTIONAL_KINDS:
            continue
        partner = partners[nudge.partner_id]
        address = partner.phone_e164 if record["channel"] == "sms" else partner.email
        spec = peak.specs.get(nudge.partner_id)
        if record.get("to") != address:
            wrong["sent to an address that is not the partner's"] += 1
        if spec is not None:
            state = spec.sms if record["channel"] == "sms" else spec.email
            if state is not ConsentState.CONFIRMED:
                wrong[f"{record['channel']} to a partner who was {state.value}"] += 1
        stopped = run.inbound.stops.get(nudge.partner_id)
        if (stopped is not None and record["channel"] == "sms" and nudge.sending_at is not None
                and nudge.sending_at.timestamp() > stopped):
            wrong["claimed after the partner's STOP was acknowledged"] += 1
        local = datetime.fromtimestamp(record["received_at"], ZoneInfo(partner.timezone)).time()
        if in_quiet_hours(local, partner.quiet_start, partner.quiet_end):
            row.quiet_hours += 1
    row.wrong_consent = sum(wrong.values())
    row.problems += [f"wrong consent: {reason} x{n}" for reason, n in wrong.items()]
    if row.quiet_hours:
        row.problems.append(f"{row.quiet_hours} sends inside quiet hours")
    if row.doubled:
        row.problems.append(f"doubled: {len(doubled_ids)} nudge ids, {doubled_texts} recipient+text")

    # Replies: every acknowledged text stored once; the spool empty.
    inbound = run.inbound
    if inbound.sids:
        unique = set(inbound.sids)
        acknowledged = {sid for sid in unique if any(200 <= s < 300 for s in inbound.statuses.get(sid, []))}
        stop_sids = {sid for sid in unique if inbound.bodies[sid] == "STOP"}
        never_acknowledged = unique - acknowledged
        row.replies = len(unique)
        not_recorded = {sid for sid in acknowledged if inbound_rows[sid] == 0}
        not_logged = {sid for sid in acknowledged - stop_sids if log_entries[sid] == 0}
        row.replies_lost = len(not_recorded | not_logged | never_acknowledged)
        row.replies_doubled = sum(n - 1 for n in log_entries.values() if n > 1) + sum(
            n - 1 for n in inbound_rows.values() if n > 1)
        row.notes.append(f"{inbound.requests:,} inbound requests, {inbound.requests - len(unique):,} repeats")
        if row.replies_lost:
            row.problems.append(f"replies: {len(never_acknowledged)} refused, {len(not_recorded)} acknowledged "
                                f"but not recorded, {len(not_logged)} not in the log, {spooled} still spooled")

    # Status callbacks: each applied once, each nudge in the last state it was told.
    callbacks = run.callbacks
    if callbacks.posted:
        expected_events = {f"{sid}:{status}" for sid, _, status in callbacks.posted}
        missing_events = len(expected_events - set(events))
        doubled_events = sum(n - 1 for n in events.values() if n > 1)
        wrong_end = sum(1 for sid, (nudge_id, status) in callbacks.final.items()
                        if nudges[nudge_id].status != status)
        row.callbacks_wrong = missing_events + doubled_events + wrong_end + callbacks.rejected
        row.notes.append(f"{len(callbacks.posted):,} status callbacks for {len(callbacks.final):,} texts")
        if row.callbacks_wrong:
            row.problems.append(f"callbacks: {missing_events} not stored, {doubled_events} stored twice, "
                                f"{wrong_end} nudges in the wrong end state, {callbacks.rejected} refused")
    hung = sum(1 for r in records if r["outcome"] == "hung")
    refused = Counter(r["status"] for r in records if r["outcome"] == "rejected")
    if refused or hung:
        row.notes.append("provider answered " + ", ".join(f"{s} x{n}" for s, n in sorted(refused.items()))
                         + (f"; {hung} connections hung" if hung else ""))


# --- load on the webhooks --------------------------------------------------------------------------


@dataclass
class Prepared:
    key: str
    path: str
    params: dict[str, str]


def _signed(prepared: Prepared) -> bytes:
    body = urlencode(prepared.params).encode()
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_BASE_URL + prepared.path, prepared.params)
    head = (f"POST {prepared.path} HTTP/1.1\r\nHost: faults.closer.example\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nX-Twilio-Signature: {signature}\r\n\r\n").encode()
    return head + body


def post_all(url: str, requests: list[Prepared], *, rate: float, connections: int = 12,
             on_answer: Callable[[Prepared, int], None]) -> None:
    """Send each request once, at most `rate` a second, over keep-alive connections; report every answer.

    A request the server could not answer (connection refused or dropped) is answered 0.
    """
    host, port = url.split("://", 1)[1].split(":")
    wire = [_signed(p) for p in requests]
    cursor = [0]
    started = time.monotonic()

    async def one_connection() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while cursor[0] < len(wire):
            index = cursor[0]
            cursor[0] += 1
            wait = started + index / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            status = 0
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, int(port))
                assert reader is not None
                writer.write(wire[index])
                await writer.drain()
                status, close = await _read_response(reader)
                if close:
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, ValueError):
                if writer is not None:
                    writer.close()
                writer = None
            on_answer(requests[index], status)
        if writer is not None:
            writer.close()

    async def main() -> None:
        await asyncio.gather(*(one_connection() for _ in range(connections)))

    asyncio.run(main())


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    status_line = await asyncio.wait_for(reader.readline(), timeout=60)
    if not status_line:
        raise ConnectionResetError("closed")
    status = int(status_line.split()[1])
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
    return status, close


def plan_inbound(run: Run, count: int, *, stops: int, rng: random.Random) -> list[Prepared]:
    """`count` texts from partners who can text us, 10% of them repeats of an earlier one (a provider
    retry, same MessageSid); `stops` of them, spread over the first half, are STOP from partners who send
    nothing else: some before their prompt is planned, some while it waits to go out, some after."""
    peak = run.peak
    texting = [pid for pid, spec in peak.specs.items() if spec.sms is ConsentState.CONFIRMED]
    rng.shuffle(texting)
    stoppers, repliers = texting[:stops], texting[stops:]
    unique = count - count // 10
    messages: list[Prepared] = []
    inbound = run.inbound
    stop_at = {n * unique // (2 * stops): i for i, n in enumerate(range(stops))} if stops else {}
    for n in range(unique):
        stop = n in stop_at
        partner_id = stoppers[stop_at[n]] if stop else rng.choice(repliers)
        sid = "SM" + secrets.token_hex(16)
        body = "STOP" if stop else f"Thinking of you, note {n} from the fault run"
        inbound.sids.append(sid)
        inbound.bodies[sid] = body
        inbound.senders[sid] = partner_id
        messages.append(Prepared(sid, "/webhooks/twilio/sms", {
            "MessageSid": sid, "SmsSid": sid, "AccountSid": ACCOUNT_SID, "From": phone_for(partner_id),
            "To": TWILIO_NUMBER, "Body": body, "NumMedia": "0", "NumSegments": "1", "ApiVersion": "2010-04-01",
        }))
    ordered = list(messages)
    for _ in range(count - unique):
        original = rng.randrange(len(messages))
        ordered.insert(min(len(ordered), original + rng.randint(1, 300)), messages[original])
    return ordered


def send_inbound(run: Run, requests: list[Prepared], *, rate: float) -> threading.Thread:
    lock = threading.Lock()

    def answered(prepared: Prepared, status: int) -> None:
        with lock:
            run.inbound.statuses[prepared.key].append(status)
            run.inbound.requests += 1
            if 200 <= status < 300 and prepared.params["Body"] == "STOP":
                run.inbound.stops.setdefault(run.inbound.senders[prepared.key], time.time())

    thread = threading.Thread(target=post_all, args=(run.processes.web_url, requests),
                              kwargs={"rate": rate, "on_answer": answered}, daemon=True)
    thread.start()
    return thread


def post_callbacks(run: Run, rng: random.Random, *, already: set[str]) -> None:
    """Twilio-style status callbacks for every text the provider accepted and we have not covered yet:
    queued, sent and an end state, a third of them twice, all shuffled (so often out of order)."""
    callbacks = run.callbacks
    prepared: list[Prepared] = []
    for record in run.stack.fake.records():
        sid, nudge_id = record.get("provider_id"), record.get("nudge_id")
        if record["channel"] != "sms" or record["outcome"] != "accepted" or not sid or sid in already:
            continue
        already.add(sid)
        roll = rng.random()
        end, code = ("delivered", None) if roll < 0.9 else (("undelivered", "30003") if roll < 0.97
                                                              else ("failed", "30008"))
        callbacks.final[sid] = (nudge_id, end)
        for status in ("queued", "sent", end):
            params = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
                      "AccountSid": ACCOUNT_SID, "From": TWILIO_NUMBER, "To": record.get("to") or "",
                      "ApiVersion": "2010-04-01"}
            if code and status == end:
                params["ErrorCode"] = code
            callbacks.posted.append((sid, nudge_id, status))
            copies = 2 if rng.random() < 0.33 else 1
            prepared += [Prepared(sid, f"/webhooks/twilio/status?nudge={nudge_id}", params)] * copies
    rng.shuffle(prepared)

    def answered(_: Prepared, status: int) -> None:
        if not 200 <= status < 300:
            callbacks.rejected += 1

    post_all(run.processes.web_url, prepared, rate=400, on_answer=answered)


# --- the scenarios ---------------------------------------------------------------------------------


def scenario_kill9(run: Run) -> None:
    """Workers killed with -9 again and again while the peak goes out; each is replaced at once."""
    run.start()
    rng = random.Random(9)
    run.wait_for_share(0.05)
    # First the worker running RQ's scheduler (it moves retried jobs back to their queue), then any.
    holder = _rq_scheduler_holder(run)
    if holder is not None:
        run.processes.kill_worker(holder)
        run.processes.start_worker()
        run.say("killed the worker holding RQ's scheduler lock")
    kills = 1 if holder is not None else 0
    while run.sent_share() < 0.85 and kills < 40:
        victim = rng.choice(run.processes.workers)
        run.processes.kill_worker(victim)
        run.processes.start_worker()
        kills += 1
        time.sleep(3.0)
    run.say(f"killed {kills} workers with -9")
    run.row.notes.append(f"{kills} workers killed with -9")
    run.settle()


def _rq_scheduler_holder(run: Run) -> CloserProcess | None:
    """The worker whose forked RQ scheduler holds the lock on the send queue."""
    client = run.stack.redis.client()
    for _ in range(50):
        name = client.get(f"rq:scheduler-lock:{QUEUE_SEND}")
        pid = client.hget(f"rq:scheduler:{name.decode()}", "pid") if name else None
        if pid:
            for worker in run.processes.workers:
                with contextlib.suppress(psutil.Error):
                    family = {worker.process.pid, *(c.pid for c in psutil.Process(worker.process.pid).children())}
                    if int(pid) in family:
                        return worker
        time.sleep(0.1)
    return None


def scenario_redis(run: Run) -> None:
    """Redis restarted (it keeps nothing) at a quarter of the peak, FLUSHALL at two thirds."""
    run.start()
    run.wait_for_share(0.25)
    before = run.sent_share()
    run.stack.redis.restart(down_seconds=2.0)
    run.say(f"redis restarted at {before:.0%} sent")
    run.wait_for_share(0.66)
    before = run.sent_share()
    run.stack.redis.client().flushall()
    run.say(f"redis FLUSHALL at {before:.0%} sent")
    run.row.notes.append("redis restarted, later FLUSHALL")
    run.settle()


def scenario_postgres(run: Run) -> None:
    """PostgreSQL restarted at a quarter of the peak, stopped for 8 s at half; texts keep arriving."""
    run.start(web=True)
    rng = random.Random(5)
    run.wait_for_share(0.15)
    count = max(100, run.config.size // 10)
    loader = send_inbound(run, plan_inbound(run, count, stops=0, rng=rng), rate=max(20.0, count / 40))
    run.wait_for_share(0.25)
    run.stack.postgres.restart("fast")
    run.say("postgres restarted (fast)")
    run.wait_for_share(0.5)
    run.stack.postgres.stop("fast")
    time.sleep(8)
    run.stack.postgres.start()
    run.say("postgres stopped for 8 s and started")
    run.row.notes.append("postgres restarted, later down 8 s")
    loader.join()
    run.settle()


def scenario_storms(run: Run) -> None:
    """429 storms with Retry-After, 5xx storms, and connections that hang for 30 s."""
    run.start()
    fake = run.stack.fake
    run.wait_for_share(0.10)
    fake.configure(rules=[{"channel": "sms", "status": 429, "retry_after": 2, "seconds": 8},
                          {"channel": "email", "status": 429, "retry_after": 1, "seconds": 8}])
    run.say("429 storm for 8 s")
    run.wait_for_share(0.35)
    fake.configure(clear=True, rules=[{"status": 500, "seconds": 6}, {"status": 503, "seconds": 12, "every": 3}])
    run.say("5xx storm for 6 s, then one in three 503 for 6 s more")
    run.wait_for_share(0.60)
    hangs = max(6, run.config.size // 500)
    fake.configure(clear=True, rules=[{"channel": "sms", "hang_seconds": 30, "remaining": hangs},
                                      {"channel": "email", "hang_seconds": 30, "remaining": hangs}])
    run.say(f"{2 * hangs} connections hang for 30 s")
    run.row.notes.append(f"429 and 5xx storms; {2 * hangs} hung connections")
    run.settle()
    fake.configure(clear=True)


def scenario_callbacks(run: Run) -> None:
    """Status callbacks duplicated and out of order, half of them while the peak is still going out."""
    run.start(web=True)
    rng = random.Random(7)
    covered: set[str] = set()
    run.wait_for_share(0.5)
    post_callbacks(run, rng, already=covered)
    run.say(f"{len(run.callbacks.posted):,} callbacks posted mid-peak")
    run.settle()
    post_callbacks(run, rng, already=covered)
    run.say(f"{len(run.callbacks.posted):,} callbacks posted in all")
    run.settle()


def scenario_inbound(run: Run) -> None:
    """As many texts in as prompts out, a tenth of them provider retries, while workers restart."""
    run.start(web=True)
    rng = random.Random(11)
    count = run.config.size
    stops = max(10, count // 100)
    loader = send_inbound(run, plan_inbound(run, count, stops=stops, rng=rng), rate=max(50.0, count / 60))
    restarts = 0
    while loader.is_alive():
        time.sleep(4.0)
        if not loader.is_alive():
            break
        run.processes.restart_worker(rng.choice(run.processes.workers))
        restarts += 1
    loader.join()
    run.say(f"{run.inbound.requests:,} texts posted; {restarts} worker restarts")
    run.row.notes.append(f"{stops} STOPs among them")
    run.settle()


def scenario_contract(run: Run) -> None:
    """The same peak path through Prism proxies holding both providers' OpenAPI specs: no violations."""
    from tests.support.prism import PrismUnavailable, start_proxies

    try:
        pair = start_proxies(run.stack.fake.url, run.stack.fake.url)
    except PrismUnavailable as exc:
        run.row.problems.append(f"Prism unavailable: {exc}")
        return
    try:
        run.start(sms_url=pair.twilio.url, email_url=pair.sendgrid.url)
        run.settle()
        violations = pair.twilio.log().count("VIOLATION") + pair.sendgrid.log().count("VIOLATION")
    finally:
        pair.stop()
    counts = run.counts() or {}
    if violations or counts.get("failed"):
        run.row.problems.append(f"contract: {violations} Prism violations, {counts.get('failed', 0)} failed sends")
    run.row.notes.append("through Prism proxies (twilio_api_v2010.json, tsg_mail_v3.json)")


Scenario = Callable[[Run], None]
SCENARIOS: dict[str, tuple[Scenario, str]] = {
    "contract": (scenario_contract, "provider requests valid against the providers' specs (Prism proxy)"),
    "kill9": (scenario_kill9, "workers killed with -9, repeatedly"),
    "redis": (scenario_redis, "Redis restarted, and FLUSHALL, mid-run"),
    "postgres": (scenario_postgres, "PostgreSQL restarted and stopped mid-run"),
    "storms": (scenario_storms, "429 and 5xx storms, connections hung for 30 s"),
    "callbacks": (scenario_callbacks, "status callbacks duplicated and out of order"),
    "inbound": (scenario_inbound, "inbound texts, 10% repeats, while workers restart"),
}
CONTRACT_SIZE = 60


def run_scenario(stack: Stack, name: str, config: Config) -> Row:
    scenario, _ = SCENARIOS[name]
    size = min(config.size, CONTRACT_SIZE) if name == "contract" else config.size
    run = Run(stack, config, name, sendable=size)
    try:
        scenario(run)
    except Exception as exc:
        run.row.problems.append(f"scenario crashed: {type(exc).__name__}: {exc}")
        run.processes.stop_all()
        with contextlib.suppress(Exception):
            judge(run)
        run.row.seconds = time.monotonic() - run.started
        return run.row
    return run.finish()


# --- the table -------------------------------------------------------------------------------------

COLUMNS = (
    ("scenario", "scenario", 10), ("peak", "peak", 7), ("sent", "sent", 7), ("failed", "failed", 6),
    ("skipped", "skipped", 7), ("cancelled", "cancel", 6), ("review", "review", 6), ("lost", "LOST", 5),
    ("doubled", "DOUBLED", 7), ("wrong_consent", "WRONG CONSENT", 13), ("quiet_hours", "IN QUIET", 8),
    ("replies", "replies", 7), ("replies_lost", "R. LOST", 7), ("replies_doubled", "R. TWICE", 8),
    ("callbacks_wrong", "CB WRONG", 8), ("seconds", "time", 6),
)


def table(rows: list[Row]) -> str:
    def cell(row: Row, attr: str, width: int) -> str:
        value = getattr(row, attr)
        if attr == "seconds":
            return f"{value / 60:>{width - 1}.1f}m"
        if attr == "scenario":
            return f"{value:<{width}}"
        return f"{value:>{width},}" if isinstance(value, int) else f"{value:>{width}}"

    head = " ".join(f"{title:<{w}}" if a == "scenario" else f"{title:>{w}}" for a, title, w in COLUMNS)
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(" ".join(cell(row, a, w) for a, _, w in COLUMNS) + ("" if row.ok else "  <- FAILED"))
    lines.append("")
    lines.append("Upper-case columns must be zero. review = outcome unknown (a worker died, or the provider's")
    lines.append("connection hung, after the request went out): held for an operator, never resent.")
    for row in rows:
        details = [*row.notes, *row.problems]
        if details:
            lines.append(f"{row.scenario}: " + "; ".join(details))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000, help="prompts to send in each peak (default 10000)")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS), help="run only these (repeatable)")
    parser.add_argument("--workers", type=int, default=4, help="`closer worker` processes (default 4)")
    parser.add_argument("--real-time", action="store_true",
                        help="wait for the scheduler's real recovery timers instead of passes ahead of the clock")
    parser.add_argument("--rate", type=float, default=400.0, help="SMS and email rate limits per second")
    parser.add_argument("--timeout-minutes", type=float, default=None,
                        help="judge a scenario that has not settled after this (default 12, 20 with --real-time)")
    args = parser.parse_args(argv)
    timeout = args.timeout_minutes or (20.0 if args.real_time else 12.0)
    config = Config(size=args.size, workers=args.workers, compress_waits=not args.real_time,
                    sms_rate=args.rate, email_rate=args.rate, timeout_minutes=timeout)
    names = args.scenario or list(SCENARIOS)
    print(f"make faults: {', '.join(names)}; peaks of {config.size:,} prompts; {config.workers} workers; "
          f"rate {args.rate:g}/s per channel; {'real-time recovery' if args.real_time else 'recovery passes ahead'}"
          f" of the clock; logs in {config.artifacts}", flush=True)
    started = time.monotonic()
    rows: list[Row] = []
    try:
        with own_stack(config.latency) as stack:
            print(f"  own PostgreSQL {stack.postgres.version} ({stack.postgres.bin}) in {stack.postgres.datadir},"
                  f" own redis-server on port "
                  f"{stack.redis.port}, fake providers at {stack.fake.url}", flush=True)
            for name in names:
                print(f"- {name}: {SCENARIOS[name][1]}", flush=True)
                rows.append(run_scenario(stack, name, config))
    except StackError as exc:
        print(f"make faults: cannot run: {exc}", file=sys.stderr)
        return 2
    print()
    print(table(rows))
    print(f"\ntotal {(time.monotonic() - started) / 60:.1f} min", flush=True)
    summary = config.artifacts / "summary.json"
    summary.write_text(json.dumps([row.__dict__ for row in rows], indent=2, default=str))
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
