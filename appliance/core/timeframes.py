"""Bar resolutions and the rules that label intraday bars.

Stored: ``1m`` (raw from the vendor) and ``1d``. Derived: ``5m 15m 30m 1h
4h`` from ``1m`` (rollup tables written with the sessions a write stores,
computed in numpy by ``rollups``; ``store.minutes.refresh_rollups_of``
recomputes them in PostgreSQL) and ``1w`` from ``1d`` (on read).

Labelling, the vendor's own rules so that our rollups and its multi-minute
aggregates line up bar for bar:

* A bar is labelled with its **start**. Minute, multi-minute and hour buckets
  snap to the New York clock: a 5m bar starts at a multiple of 5 minutes past
  midnight, an hour bar at the top of the hour (so with the regular session the
  09:00 bar holds 09:30-09:59), a 4h bar at 00:00, 04:00, 08:00, 12:00, 16:00 or
  20:00.
* A bar belongs to the **session** of its New York date; no bar crosses
  midnight, so buckets never straddle two sessions.
* ``session: regular`` keeps the minutes from 09:30 up to the close (16:00, or
  13:00 on an early close); ``extended`` keeps 04:00 up to 20:00 (17:00 after an
  early close). Minutes outside are not stored.
* A week (``1w``) starts on Sunday, its label is that Sunday's date; it holds
  the daily bars of its sessions.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from appliance.core import calendar as tcal

STORED = ("1m", "1d")
#: Derived from 1m, bucket width in minutes.
ROLLUPS = {"5m": 5, "15m": 15, "30m": 30, "1h": 60, "4h": 240}
#: Every timeframe the API and chart serve, finest first.
ALL = ("1m", "5m", "15m", "30m", "1h", "4h", "1d", "1w")
INTRADAY = ("1m", *ROLLUPS)
SESSIONS = ("regular", "extended")
#: Minute of the New York day the session opens, and its normal close.
REGULAR_OPEN, REGULAR_CLOSE = 9 * 60 + 30, 16 * 60
EXTENDED_OPEN, EXTENDED_CLOSE = 4 * 60, 20 * 60
#: After an early close the extended session still runs this long.
AFTER_HOURS = 4 * 60


def base_of(timeframe: str) -> str:
    """The stored resolution a timeframe is served from."""
    if timeframe in INTRADAY:
        return "1m"
    if timeframe in ("1d", "1w"):
        return "1d"
    raise ValueError(f"unknown timeframe {timeframe!r}; use one of {', '.join(ALL)}")


def session_window(cal_name: str, days: ArrayLike, session: str) -> tuple[np.ndarray, np.ndarray]:
    """Per session date: the first kept minute and the minute after the last one
    (``open <= minute < close``), minutes of the New York day. A date that is
    no session gets an empty window (0, 0)."""
    close = tcal.regular_close_minutes(cal_name, days)
    none = close < 0
    if session == "extended":
        lo = np.full(close.shape, EXTENDED_OPEN)
        hi = np.minimum(close + AFTER_HOURS, EXTENDED_CLOSE)
    else:
        lo = np.full(close.shape, REGULAR_OPEN)
        hi = close
    return np.where(none, 0, lo), np.where(none, 0, hi)
