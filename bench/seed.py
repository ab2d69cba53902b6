"""Bulk generation of enrolled couples for the fault suite and the scale benchmark.

`seed_couples` writes couples, their two partners, an active enrollment and each partner's schedule row,
in chunks, with a progress line. Every chunk is four `COPY ... FROM STDIN` (PostgreSQL's fastest way in).
Ids are assigned here (partner ids `2c-1` and `2c` for couple `c`, enrollment id `c`, schedule id =
partner id), so no row needs a round trip for its key, and the sequences are moved past them afterwards.

Shortcuts a benchmark may take and the product never does, so nobody mistakes seeded rows for real ones:
- every partner's encrypted first name and encrypted log token is ONE ciphertext, made once per call with
  the configured key (a temporary column default while the COPY runs, so it is not even sent per row);
  the names decrypt fine, but the stored log-token hashes are synthetic, so seeded log links do not open;
- reply tokens and log-token hashes are the partner id in hexadecimal: unique, not secret;
- consent is written as state only (no consent_records history), and nobody is due a confirmation reminder.
"""

from __future__ import annotations

import sys
import time as clock
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, TextIO

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from service.crypto import Cipher
from service.domain.scheduling import zone
from service.models import ConsentState, EnrollmentStatus

CHUNK_COUPLES = 20_000
# Candidate zones for "a zone where it is daytime now" (US first) and "one deep in quiet hours now".
ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Anchorage",
         "Pacific/Honolulu", "Pacific/Auckland", "Australia/Sydney", "Asia/Tokyo", "Asia/Shanghai",
         "Asia/Kolkata", "Europe/Berlin", "Europe/London", "America/Sao_Paulo")


@dataclass(frozen=True)
class PartnerSpec:
    """One seeded partner: how they are reached, their day, and (if any) when their next step is due."""

    timezone: str
    preferred_time: time
    sms: ConsentState = ConsentState.CONFIRMED  # NONE: no phone number at all
    email: ConsentState = ConsentState.NONE  # NONE: no email address at all
    next_send_at: datetime | None = None  # None: no schedule row
    quiet_start: time = time(21, 30)
    quiet_end: time = time(8, 0)
    next_day: int = 1


# couple index (0-based within this call), position (1 or 2) -> that partner
SpecFor = Callable[[int, int], PartnerSpec]


def _zone_where(predicate: Callable[[time], bool], now: datetime) -> str:
    for name in ZONES:
        if predicate(now.astimezone(zone(name)).time()):
            return name
    raise RuntimeError("no candidate time zone fits; extend ZONES")


def day_zone(now: datetime) -> str:
    """A zone where it is daytime now and stays so for hours: far from the default quiet hours."""
    return _zone_where(lambda t: time(8, 15) <= t <= time(19, 0), now)


def night_zone(now: datetime) -> str:
    """A zone deep inside the default quiet hours (21:30 to 08:00) now."""
    return _zone_where(lambda t: t >= time(22, 0) or t <= time(7, 0), now)


def phone_for(partner_id: int) -> str:
    """A distinct, possible North American number per partner id (area codes 201 and up)."""
    return f"+1{201 + partner_id // 10_000_000}{partner_id % 10_000_000:07d}"


def email_for(partner_id: int) -> str:
    return f"p{partner_id}@seed.closer.example"


