"""When a partner's next step is due: local preferred time, moved out of quiet hours, in UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from service.models import Partner


def in_quiet_hours(local: time, quiet_start: time, quiet_end: time) -> bool:
    if quiet_start == quiet_end:
        return False
    if quiet_start < quiet_end:
        return quiet_start <= local < quiet_end
    return local >= quiet_start or local < quiet_end


def local_send_time(preferred: time, quiet_start: time, quiet_end: time) -> time:
    """The preferred time, or the end of quiet hours when the preference falls inside them."""
    return quiet_end if in_quiet_hours(preferred, quiet_start, quiet_end) else preferred


def resolve_local(day: date, at: time, zone: ZoneInfo) -> datetime:
    """A local wall-clock time on `day` as an aware UTC instant, correct across DST changes.

    A time skipped by spring-forward (02:30 on that day) moves forward by the gap, so it happens once;
    a time repeated by fall-back takes its first occurrence (fold=0).
    """
    # fold=0 reads a skipped time with the offset in force before the gap, which lands just after
    # the jump (02:30 becomes 03:30), and a repeated time as its first occurrence.
    return datetime.combine(day, at).replace(tzinfo=zone, fold=0).astimezone(UTC)


def send_instant(partner: Partner, day: date) -> datetime:
    zone = ZoneInfo(partner.timezone)
    at = local_send_time(partner.preferred_time, partner.quiet_start, partner.quiet_end)
    return resolve_local(day, at, zone)


def local_date(partner: Partner, instant: datetime) -> date:
    return instant.astimezone(ZoneInfo(partner.timezone)).date()


def first_program_date(partner: Partner, started_at: datetime) -> date:
    """Day 1 is today if today's send time is still ahead in the partner's zone, else tomorrow."""
    today = local_date(partner, started_at)
    if send_instant(partner, today) > started_at + timedelta(minutes=1):
        return today
    return today + timedelta(days=1)
