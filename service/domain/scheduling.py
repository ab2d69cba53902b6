"""When a partner's next step is due: local preferred time, moved out of quiet hours, in UTC.

Wall-clock rules go through `zoneinfo`, so daylight-saving changes are handled by the tz database:
- a preferred time that does not exist that day (02:30 on a spring-forward day) goes out once, just
  after the gap (03:30);
- a preferred time that happens twice (01:30 on a fall-back day) goes out once, at its first occurrence.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class LocalClock(Protocol):
    """Where and when a partner takes their messages: a `Partner`, or the planner's plain row of the same."""

    @property
    def timezone(self) -> str: ...

    @property
    def preferred_time(self) -> time: ...

    @property
    def quiet_start(self) -> time: ...

    @property
    def quiet_end(self) -> time: ...


class UnknownTimeZone(ValueError):
    """A partner's time zone is not in the tz database on this machine."""


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownTimeZone(name) from exc


def in_quiet_hours(local: time, quiet_start: time, quiet_end: time) -> bool:
    if quiet_start == quiet_end:
        return False
    if quiet_start < quiet_end:
        return quiet_start <= local < quiet_end
    return local >= quiet_start or local < quiet_end


def local_send_time(preferred: time, quiet_start: time, quiet_end: time) -> time:
    """The preferred time, or the end of quiet hours when the preference falls inside them."""
    return quiet_end if in_quiet_hours(preferred, quiet_start, quiet_end) else preferred


def resolve_local(day: date, at: time, tz: ZoneInfo) -> datetime:
    """A local wall-clock time on `day` as an aware UTC instant, correct across DST changes."""
    # fold=0 reads a skipped time with the offset in force before the gap, which lands just after
    # the jump (02:30 becomes 03:30), and a repeated time as its first occurrence.
    return datetime.combine(day, at).replace(tzinfo=tz, fold=0).astimezone(UTC)


def send_instant_at(day: date, preferred: time, quiet_start: time, quiet_end: time, timezone: str) -> datetime:
    """When a send planned for local `day` goes out, as a UTC instant."""
    tz = zone(timezone)
    instant = resolve_local(day, local_send_time(preferred, quiet_start, quiet_end), tz)
    # A time pushed forward by a DST gap can land inside quiet hours that start right after it.
    actual = instant.astimezone(tz)
    if in_quiet_hours(actual.time().replace(tzinfo=None), quiet_start, quiet_end):
        end_day = actual.date() if actual.time() < quiet_end else actual.date() + timedelta(days=1)
        instant = resolve_local(end_day, quiet_end, tz)
    return instant


def send_instant(partner: LocalClock, day: date) -> datetime:
    return send_instant_at(day, partner.preferred_time, partner.quiet_start, partner.quiet_end, partner.timezone)


def local_date(partner: LocalClock, instant: datetime) -> date:
    return instant.astimezone(zone(partner.timezone)).date()


def is_quiet_now(timezone: str, quiet_start: time, quiet_end: time, now: datetime) -> bool:
    """Whether `now` falls inside these quiet hours in this zone (checked again at send time)."""
    local = now.astimezone(zone(timezone)).time().replace(tzinfo=None)
    return in_quiet_hours(local, quiet_start, quiet_end)


def next_allowed_instant(timezone: str, quiet_start: time, quiet_end: time, now: datetime) -> datetime:
    """`now` if it is outside quiet hours, else the end of the quiet hours it is in (always after `now`)."""
    if not is_quiet_now(timezone, quiet_start, quiet_end, now):
        return now
    tz = zone(timezone)
    local = now.astimezone(tz)
    end_day = local.date() if local.time() < quiet_end else local.date() + timedelta(days=1)
    end = resolve_local(end_day, quiet_end, tz)
    if end <= now:
        # A quiet end inside a fall-back night's repeated hour, met on the second pass through it: the
        # first occurrence is behind us, so the quiet hours end at the second.
        end = datetime.combine(end_day, quiet_end).replace(tzinfo=tz, fold=1).astimezone(UTC)
    return end


def next_allowed_for(partner: LocalClock, now: datetime) -> datetime:
    """`now`, or the end of the partner's quiet hours when `now` falls inside them."""
    return next_allowed_instant(partner.timezone, partner.quiet_start, partner.quiet_end, now)


def first_program_date(partner: LocalClock, started_at: datetime) -> date:
    """Day 1 is today if today's send time is still ahead in the partner's zone, else tomorrow."""
    today = local_date(partner, started_at)
    if send_instant(partner, today) > started_at + timedelta(minutes=1):
        return today
    return today + timedelta(days=1)


def first_local_date_after(partner: LocalClock, instant: datetime) -> date:
    """The first local day whose send time comes after `instant` (the end of a pause, say)."""
    day = local_date(partner, instant)
    return day if send_instant(partner, day) > instant else day + timedelta(days=1)
