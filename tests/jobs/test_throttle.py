"""The provider rate limit, on real Redis, shared by every sender: never exceeded in any one-second window.

Admissions are judged on Redis' clock (the one every worker shares), so a busy test machine delaying a
thread after its admission cannot blur the count; the benchmark judges the same from the fake's clock."""

from __future__ import annotations

import threading
from collections.abc import Callable

from jobs.throttle import CATCH_UP_US, HEADROOM, admit, hold, rate_key, reserve, throttle, window_for
from service.models import Channel
from service.runtime import Runtime
from service.settings import Settings


def busiest_window(moments: list[float], window: float = 1.0) -> int:
    ordered, start, best = sorted(moments), 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_many_senders_never_exceed_the_rate(runtime: Runtime, use_settings: Callable[..., Settings]) -> None:
    use_settings(sms_rate_per_second=40.0)
    started: list[float] = []
    lock = threading.Lock()

    def sender(count: int) -> None:
        for _ in range(count):
            throttle(runtime, Channel.SMS)
            admitted = admit(runtime, Channel.SMS)
            assert admitted is not None
            with lock:
                started.append(admitted)

    threads = [threading.Thread(target=sender, args=(10,)) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 120
    assert busiest_window(started) <= 40


def test_the_window_holds_even_when_senders_skip_the_spreading(
    runtime: Runtime, use_settings: Callable[..., Settings]
) -> None:
    """Threads that wake late from their slots arrive together; the admission window still holds."""
    use_settings(email_rate_per_second=15.0)
    started: list[float] = []
    lock = threading.Lock()
    gate = threading.Barrier(10)

    def burst() -> None:
        gate.wait()
        for _ in range(4):
            admitted = admit(runtime, Channel.EMAIL)
            assert admitted is not None
            with lock:
                started.append(admitted)

    threads = [threading.Thread(target=burst) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 40 and busiest_window(started) <= 15


def test_retry_after_holds_every_sender_back(runtime: Runtime, use_settings: Callable[..., Settings]) -> None:
    use_settings(sms_rate_per_second=5.0)
    hold(runtime, Channel.SMS, 30.0)
    wait = reserve(runtime.redis, Channel.SMS, 5.0)
    assert 29.0 <= wait <= 30.5, "the next slot is after the provider's Retry-After"
    assert reserve(runtime.redis, Channel.EMAIL, 5.0) == 0.0, "only that channel"
    hold(runtime, Channel.SMS, 1.0)
    assert reserve(runtime.redis, Channel.SMS, 5.0) >= 29.0, "a shorter hold never pulls the timeline earlier"


def test_slots_are_one_interval_apart_and_catching_up_is_bounded(runtime: Runtime) -> None:
    reserve(runtime.redis, Channel.SMS, 4.0)
    first = int(runtime.redis.get(rate_key(Channel.SMS)) or 0)
    waits = [reserve(runtime.redis, Channel.SMS, 4.0) for _ in range(8)]
    last = int(runtime.redis.get(rate_key(Channel.SMS)) or 0)
    interval = round(250_000 / HEADROOM)
    assert last - first == 8 * interval, "each send takes the next slot, a quarter second (and 1%) after the last"
    assert waits == sorted(waits)
    # An idle channel may catch up on at most a second of missed slots; the ninth send waits its turn.
    assert waits[-1] >= 8 * interval / 1_000_000 - CATCH_UP_US / 1_000_000 - 0.05


def test_a_fresh_channel_starts_at_its_rate_without_a_burst(runtime: Runtime) -> None:
    waits = [reserve(runtime.redis, Channel.SMS, 4.0) for _ in range(3)]
    interval = 0.25 / HEADROOM
    assert waits[0] == 0
    assert waits[1] >= interval - 0.05 and waits[2] >= 2 * interval - 0.05, "no second of slots taken at once"


def test_no_limit_means_no_waiting_and_no_state(runtime: Runtime) -> None:
    assert runtime.settings.sms_rate_per_second == 0
    throttle(runtime, Channel.SMS)
    assert admit(runtime, Channel.SMS) is None
    assert runtime.redis.exists(rate_key(Channel.SMS), rate_key(Channel.SMS) + ":log") == 0


def test_the_window_for_slow_and_fast_rates() -> None:
    second = round(1_000_000 / HEADROOM)
    assert window_for(10) == (10, second)
    assert window_for(2.5) == (2, second)
    assert window_for(0.5) == (1, round(2_000_000 / HEADROOM)), "one every two seconds"
