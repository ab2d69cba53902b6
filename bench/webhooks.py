"""Throughput of the inbound SMS webhook (signature check, dedupe, persist) under gunicorn, against a bare
Flask endpoint under the same gunicorn settings, measured in the same run.

    python -m bench.webhooks [--requests 6000] [--connections 64] [--database closer_bench_webhooks]

The load is a bounded asyncio generator on loopback: each prepared request (a unique MessageSid, signed
like Twilio signs) is sent exactly once over keep-alive connections. Every partner has a prompt out two
hours ago, as on a real morning, so each reply is tied to it; a seventh of the couples are on a reveal
step, so their replies also take the reveal check, and a reveal once both partners have answered.

Two more endpoints run in the same run and shape, from bench/floor_app.py: one that only checks the
signature, and a floor that checks it and commits one row before answering, the least any endpoint can
do that never loses an accepted reply. Against them the bare ratio reads as what it is.

All servers run the same gunicorn shape (gthread, --workers x --threads, 3x8 by default): on two cores,
three processes keep both cores busy while each one's threads overlap their database waits. The run
passes only if every reply was stored once, encrypted, tied to its prompt, with no error.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from datetime import UTC, datetime, time, timedelta
from urllib.parse import urlencode

from cryptography.fernet import Fernet
from sqlalchemy import distinct, func, select, text
from twilio.request_validator import RequestValidator

from bench.common import LoadResult, gunicorn, run_load, scratch_database
from service.crypto import install_cipher, token_digest
from service.db import Database
from service.migrations import upgrade
from service.models import (
    ConsentState,
    Couple,
    Enrollment,
    EnrollmentStatus,
    LogEntry,
    Nudge,
    NudgeKind,
    NudgeStatus,
    Partner,
)
from service.redis_runtime import start_embedded_redis
from service.settings import Settings

PUBLIC_BASE_URL = "https://bench.closer.example"
AUTH_TOKEN = "bench-auth-token-" + "0" * 15
PATH = "/webhooks/twilio/sms"


def seed(database_url: str, couples: int) -> list[str]:
    database = Database(database_url)
    phones = []
    sent_at = datetime.now(UTC) - timedelta(hours=2)
    with database.transaction() as session:
        for i in range(couples):
            couple = Couple()
            for position in (1, 2):
                phone = f"+1415{(2000000 + 2 * i + position) % 10000000:07d}"
                token = secrets.token_urlsafe(24)
                couple.partners.append(Partner(
                    position=position, first_name=f"P{i}-{position}", phone_e164=phone, timezone="America/New_York",
                    preferred_time=time(9, 0), sms_consent=ConsentState.CONFIRMED, reply_token=secrets.token_hex(12),
                    log_token=token, log_token_hash=token_digest(token),
                ))
                phones.append(phone)
            session.add(couple)
            enrollment = Enrollment(couple=couple, program_key="appreciation", status=EnrollmentStatus.ACTIVE,
                                    started_at=sent_at - timedelta(days=21))
            session.add(enrollment)
            # Both partners got today's step (appreciation has 21 days, three of them reveal steps).
            for partner in couple.partners:
                session.add(Nudge(
                    enrollment=enrollment, partner=partner, kind=NudgeKind.PROMPT, step_day=i % 21 + 1,
                    channel="sms", status=NudgeStatus.SENT, scheduled_for=sent_at, queued_at=sent_at,
                    sending_at=sent_at, sent_at=sent_at, provider_message_id="SM" + secrets.token_hex(16),
                    body_text="What made you smile today? Reply with your answer.",
                ))
    database.dispose()
    return phones


def prepare(phones: list[str], count: int, tag: str) -> list[bytes]:
    validator = RequestValidator(AUTH_TOKEN)
    requests = []
    for n in range(count):
        params = {
            "MessageSid": "SM" + secrets.token_hex(16), "AccountSid": "AC" + "0" * 32,
            "From": phones[n % len(phones)], "To": "+15005550006", "Body": f"bench {tag} reply {n}",
            "NumMedia": "0",
        }
        body = urlencode(params).encode()
        signature = validator.compute_signature(PUBLIC_BASE_URL + PATH, params)
        head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\nX-Twilio-Signature: {signature}\r\n\r\n").encode()
        requests.append(head + body)
    return requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--database", default="closer_bench_webhooks", help="scratch database (dropped first)")
    args = parser.parse_args()

    database_url = scratch_database(args.database)
    embedded = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        embedded = start_embedded_redis()
        redis_url = embedded.url
    key = Fernet.generate_key().decode()
    settings = Settings(closer_env="production", database_url=database_url, redis_url=redis_url,
                        secret_key=secrets.token_urlsafe(32), data_encryption_key=(key,),
                        public_base_url=PUBLIC_BASE_URL, twilio_auth_token=AUTH_TOKEN).validated()
    install_cipher(settings.data_encryption_key)
    upgrade(settings)
    phones = seed(database_url, couples=1000)
    env = {
        "CLOSER_ENV": "production", "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "SECRET_KEY": settings.secret_key, "DATA_ENCRYPTION_KEY": key, "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "LOG_LEVEL": "WARNING",
    }
    shape = dict(workers=args.workers, threads=args.threads)
    print(f"inbound SMS webhook, gunicorn gthread {args.workers}x{args.threads}, {args.connections} connections, "
          f"{args.requests} requests each, database {database_url.split(':', 1)[0]}")
    def measure(app_spec: str, tag: str) -> LoadResult:
        with gunicorn(app_spec, env, **shape) as url:
            run_load(url, prepare(phones, 300, f"warm-{tag}"), args.connections)
            return run_load(url, prepare(phones, args.requests, tag), args.connections)

    try:
        bare = measure("bench.bare_app:create_app()", "bare")
        signed = measure("bench.floor_app:create_signature_only_app()", "signed")
        floor = measure("bench.floor_app:create_app()", "floor")
        closer = measure("service.app:create_app()", "closer")
    finally:
        if embedded is not None:
            embedded.stop()
    database = Database(database_url)
    with database.transaction() as session:
        stored = session.scalar(select(func.count(LogEntry.id)).where(LogEntry.body.is_not(None)))
        distinct_ids = session.scalar(select(func.count(distinct(LogEntry.provider_message_id))))
        tied = session.scalar(select(func.count(LogEntry.id)).where(LogEntry.nudge_id.is_not(None)))
        reveals = session.scalar(select(func.count(Nudge.id)).where(Nudge.kind == NudgeKind.REVEAL))
        # Every body says "bench ... reply N": none may be readable in the table itself.
        readable = session.scalar(text("SELECT count(*) FROM log_entries WHERE position('bench'::bytea IN body) > 0"))
        floor_stored = session.scalar(text("SELECT count(*) FROM bench_floor"))
    database.dispose()
    expected = args.requests + 300
    ratio = closer.rps / bare.rps
    p99 = closer.percentile(0.99)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"bare endpoint : {bare.line()}")
    print(f"signature only: {signed.line()}  (signature check, nothing stored)")
    print(f"floor endpoint: {floor.line()}  (signature check + one committed INSERT; {floor_stored} rows)")
    print(f"closer webhook: {closer.line()}")
    print(f"CPU ms per request, bare  : {bare.cpu_line()}")
    print(f"CPU ms per request, signed: {signed.cpu_line()}")
    print(f"CPU ms per request, floor : {floor.cpu_line()}")
    print(f"CPU ms per request, closer: {closer.cpu_line()}")
    print(f"signature only/bare: {signed.rps / bare.rps:.2f} (checking the signature alone)")
    print(f"floor/bare: {floor.rps / bare.rps:.2f} (the most an endpoint that commits before it answers reaches "
          f"here); closer/floor: {closer.rps / floor.rps:.2f} (what Closer's own work costs)")
    print(f"ratio closer/bare: {ratio:.2f} (target >= 0.50); p99 {1000 * p99:.1f} ms "
          f"(target < 100 ms); stored {stored} of {expected} replies ({distinct_ids} distinct MessageSids, "
          f"{tied} tied to their prompt, {readable} readable at rest), {reveals} reveals queued; "
          f"load average now {load} on {os.cpu_count()} cores")
    ok = (ratio >= 0.5 and p99 < 0.1 and closer.errors == 0 and stored == expected == distinct_ids
          and tied == expected and readable == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
