"""A provider's send rate, shared by every worker through Redis, and never exceeded.

Two steps per send, both atomic Lua scripts on Redis' clock:
1. `throttle` (before the claim) reserves the next free slot on the channel's timeline (a generic cell
   rate algorithm): slots are `1 / rate` seconds apart and the caller sleeps until its slot, so sends
   are spread evenly instead of arriving in bursts. Redis is asked once per send, not polled.
2. `admit` (after the claim, in the transport right before the request is written) is the guarantee:
   a sliding-window log that lets a request start only if fewer than `rate` started in the last second
   (stretched by 1% of headroom). A thread that woke late from its slot, under CPU pressure,
   waits here instead of joining a bunch.
A 429 with Retry-After pushes the timeline back (`hold`), so every worker backs off, not just the thread
that was told.
"""

from __future__ import annotations

import time
import uuid

from redis import Redis
from redis.commands.core import Script

from service.models import Channel
from service.runtime import Runtime

# KEYS[1]: the channel's next free slot, in microseconds on Redis' clock.
# ARGV[1]: microseconds between slots, ARGV[2]: how far behind now the timeline may lag, so that slots
# missed while senders were held up (a busy CPU) can be caught up on; the admission window still caps
# every second. A channel with no timeline (idle for a minute, or never used) starts at now: there are no
# missed slots to catch up on, and starting a second back let a fresh run open with a burst of a second's
# worth of sends, above the rate on average. Returns how many microseconds the caller waits for its slot.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local stored = redis.call('GET', KEYS[1])
local slot = now
if stored then
  slot = tonumber(stored)
  if slot < now - tonumber(ARGV[2]) then slot = now - tonumber(ARGV[2]) end
end
local ttl = math.floor(math.max(0, slot + interval - now) / 1000) + 60000
redis.call('SET', KEYS[1], string.format('%.0f', slot + interval), 'PX', ttl)
return string.format('%.0f', math.max(0, slot - now))
"""

# ARGV[1]: microseconds to hold the channel from now. Never moves the timeline earlier.
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_ = now + tonumber(ARGV[1])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < until_ then
  redis.call('SET', KEYS[1], string.format('%.0f', until_), 'PX', math.floor(tonumber(ARGV[1]) / 1000) + 60000)
end
return 1
"""


_scripts: dict[str, Script] = {}


def _script(connection: Redis, source: str) -> Script:
    """Scripts run by SHA (EVALSHA); redis-py loads them again if Redis forgot them (a restart)."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = connection.register_script(source)
    return script


# KEYS[1]: the channel's log of request starts (a sorted set scored in microseconds).
# ARGV[1]: how many may start per window, ARGV[2]: the window in microseconds, ARGV[3]: a unique member.
# Returns {1, the start in microseconds} when admitted (and logged), else {0, microseconds to wait until
# the oldest start leaves the window}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.floor(window / 1000) + 1000)
  return {1, string.format('%.0f', now)}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, string.format('%.0f', tonumber(oldest[2]) + window - now + 1)}
"""
# The limiter aims just under the limit (2%, about 20 ms a second), so requests that take a little longer
# on the way than their neighbours, or a provider clock that differs from Redis', cannot tip it over. 1%
# was not enough once senders got fast: the first requests of a run, slowed by opening their connections,
# reached the provider ~150 ms after their slots and the rest caught up, so over a ten-second run the
# provider saw 301.6/s against a limit of 300 (bench/dispatch.py).
HEADROOM = 0.98
# Slots missed while senders were held up may be taken late, up to this long after they passed.
CATCH_UP_US = 1_000_000


def rate_for(runtime: Runtime, channel: Channel) -> float:
    settings = runtime.settings
    return settings.sms_rate_per_second if channel is Channel.SMS else settings.email_rate_per_second


def rate_key(channel: Channel) -> str:
    return f"closer:rate:{channel.value}"


def reserve(connection: Redis, channel: Channel, rate: float) -> float:
    """Reserve the next slot on `channel`; returns the seconds to wait until it (0 if it is now)."""
    interval_us = max(1, round(1_000_000 / (rate * HEADROOM)))
    waited = _script(connection, _RESERVE)(keys=[rate_key(channel)], args=[interval_us, CATCH_UP_US],
                                           client=connection)
    return int(waited) / 1_000_000


def throttle(runtime: Runtime, channel: Channel) -> None:
    """Block until this process may send one message on `channel`."""
    rate = rate_for(runtime, channel)
    if rate <= 0:
        return
    wait = reserve(runtime.redis, channel, rate)
    if wait > 0:
        time.sleep(wait)


def window_for(rate: float) -> tuple[int, int]:
    """(requests allowed, window in microseconds): `rate` per second, or one per `1 / rate` seconds,
    with the window stretched by the headroom."""
    span = max(1.0, 1.0 / rate)
    return max(1, int(rate * span + 1e-9)), round(span / HEADROOM * 1_000_000)


def admit(runtime: Runtime, channel: Channel) -> float | None:
    """Block until a request on `channel` may start now without exceeding the rate in any window.

    Returns when it was admitted, in seconds on Redis' clock (the clock every worker shares), or None
    when the channel has no limit."""
    rate = rate_for(runtime, channel)
    if rate <= 0:
        return None
    allowed, window_us = window_for(rate)
    connection = runtime.redis
    member = uuid.uuid4().hex
    while True:
        admitted, value = _script(connection, _ADMIT)(keys=[f"{rate_key(channel)}:log"],
                                                      args=[allowed, window_us, member], client=connection)
        if int(admitted):
            return int(value) / 1_000_000
        time.sleep(int(value) / 1_000_000)


def hold(runtime: Runtime, channel: Channel, seconds: float) -> None:
    """Keep every worker off `channel` for `seconds` (a provider said Retry-After)."""
    if seconds <= 0 or rate_for(runtime, channel) <= 0:
        return
    connection = runtime.redis
    _script(connection, _HOLD)(keys=[rate_key(channel)], args=[round(seconds * 1_000_000)], client=connection)
