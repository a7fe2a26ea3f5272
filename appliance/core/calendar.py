"""Trading sessions of an exchange calendar (``exchange_calendars``).

A *session* is a trading date (``datetime64[D]``). Calendar objects are built
once per name, over a wide fixed range (1990-01-01 to two years ahead), and
their sessions and closes are kept as plain numpy arrays so lookups are
binary searches.

A session is *completed* once its close has passed (16:00 America/New_York on
XNYS, 13:00 on early-close days such as the day after Thanksgiving).
"""
from __future__ import annotations

import datetime as dt
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import ArrayLike

CALENDAR_START = dt.date(1990, 1, 1)
#: The zone the US vendors (Polygon, Yahoo) date their bars in, and the one
#: ``MinuteBars`` counts minutes of the day in: the exchange time zone of XNYS,
#: the one calendar the config accepts (tests/unit/test_exchange_tz.py holds
#: them equal). SQL never uses it: it gets ``exchange_tz`` as a parameter.
US_VENDOR_TZ = "America/New_York"
#: Years of sessions built past today.
YEARS_AHEAD = 2

_lock = threading.Lock()
_cache: dict[str, _Cal] = {}


@dataclass(frozen=True)
class _Cal:
    name: str
    tz: str  # the exchange's IANA time zone, e.g. America/New_York
    sessions: np.ndarray  # datetime64[D], ascending
    closes_ns: np.ndarray  # int64 UTC nanoseconds of each session's close


def _to_date64(d: Any) -> np.datetime64:
    if isinstance(d, np.datetime64):
        return d.astype("datetime64[D]")
    if isinstance(d, dt.datetime):
        d = d.date()
    return np.datetime64(d, "D")


def _cal(name: str) -> _Cal:
    c = _cache.get(name)
    if c is not None:
        return c
    with _lock:
        c = _cache.get(name)
        if c is None:
            import exchange_calendars as xcals  # slow import: only when first needed

            end = dt.date.today().replace(month=12, day=31)
            end = end.replace(year=end.year + YEARS_AHEAD)
            with warnings.catch_warnings():  # the library's own pandas deprecations
                warnings.simplefilter("ignore")
                xc = xcals.get_calendar(name, start=CALENDAR_START.isoformat(),
                                        end=end.isoformat())
            sessions = xc.sessions.values.astype("datetime64[D]")
            closes = xc.closes.dt.tz_convert(None).to_numpy()  # UTC, naive
            closes_ns = closes.astype("datetime64[ns]").astype(np.int64)
            c = _Cal(name, str(xc.tz), sessions, closes_ns)
            _cache[name] = c
    return c


def exchange_tz(cal_name: str) -> str:
    """The exchange's time zone (IANA name) as ``exchange_calendars`` gives it:
    the one home of the zone that sessions, bar times and the SQL's
    ``AT TIME ZONE`` use (passed to SQL as a parameter)."""
    return _cal(cal_name).tz


def all_sessions(cal_name: str) -> np.ndarray:
    """Every session the cached calendar knows (1990 to two years ahead)."""
    return _cal(cal_name).sessions


def sessions(cal_name: str, start: Any, end: Any) -> np.ndarray:
    """Sessions between ``start`` and ``end``, both inclusive, as ``datetime64[D]``."""
    s = _cal(cal_name).sessions
    lo = np.searchsorted(s, _to_date64(start), side="left")
    hi = np.searchsorted(s, _to_date64(end), side="right")
    return s[lo:hi]


def is_session(cal_name: str, date: Any) -> bool:
    s = _cal(cal_name).sessions
    d = _to_date64(date)
    i = np.searchsorted(s, d)
    return bool(i < len(s) and s[i] == d)


def _now_ns(now: dt.datetime) -> int:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return int(np.datetime64(now.astimezone(dt.UTC).replace(tzinfo=None), "ns").astype(np.int64))


def latest_completed_session(cal_name: str, now: dt.datetime) -> dt.date:
    """The last session whose close is at or before ``now`` (aware datetime)."""
    c = _cal(cal_name)
    i = int(np.searchsorted(c.closes_ns, _now_ns(now), side="right")) - 1
    if i < 0:
        raise ValueError(f"no completed {cal_name} session before {now.isoformat()}")
    day: dt.date = c.sessions[i].astype(dt.date)
    return day