class Progress:
    """A one-line progress bar on a terminal; on a pipe, a line every tenth of the way."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.started = clock.monotonic()
        self._last_tenth = -1

    def advance(self, count: int) -> None:
        self.done += count
        if not self.enabled:
            return
        share = min(1.0, self.done / self.total)
        elapsed = clock.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        bar = "#" * int(share * 30)
        line = (f"{self.label:>12} [{bar:<30}] {self.done:>10,}/{self.total:,} {share:6.1%} "
                f"{elapsed:6.1f} s {rate:9,.0f}/s")
        if self.tty:
            self.stream.write("\r" + line)
            if self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif int(share * 10) != self._last_tenth:
            self._last_tenth = int(share * 10)
            self.stream.write(line + "\n")
            self.stream.flush()


@dataclass(frozen=True)
class Seeded:
    first_couple_id: int
    couples: int
    seconds: float

    @property
    def couple_ids(self) -> range:
        return range(self.first_couple_id, self.first_couple_id + self.couples)

    @property
    def partner_ids(self) -> range:
        return range(2 * self.first_couple_id - 1, 2 * (self.first_couple_id + self.couples) - 1)


def next_couple_id(conn: Connection) -> int:
    return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM couples")).scalar_one()) + 1


def seed_couples(
    bind: Engine | Connection,
    count: int,
    spec_for: SpecFor,
    *,
    cipher: Cipher,
    now: datetime,
    program_key: str = "appreciation",
    first_couple_id: int | None = None,
    label: str = "couples",
    progress: bool = True,
) -> Seeded:
    """Add `count` active couples, two partners each, as `spec_for` describes them.

    Given an Engine, every chunk is committed as it is written. Given a Connection, all of it happens in
    the caller's transaction, which the caller commits or rolls back (the tests do).
    """
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return _seed(conn, count, spec_for, cipher=cipher, now=now, program_key=program_key,
                         first_couple_id=first_couple_id, label=label, progress=progress, commit=True)
    return _seed(bind, count, spec_for, cipher=cipher, now=now, program_key=program_key,
                 first_couple_id=first_couple_id, label=label, progress=progress, commit=False)


def _seed(
    conn: Connection, count: int, spec_for: SpecFor, *, cipher: Cipher, now: datetime, program_key: str,
    first_couple_id: int | None, label: str, progress: bool, commit: bool,
) -> Seeded:
    started = clock.monotonic()
    first = first_couple_id if first_couple_id is not None else next_couple_id(conn)
    shared_ciphertext = cipher.encrypt("Sam")
    bar = Progress(label, count, enabled=progress)
    writer = _CopyWriter(conn, shared_ciphertext)
    writer.begin()
    if commit:
        conn.commit()
    try:
        for offset in range(0, count, CHUNK_COUPLES):
            size = min(CHUNK_COUPLES, count - offset)
            writer.write(_chunk(first + offset, offset, size, spec_for, now, program_key))
            if commit:
                conn.commit()
            bar.advance(size)
    finally:
        if commit:
            conn.rollback()
        writer.end()
        _advance_sequences(conn)
        if commit:
            conn.commit()
    return Seeded(first, count, clock.monotonic() - started)


@dataclass
class _Chunk:
    couples: list[tuple[Any, ...]]
    partners: list[tuple[Any, ...]]
    enrollments: list[tuple[Any, ...]]
    schedules: list[tuple[Any, ...]]


COUPLE_COLUMNS = ("id", "created_at")
PARTNER_COLUMNS = (
    "id", "couple_id", "position", "phone_e164", "email", "timezone", "preferred_time", "quiet_start",
    "quiet_end", "sms_consent", "sms_consent_at", "email_consent", "email_consent_at", "reply_token",
    "log_token_hash", "log_token_issued_at", "created_at",
)
ENCRYPTED_PARTNER_COLUMNS = ("first_name", "log_token")
ENROLLMENT_COLUMNS = ("id", "couple_id", "program_key", "status", "created_at", "started_at")
SCHEDULE_COLUMNS = ("id", "enrollment_id", "partner_id", "next_day", "first_local_date", "next_send_at")


def _chunk(first_id: int, first_index: int, size: int, spec_for: SpecFor, now: datetime, program: str) -> _Chunk:
    chunk = _Chunk([], [], [], [])
    local_dates: dict[tuple[str, datetime], date] = {}
    for n in range(size):
        couple_id, index = first_id + n, first_index + n
        chunk.couples.append((couple_id, now))
        chunk.enrollments.append((couple_id, couple_id, program, EnrollmentStatus.ACTIVE.value, now, now))
        for position in (1, 2):
            spec = spec_for(index, position)
            partner_id = 2 * couple_id - 2 + position
            sms, email = spec.sms, spec.email
            chunk.partners.append((
                partner_id, couple_id, position,
                None if sms is ConsentState.NONE else phone_for(partner_id),
                None if email is ConsentState.NONE else email_for(partner_id),
                spec.timezone, spec.preferred_time, spec.quiet_start, spec.quiet_end,
                sms.value, now if sms is not ConsentState.NONE else None,
                email.value, now if email is not ConsentState.NONE else None,
                f"{partner_id:032x}", f"{partner_id:064x}", now, now,
            ))
            if spec.next_send_at is not None:
                key = (spec.timezone, spec.next_send_at)
                local = local_dates.get(key)
                if local is None:
                    local = local_dates[key] = spec.next_send_at.astimezone(zone(spec.timezone)).date()
                chunk.schedules.append((partner_id, couple_id, partner_id, spec.next_day, local, spec.next_send_at))
    return chunk


class _CopyWriter:
    """COPY in text format; the shared ciphertext is a column default while it runs."""

    def __init__(self, conn: Connection, ciphertext: bytes) -> None:
        self.conn = conn
        self.literal = "'\\x" + ciphertext.hex() + "'::bytea"

    def begin(self) -> None:
        for column in ENCRYPTED_PARTNER_COLUMNS:
            self.conn.exec_driver_sql(f"ALTER TABLE partners ALTER COLUMN {column} SET DEFAULT {self.literal}")

    def end(self) -> None:
        for column in ENCRYPTED_PARTNER_COLUMNS:
            self.conn.exec_driver_sql(f"ALTER TABLE partners ALTER COLUMN {column} DROP DEFAULT")

    def write(self, chunk: _Chunk) -> None:
        # Every row here is consistent by construction; checking each foreign key one row at a time
        # would cost more than the load itself. Needs a superuser, which a scratch database has.
        self.conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        raw: Any = self.conn.connection.driver_connection
        with raw.cursor() as cur:
            for table, columns, rows in (
                ("couples", COUPLE_COLUMNS, chunk.couples),
                ("partners", PARTNER_COLUMNS, chunk.partners),
                ("enrollments", ENROLLMENT_COLUMNS, chunk.enrollments),
                ("partner_schedules", SCHEDULE_COLUMNS, chunk.schedules),
            ):
                if rows:
                    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                        copy.write("".join(_copy_lines(rows)))
        self.conn.exec_driver_sql("SET LOCAL session_replication_role = DEFAULT")


def _copy_value(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def _copy_lines(rows: Iterable[Sequence[Any]]) -> Iterable[str]:
    # Seeded values never hold tabs, newlines or backslashes, so no COPY escaping is needed.
    for row in rows:
        yield "\t".join(map(_copy_value, row)) + "\n"


def _advance_sequences(conn: Connection) -> None:
    """Ids were given explicitly: move the sequences past them."""
    for table in ("couples", "partners", "enrollments", "partner_schedules"):
        conn.execute(text(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608 - fixed table names
            f"greatest((SELECT coalesce(max(id), 0) FROM {table}), 1))"
        ))
