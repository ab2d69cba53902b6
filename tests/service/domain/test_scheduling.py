"""When a send goes out: the partner's wall-clock time through zoneinfo, across DST changes in several
zones, moved out of quiet hours. Expected instants are written out by hand in UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest

from service.domain.scheduling import (
    UnknownTimeZone,
    in_quiet_hours,
    is_quiet_now,
    next_allowed_instant,
    send_instant_at,
    zone,
)

NO_QUIET = (time(0, 0), time(0, 0))
QUIET = (time(21, 30), time(8, 0))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# A preferred time inside the spring-forward gap goes out once, just after the jump.
@pytest.mark.parametrize(("zone_name", "day", "preferred", "expected"), [
    ("America/New_York", date(2026, 3, 8), time(2, 30), utc(2026, 3, 8, 7, 30)),  # 03:30 EDT
    ("Europe/London", date(2026, 3, 29), time(1, 30), utc(2026, 3, 29, 1, 30)),  # 02:30 BST
    ("Australia/Sydney", date(2026, 10, 4), time(2, 30), utc(2026, 10, 3, 16, 30)),  # 03:30 AEDT
    ("Pacific/Auckland", date(2026, 9, 27), time(2, 30), utc(2026, 9, 26, 14, 30)),  # 03:30 NZDT
])
def test_a_time_skipped_by_spring_forward_goes_out_once_after_the_gap(
    zone_name: str, day: date, preferred: time, expected: datetime
) -> None:
    instants = [send_instant_at(day + timedelta(days=d), preferred, *NO_QUIET, zone_name) for d in (-1, 0, 1)]
    assert instants[1] == expected
    local_days = [i.astimezone(zone(zone_name)).date() for i in instants]
    assert local_days == [day - timedelta(days=1), day, day + timedelta(days=1)], "one send per local day"
    assert instants[0] < instants[1] < instants[2]


# A preferred time that happens twice on a fall-back day goes out at its first occurrence.
@pytest.mark.parametrize(("zone_name", "day", "preferred", "expected"), [
    ("America/New_York", date(2026, 11, 1), time(1, 30), utc(2026, 11, 1, 5, 30)),  # 01:30 EDT
    ("Europe/London", date(2026, 10, 25), time(1, 30), utc(2026, 10, 25, 0, 30)),  # 01:30 BST
    ("Australia/Sydney", date(2026, 4, 5), time(2, 30), utc(2026, 4, 4, 15, 30)),  # 02:30 AEDT
    ("Pacific/Auckland", date(2026, 4, 5), time(2, 30), utc(2026, 4, 4, 13, 30)),  # 02:30 NZDT
])
def test_a_time_repeated_by_fall_back_goes_out_at_its_first_occurrence(
    zone_name: str, day: date, preferred: time, expected: datetime
) -> None:
    assert send_instant_at(day, preferred, *NO_QUIET, zone_name) == expected


@pytest.mark.parametrize(("zone_name", "before", "after"), [
    ("America/New_York", utc(2026, 3, 7, 14), utc(2026, 3, 9, 13)),  # 09:00 EST, then 09:00 EDT
    ("Europe/London", utc(2026, 3, 28, 9), utc(2026, 3, 30, 8)),  # 09:00 GMT, then 09:00 BST
    ("Australia/Sydney", utc(2026, 10, 2, 23), utc(2026, 10, 4, 22)),  # 09:00 AEST, then 09:00 AEDT
    ("Pacific/Auckland", utc(2026, 9, 25, 21), utc(2026, 9, 27, 20)),  # 09:00 NZST, then 09:00 NZDT
    ("Asia/Kolkata", utc(2026, 3, 7, 3, 30), utc(2026, 3, 9, 3, 30)),  # no DST: 09:00 IST is 03:30 UTC
])
def test_nine_in_the_morning_stays_nine_in_the_morning_across_the_change(
    zone_name: str, before: datetime, after: datetime
) -> None:
    first = before.astimezone(zone(zone_name)).date()
    assert send_instant_at(first, time(9), *QUIET, zone_name) == before
    assert send_instant_at(first + timedelta(days=2), time(9), *QUIET, zone_name) == after


@pytest.mark.parametrize(("preferred", "quiet", "expected_local"), [
    (time(22, 0), QUIET, time(8, 0)),  # late evening preference: the morning the quiet hours end
    (time(6, 15), QUIET, time(8, 0)),
    (time(8, 0), QUIET, time(8, 0)),  # the end of quiet hours is already outside them
    (time(21, 29), QUIET, time(21, 29)),
    (time(13, 30), (time(13, 0), time(14, 0)), time(14, 0)),  # a midday quiet window
    (time(3, 0), NO_QUIET, time(3, 0)),
])
def test_a_preference_inside_quiet_hours_moves_to_their_end(
    preferred: time, quiet: tuple[time, time], expected_local: time
) -> None:
    for zone_name in ("America/New_York", "Europe/London", "Australia/Sydney", "Asia/Kolkata", "Pacific/Auckland"):
        instant = send_instant_at(date(2026, 6, 10), preferred, *quiet, zone_name)
        local = instant.astimezone(zone(zone_name))
        assert (local.date(), local.time()) == (date(2026, 6, 10), expected_local), zone_name


def test_a_dst_gap_that_lands_in_quiet_hours_waits_for_their_end() -> None:
    # 02:30 does not exist on 8 March in New York; it becomes 03:30, inside quiet hours 03:00-08:00.
    instant = send_instant_at(date(2026, 3, 8), time(2, 30), time(3, 0), time(8, 0), "America/New_York")
    assert instant == utc(2026, 3, 8, 12, 0)  # 08:00 EDT


@pytest.mark.parametrize(("zone_name", "now", "quiet", "allowed"), [
    ("Australia/Sydney", utc(2026, 7, 1, 13, 0), True, utc(2026, 7, 1, 22, 0)),  # 23:00 AEST -> 08:00
    ("Australia/Sydney", utc(2026, 7, 1, 18, 0), True, utc(2026, 7, 1, 22, 0)),  # 04:00 AEST -> 08:00
    ("Asia/Kolkata", utc(2026, 7, 1, 6, 0), False, utc(2026, 7, 1, 6, 0)),  # 11:30 IST
    ("Europe/London", utc(2026, 10, 24, 23, 0), True, utc(2026, 10, 25, 8, 0)),  # 00:00 BST -> 08:00 GMT
])
def test_quiet_now_and_the_next_allowed_instant(zone_name: str, now: datetime, quiet: bool,
                                                allowed: datetime) -> None:
    assert is_quiet_now(zone_name, *QUIET, now) is quiet
    assert next_allowed_instant(zone_name, *QUIET, now) == allowed


def test_quiet_hours_ending_in_a_repeated_hour_end_at_the_hour_being_lived() -> None:
    # 25 October in London: 01:00-02:00 happens twice (BST, then GMT). Quiet hours until 01:30 end at
    # the first 01:30 during the first pass, and at the second during the second, never in the past.
    quiet = (time(21, 30), time(1, 30))
    assert next_allowed_instant("Europe/London", *quiet, utc(2026, 10, 25, 0, 15)) == utc(2026, 10, 25, 0, 30)
    assert next_allowed_instant("Europe/London", *quiet, utc(2026, 10, 25, 1, 15)) == utc(2026, 10, 25, 1, 30)


def test_quiet_hours_are_half_open_and_may_wrap_midnight() -> None:
    assert in_quiet_hours(time(21, 30), *QUIET) and in_quiet_hours(time(7, 59), *QUIET)
    assert not in_quiet_hours(time(8, 0), *QUIET) and not in_quiet_hours(time(21, 29), *QUIET)
    assert not in_quiet_hours(time(3, 0), *NO_QUIET)


def test_an_unknown_zone_is_a_clear_error() -> None:
    with pytest.raises(UnknownTimeZone):
        send_instant_at(date(2026, 1, 1), time(9), *QUIET, "Mars/Olympus_Mons")
