"""One vendor rate limit for every process on every host: the limiter's state
lives in Redis, shared by all workers (the local ``http.RateLimiter`` keeps
it per process, so three workers with a limit of 5 a minute would send 15).

The rule is the local limiter's, computed atomically in Redis by one script
on Redis's own clock (hosts' clocks may differ): a token bucket (GCRA, a
burst of at most the limit) plus a log of the last ``limit`` reservations,
so that no window of 60 s (plus a margin) ever holds more than the limit. A
429 from the vendor pauses every process until its Retry-After has passed.

Should Redis fail, the limiter falls back to a per-process one (with a
warning): fetching goes on, at worst at the per-process rate.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from appliance.providers.http import RateLimiter

log = logging.getLogger("appliance.providers.ratelimit")

KEY = "appliance:ratelimit:{}"

# KEYS: tat, log, seq, pause. ARGV: interval, capacity, limit, span, pause_s.
# Returns {slot, now} as strings (seconds on Redis's clock).
_SCRIPT = """
local interval, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, span, pause_s = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tm = redis.call('TIME')
local now = tonumber(tm[1]) + tonumber(tm[2]) / 1000000
if pause_s > 0 then
  local until_ = now + pause_s
  local cur = tonumber(redis.call('GET', KEYS[4]) or '0')
  if until_ > cur then redis.call('SET', KEYS[4], tostring(until_), 'EX', 3600) end
  return {tostring(now), tostring(now)}
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local t = math.max(now, tat - (cap - 1) * interval)
local paused = tonumber(redis.call('GET', KEYS[4]) or '0')
if paused > t then t = paused end
local n = redis.call('ZCARD', KEYS[2])
if n >= limit then
  local old = redis.call('ZRANGE', KEYS[2], n - limit, n - limit, 'WITHSCORES')
  t = math.max(t, tonumber(old[2]) + span)
end
redis.call('SET', KEYS[1], tostring(math.max(tat, t) + interval), 'EX', 3600)
local seq = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], 3600)
redis.call('ZADD', KEYS[2], t, tostring(seq))
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(limit + 1))
redis.call('EXPIRE', KEYS[2], 3600)
return {tostring(t), tostring(now)}
"""


class GlobalRateLimiter:
    """``acquire()``/``reserve()``/``pause()`` like ``http.RateLimiter``, with
    the state in Redis under a name made of the vendor and a digest of its key
    (two keys of one vendor have separate limits; the key itself is never
    stored)."""

    def __init__(self, redis_client, vendor: str, secret: str | None,
                 requests_per_minute: float, *, window_seconds: float = 60.0,
                 margin_seconds: float = 1.0, sleep: Callable[[float], None] = time.sleep):
        self.redis = redis_client
        self.rpm = float(requests_per_minute or 0)
        self.sleep = sleep
        digest = hashlib.sha256((secret or "").encode()).hexdigest()[:16]
        name = KEY.format(f"{vendor}:{digest}")
        self.keys = [f"{name}:tat", f"{name}:log", f"{name}:seq", f"{name}:pause"]
        self.limit = max(1, int(self.rpm)) if self.rpm > 0 else 0
        self.args = [window_seconds / self.rpm if self.rpm > 0 else 0, self.limit, self.limit,
                     window_seconds + margin_seconds]
        self._script = redis_client.register_script(_SCRIPT)
        self._local = RateLimiter(requests_per_minute, window_seconds=window_seconds,
                                  margin_seconds=margin_seconds, sleep=sleep)
        self._warned = False

    def _call(self, pause_s: float) -> tuple[float, float]:
        slot, now = self._script(keys=self.keys, args=[*self.args, pause_s])
        return float(slot), float(now)

    def reserve(self) -> float:
        """Reserve the next slot shared by every process; returns the seconds
        until it may be used."""
        if self.rpm <= 0:
            return 0.0
        try:
            slot, now = self._call(0)
            self._warned = False
            return max(0.0, slot - now)
        except Exception as e:  # noqa: BLE001 - Redis down: limit this process at least
            if not self._warned:
                log.warning("shared rate limit unavailable (%s); limiting this process only", e)
                self._warned = True
            return max(0.0, self._local.reserve() - self._local.clock())

    def acquire(self) -> float:
        """Block until a request may be sent; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self.sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """The vendor said 429: no process sends for ``seconds``."""
        if seconds <= 0:
            return
        try:
            self._call(float(seconds))
        except Exception as e:  # noqa: BLE001
            log.warning("could not share a rate-limit pause: %s", e)
