"""A token bucket in Redis, shared by every worker, so a provider's send rate is never exceeded."""

from __future__ import annotations

import time

from service.models import Channel
from service.runtime import Runtime

# Tokens refill continuously at `rate` per second up to `rate` (one second of burst, at least one).
_TAKE = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local capacity = math.max(1, rate)
local now_us = redis.call('TIME')
local now = tonumber(now_us[1]) + tonumber(now_us[2]) / 1000000
local state = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + (now - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', key, 'tokens', tokens, 'ts', now)
redis.call('EXPIRE', key, 60)
return tostring(wait)
"""


def throttle(runtime: Runtime, channel: Channel) -> None:
    """Block until this process may send one message on `channel`."""
    rate = runtime.settings.sms_rate_per_second if channel is Channel.SMS else runtime.settings.email_rate_per_second
    if rate <= 0:
        return
    script = runtime.redis.register_script(_TAKE)
    key = f"closer:rate:{channel.value}"
    while True:
        wait = float(script(keys=[key], args=[rate]))
        if wait <= 0:
            return
        time.sleep(min(wait, 1.0))
