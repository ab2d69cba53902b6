"""How long the operator's numbers take with a million couples: `python -m bench.ops_status [--couples N]`.

Fills a scratch database (closer_bench_ops, dropped and made again, on BENCH_DATABASE_URL's server or
else on an embedded PostgreSQL of the run's own) with N couples: 2N partners and schedules spread over
the next day, three days of nudges (about 1.5 per partner a day, most delivered, some failed, a few
under review), replies to a third of the prompts and a trickle of opt-outs. Then it times `status_report`
(what /ops and /ops/status.json run) cold and warm, and prints each query's plan and time, so a regression
to a full scan shows up by name.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.orm import Session

from bench.common import scratch_database
from service.db import make_engine
from service.domain.ops_status import status_report
from service.migrations import upgrade
from service.settings import Settings

PROGRAMS = ["appreciation", "rituals", "talk", "sampler", "humor", "empathy", "intimacy"]

FILL = [
    ("couples", "INSERT INTO couples (id, created_at) SELECT g, now() - interval '30 days' "
                "FROM generate_series(1, :n) g"),
    ("partners", """
        INSERT INTO partners (id, couple_id, position, first_name, phone_e164, email, timezone, preferred_time,
                              quiet_start, quiet_end, sms_consent, email_consent, reply_token, log_token_hash,
                              log_token, log_token_issued_at, created_at)
        SELECT g, (g + 1) / 2, 2 - g % 2, '\\x00'::bytea, '+1415' || lpad(g::text, 7, '0'),
               CASE WHEN g % 2 = 0 THEN 'p' || g || '@example.com' END, 'America/New_York', '09:00', '21:30',
               '08:00', 'confirmed', CASE WHEN g % 2 = 0 THEN 'confirmed' ELSE 'none' END,
               substr(md5('r' || g), 1, 32), md5('l' || g) || md5('m' || g), '\\x00'::bytea, now(), now()
        FROM generate_series(1, 2 * :n) g"""),
    ("enrollments", """
        INSERT INTO enrollments (id, couple_id, program_key, status, created_at, started_at)
        SELECT g, g, (ARRAY[:programs])[1 + g % 7],
               CASE g % 20 WHEN 0 THEN 'pending' WHEN 1 THEN 'completed' WHEN 2 THEN 'cancelled' ELSE 'active' END,
               now() - interval '30 days', now() - interval '29 days'
        FROM generate_series(1, :n) g"""),
    ("partner_schedules", """
        INSERT INTO partner_schedules (id, enrollment_id, partner_id, next_day, first_local_date, next_send_at)
        SELECT g, (g + 1) / 2, g, 4, current_date - 3, now() + make_interval(mins => (g * 7) % 1440)
        FROM generate_series(1, 2 * :n) g"""),
    # Three days of prompts: SMS to every partner, email to every other one; handed over across the day.
    ("nudges", """
        INSERT INTO nudges (enrollment_id, partner_id, kind, step_day, channel, status, scheduled_for, queued_at,
                            sending_at, sent_at, delivered_at, attempts, error_code, needs_review)
        SELECT (p + 1) / 2, p, 'prompt', d, c,
               CASE WHEN r < 90 THEN 'delivered' WHEN r < 94 THEN 'sent' WHEN r < 97 THEN 'undelivered'
                    WHEN r < 99 THEN 'failed' ELSE 'delivered' END,
               t, t, t, CASE WHEN r < 97 OR r >= 99 THEN t END, CASE WHEN r < 90 OR r >= 99 THEN t + interval '5 s' END,
               1, CASE WHEN r BETWEEN 94 AND 95 THEN '30003' WHEN r = 96 THEN '30006'
                       WHEN r BETWEEN 97 AND 98 THEN '21614' END, false
        FROM (SELECT p, d, c, (p * 31 + d * 7) % 100 AS r,
                     now() - make_interval(days => 3 - d, mins => (p * 13) % 1440) AS t
              FROM generate_series(1, 2 * :n) p, generate_series(1, 3) d, unnest(ARRAY['sms', 'email']) c
              WHERE c = 'sms' OR p % 2 = 0) s"""),
    ("review", "UPDATE nudges SET needs_review = true, status = 'sending', error_code = 'outcome_unknown' "
               "WHERE id IN (SELECT id FROM nudges ORDER BY id DESC LIMIT 40)"),
    ("log_entries", """
        INSERT INTO log_entries (couple_id, partner_id, nudge_id, channel, provider_message_id, body, media_count,
                                 received_at)
        SELECT (partner_id + 1) / 2, partner_id, id, channel, 'SM' || id, '\\x00'::bytea, 0,
               sent_at + interval '40 minutes'
        FROM nudges WHERE id % 3 = 0 AND sent_at IS NOT NULL"""),
    ("consent_records", """
        INSERT INTO consent_records (partner_id, channel, action, occurred_at, source)
        SELECT g, 'sms', CASE WHEN g % 400 = 0 THEN 'withdrawn' ELSE 'confirmed' END,
               CASE WHEN g % 400 = 0 THEN now() - make_interval(mins => g % 1440)
                    ELSE now() - interval '30 days' END, 'sms'
        FROM generate_series(1, 2 * :n) g"""),
]


def fill(engine: Any, couples: int) -> None:
    with engine.begin() as conn:
        for name, sql in FILL:
            started = time.perf_counter()
            statement = text(sql.replace(":programs", ", ".join(f"'{p}'" for p in PROGRAMS)))
            rows = conn.execute(statement, {"n": couples}).rowcount
            print(f"  {name:18} {rows:>11,} rows  {time.perf_counter() - started:6.1f} s", flush=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        started = time.perf_counter()
        conn.execute(text("VACUUM ANALYZE"))
        print(f"  vacuum analyze              {time.perf_counter() - started:6.1f} s", flush=True)


def timed_report(engine: Any) -> tuple[float, list[tuple[str, float]]]:
    """One status_report, with the time of each statement it ran."""
    timings: list[tuple[str, float]] = []
    starts: list[float] = []

    def before(*_: Any) -> None:
        starts.append(time.perf_counter())

    def after(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        timings.append((" ".join(statement.split())[:110], time.perf_counter() - starts.pop()))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        with Session(engine) as session:
            started = time.perf_counter()
            status_report(session, datetime.now(UTC))
            return time.perf_counter() - started, timings
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--couples", type=int, default=1_000_000)
    args = parser.parse_args()
    url = scratch_database("closer_bench_ops")
    upgrade(Settings(closer_env="testing", database_url=url).validated())
    engine = make_engine(url)
    print(f"filling {args.couples:,} couples", flush=True)
    fill(engine, args.couples)
    with engine.connect() as conn:
        in_day = conn.execute(text("SELECT count(*) FROM nudges WHERE sent_at > now() - interval '24 hours'")).scalar()
        total = conn.execute(text("SELECT count(*) FROM nudges")).scalar()
    print(f"nudges: {total:,} in all, {in_day:,} sent in the last 24 h")
    cold, _ = timed_report(engine)
    warm = [timed_report(engine)[0] for _ in range(5)]
    print(f"status_report: cold {cold * 1000:.0f} ms, warm median {statistics.median(warm) * 1000:.0f} ms "
          f"(min {min(warm) * 1000:.0f}, max {max(warm) * 1000:.0f})")
    for statement, seconds in sorted(timed_report(engine)[1], key=lambda t: -t[1]):
        print(f"  {seconds * 1000:8.1f} ms  {statement}")
    engine.dispose()


if __name__ == "__main__":
    main()