def sessions_behind(cal_name: str, latest_stored: Any, now: dt.datetime) -> int:
    """How many completed sessions come after ``latest_stored`` (0 when up to date)."""
    c = _cal(cal_name)
    done = int(np.searchsorted(c.closes_ns, _now_ns(now), side="right"))  # sessions[:done] completed
    after = int(np.searchsorted(c.sessions, _to_date64(latest_stored), side="right"))
    return max(0, done - after)


def previous_sessions(cal_name: str, date: Any, n: int) -> np.ndarray:
    """The ``n`` sessions strictly before ``date``, ascending (fewer near the
    calendar's start). ``previous_sessions(cal, last_stored, 5)[0]`` is the
    start of a five-session look-back."""
    s = _cal(cal_name).sessions
    i = int(np.searchsorted(s, _to_date64(date), side="left"))
    return s[max(0, i - n):i]


# -- Unix time -> exchange-local dates, vectorised ---------------------------

@lru_cache(maxsize=8)
def _transitions(tz_name: str) -> tuple[np.ndarray, np.ndarray]:
    """UTC offsets of ``tz_name`` as a step function: (instants_s, offsets_s).

    Found by sampling weekly from 1900 to 2100 and bisecting each change down
    to the hour (zone transitions are weeks apart and fall on whole hours)."""
    tz = ZoneInfo(tz_name)
    utc = dt.UTC

    def off(ts: int) -> int:
        offset = dt.datetime.fromtimestamp(ts, utc).astimezone(tz).utcoffset()
        assert offset is not None  # a ZoneInfo always has one
        return int(offset.total_seconds())

    step = 7 * 86400
    t0 = int(dt.datetime(1900, 1, 1, tzinfo=utc).timestamp())
    t1 = int(dt.datetime(2100, 1, 1, tzinfo=utc).timestamp())
    instants = [t0]
    offsets = [off(t0)]
    prev = offsets[0]
    for t in range(t0 + step, t1, step):
        o = off(t)
        if o != prev:
            a, b = t - step, t  # off(a) == prev, off(b) == o
            while b - a > 3600:
                m = a + ((b - a) // 2 // 3600) * 3600 or a + 3600
                if off(m) == prev:
                    a = m
                else:
                    b = m
            instants.append(b)
            offsets.append(o)
            prev = o
    return np.array(instants, dtype=np.int64), np.array(offsets, dtype=np.int64)


def local_dates(epoch_seconds: ArrayLike, tz_name: str = US_VENDOR_TZ) -> np.ndarray:
    """Local calendar dates (``datetime64[D]``) of Unix times in seconds."""
    t = np.asarray(epoch_seconds, dtype=np.int64)
    inst, offs = _transitions(tz_name)
    idx = np.searchsorted(inst, t, side="right") - 1
    idx = np.clip(idx, 0, len(offs) - 1)
    return ((t + offs[idx]) // 86400).astype("datetime64[D]")


def local_midnight_epoch(date: Any, tz_name: str = US_VENDOR_TZ) -> int:
    """Unix seconds of 00:00 local time on ``date``."""
    d = _to_date64(date).astype(dt.date)
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=ZoneInfo(tz_name)).timestamp())


def local_time_epochs(dates: ArrayLike, seconds_of_day: int = 0,
                      tz_name: str = US_VENDOR_TZ) -> np.ndarray:
    """Unix seconds (int64) of the local wall time ``seconds_of_day`` after
    midnight on each date (e.g. ``9*3600 + 1800`` for 09:30 New York)."""
    days = np.asarray(dates).astype("datetime64[D]").astype(np.int64)
    wall = days * 86400 + int(seconds_of_day)
    inst, offs = _transitions(tz_name)

    def off(t: np.ndarray) -> np.ndarray:
        return offs[np.clip(np.searchsorted(inst, t, side="right") - 1, 0, len(offs) - 1)]

    t1 = wall - off(wall)
    return wall - off(t1)


def regular_close_minutes(cal_name: str, days: ArrayLike) -> np.ndarray:
    """Minute of the local day each session's regular close falls on (960 for
    16:00 New York, 780 on an early close); -1 for a date that is no session."""
    c = _cal(cal_name)
    d = np.asarray(days).astype("datetime64[D]")
    i = np.clip(np.searchsorted(c.sessions, d), 0, len(c.sessions) - 1)
    hit = c.sessions[i] == d
    close_s = c.closes_ns[i] // 1_000_000_000
    inst, offs = _transitions(c.tz)
    local = close_s + offs[np.clip(np.searchsorted(inst, close_s, side="right") - 1, 0,
                                   len(offs) - 1)]
    minute = (local % 86400) // 60
    return np.where(hit, minute, -1).astype(np.int64)
