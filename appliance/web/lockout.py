"""The login/token lockout when Redis cannot keep it.

The failure counters live in Redis, shared by every web worker. When Redis
refuses a write (full under ``noeviction``, unreachable), the lockout must not
switch off: each worker then counts failures in its own memory, with the same
limit, window and lockout time, and refuses a locked-out address even with the
right token, as Redis would have. Bounded: at most ``MAX_ADDRESSES`` addresses
are remembered (the oldest windows are dropped first), so a flood of addresses
cannot grow the worker's memory either.
"""
from __future__ import annotations

import threading
import time

MAX_ADDRESSES = 10_000


class LocalLockout:
    def __init__(self, max_addresses: int = MAX_ADDRESSES):
        self.max_addresses = max_addresses
        self._lock = threading.Lock()
        # address -> [failures, end of the window, end of the lockout]
        self._state: dict[str, list[float]] = {}

    def locked_for(self, addr: str) -> int:
        """Seconds left of ``addr``'s lockout in this worker (0: not locked)."""
        with self._lock:
            st = self._state.get(addr)
        if not st:
            return 0
        left = st[2] - time.monotonic()
        return int(left) + 1 if left > 0 else 0

    def record_failure(self, addr: str, max_failures: int, window_s: float,
                       lockout_s: float) -> tuple[int, bool]:
        """Counts one failure; (failures in the window, whether it locked now)."""
        now = time.monotonic()
        with self._lock:
            st = self._state.get(addr)
            if st is None or (st[1] <= now and st[2] <= now):
                st = [0, now + window_s, 0.0]
                self._state[addr] = st
                self._trim(now)
            st[0] += 1
            locked = st[0] >= max_failures and st[2] <= now
            if locked:
                st[2] = now + lockout_s
            return int(st[0]), locked

    def _trim(self, now: float) -> None:
        if len(self._state) <= self.max_addresses:
            return
        for a in [a for a, st in self._state.items() if st[1] <= now and st[2] <= now]:
            del self._state[a]
        while len(self._state) > self.max_addresses:
            oldest = min(self._state, key=lambda a: self._state[a][1])
            del self._state[oldest]
