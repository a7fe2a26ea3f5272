"""Columnar 1-minute bars in the vendor's shape, and the vendor's way of
aggregating them.

``VendorMinutes`` holds one symbol's raw minute bars, ascending by ``t`` (Unix
milliseconds of the bar's start, Polygon's keys ``o h l c v vw n``), with the
exact values the fake serves; ``to_candles()`` gives the appliance's
``candles.MinuteBars`` (``t`` in seconds) of the same values, to compare with
what was stored.

Labelling rules (Polygon's, as documented in the vendor notes):

- a bar's ``t`` is the start of its interval; a minute bar covers
  ``[t, t + 60 s)``;
- multi-minute and hour buckets snap to the start of their resolution on the
  America/New_York wall clock, counted from local midnight: a 5-minute bar
  starts at :00, :05, ...; an hour bar at the top of the clock hour (so the
  09:00 bar holds the pre-market minutes 09:00-09:29 and the regular ones
  09:30-09:59); 4-hour bars at 00:00, 04:00, 08:00, 12:00, 16:00 and 20:00.
  A bucket never spans two ET dates (sizes that do not divide a day are cut at
  midnight);
- a bucket's ``o`` is its first minute's open, ``c`` its last minute's close,
  ``h``/``l`` the max/min, ``v`` and ``n`` sums, ``vw`` the volume-weighted
  mean of the minutes' ``vw`` rounded to 4 decimals;
- weekly bars (from daily bars) start Sunday 00:00 ET.

Minute bars exist only between 04:00 and 20:00 ET, where the US zone's UTC
offset does not change within a day (transitions happen at 02:00), so a
bar's ET second-of-day is ``t`` minus its date's 04:00 ET plus 4 h.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from appliance.core import calendar as tcal
from appliance.core.candles import MinuteBars

NY = "America/New_York"
MINUTE_MS = 60_000
DAY_MINUTES = 1440
#: ET minute-of-day bounds of the sessions.
PRE_OPEN = 4 * 60          # 04:00
REGULAR_OPEN = 9 * 60 + 30  # 09:30
REGULAR_CLOSE = 16 * 60    # 16:00
EARLY_CLOSE = 13 * 60      # 13:00
AFTER_CLOSE = 20 * 60      # 20:00
SPAN_MINUTES = {"minute": 1, "hour": 60}
COLUMNS = ("t", "o", "h", "l", "c", "v", "vw", "n")


def et_minute_of_day(t_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ET dates ``datetime64[D]``, ET minute of day int32) of bar starts.

    Exact for instants from 04:00 ET onwards (see the module docstring)."""
    t_s = np.asarray(t_ms, dtype=np.int64) // 1000
    dates = tcal.local_dates(t_s, NY)
    four = tcal.local_time_epochs(dates, 4 * 3600, NY)
    return dates, ((t_s - four) // 60 + PRE_OPEN).astype(np.int32)


@dataclass
class VendorMinutes:
    """One symbol's raw 1-minute bars (ascending ``t``).

    ``t`` int64 epoch ms of the bar start; ``o h l c vw`` float64 with at most
    4 decimals; ``v`` float64 holding whole numbers (as ``Bars.volume``);
    ``n`` int64 trade counts. ``mod`` (ET minute of day, int16) and
    ``regular`` (the bar lies in the regular session: 09:30-16:00, 13:00 on
    early closes) are labels, not served."""

    symbol: str
    t: np.ndarray
    o: np.ndarray
    h: np.ndarray
    l: np.ndarray  # noqa: E741 - the vendor's key
    c: np.ndarray
    v: np.ndarray
    vw: np.ndarray
    n: np.ndarray
    mod: np.ndarray = field(default=None, repr=False)
    regular: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        if self.mod is None:
            self.mod = et_minute_of_day(self.t)[1].astype(np.int16)
        if self.regular is None:  # without a calendar: a normal day's hours
            self.regular = (self.mod >= REGULAR_OPEN) & (self.mod < REGULAR_CLOSE)

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @classmethod
    def empty(cls, symbol: str) -> VendorMinutes:
        f = np.empty(0, dtype=np.float64)
        return cls(symbol, np.empty(0, dtype=np.int64), f, f.copy(), f.copy(), f.copy(),
                   f.copy(), f.copy(), np.empty(0, dtype=np.int64),
                   np.empty(0, dtype=np.int16), np.empty(0, dtype=bool))

    @classmethod
    def from_rows(cls, symbol: str, rows) -> VendorMinutes:
        """rows: ``(t_ms, o, h, l, c, v, vw, n)`` in any order."""
        rows = sorted(rows)
        if not rows:
            return cls.empty(symbol)
        cols = list(zip(*rows, strict=False))
        f = [np.array(x, dtype=np.float64) for x in cols[1:7]]
        return cls(symbol, np.array(cols[0], dtype=np.int64), *f,
                   np.array(cols[7], dtype=np.int64))

    def take(self, idx) -> VendorMinutes:
        return VendorMinutes(self.symbol, *(getattr(self, k)[idx] for k in COLUMNS),
                          self.mod[idx], self.regular[idx])

    def between(self, lo_ms: int, hi_ms: int) -> VendorMinutes:
        """Bars with ``lo_ms <= t <= hi_ms``."""
        a = int(np.searchsorted(self.t, lo_ms, side="left"))
        z = int(np.searchsorted(self.t, hi_ms, side="right"))
        return self.take(slice(a, z))

    def sessions(self) -> np.ndarray:
        """The ET date of each bar (``datetime64[D]``)."""
        return tcal.local_dates(self.t // 1000, NY)

    def rows(self) -> list[tuple]:
        return list(zip(*(getattr(self, k).tolist() for k in COLUMNS), strict=False))

    def to_candles(self, source: str = "truth") -> MinuteBars:
        """The same bars as the appliance's ``MinuteBars`` (``t`` in seconds)."""
        return MinuteBars(self.symbol, self.t // 1000, self.o, self.h, self.l, self.c, self.v,
                          self.vw, self.n, source)


@dataclass
class Buckets:
    """Aggregated bars: the ``COLUMNS`` plus ``base`` (minutes per bucket) and
    ``first`` (index of each bucket's first base bar in the input)."""

    t: np.ndarray
    o: np.ndarray
    h: np.ndarray
    l: np.ndarray  # noqa: E741
    c: np.ndarray
    v: np.ndarray
    vw: np.ndarray
    n: np.ndarray
    base: np.ndarray
    first: np.ndarray

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def take(self, idx) -> Buckets:
        return Buckets(*(getattr(self, k)[idx] for k in (*COLUMNS, "base", "first")))

    def scaled(self, factor: np.ndarray) -> Buckets:
        """Split-adjusted copy: prices times ``factor``, volume divided."""
        return Buckets(self.t, self.o * factor, self.h * factor, self.l * factor,
                       self.c * factor, self.v / factor, self.vw * factor, self.n,
                       self.base, self.first)


def bucket_starts(t_ms: np.ndarray, mod: np.ndarray, size_minutes: int) -> np.ndarray:
    """Start (epoch ms) of the ``size_minutes`` bucket each minute falls in,
    aligned on ET midnight."""
    return t_ms - (mod.astype(np.int64) % size_minutes) * MINUTE_MS


def reduce_groups(starts: np.ndarray, o, h, lo, c, v, vw, n) -> Buckets:
    """Aggregate consecutive rows sharing a start (``starts`` non-decreasing)."""
    if len(starts) == 0:
        e = np.empty(0)
        ei = np.empty(0, dtype=np.int64)
        return Buckets(ei, e, e, e, e, e, e, ei, ei, ei)
    first = np.flatnonzero(np.r_[True, starts[1:] != starts[:-1]])
    last = np.r_[first[1:], len(starts)] - 1
    vol = np.add.reduceat(v, first)
    pv = np.add.reduceat(vw * v, first)
    with np.errstate(invalid="ignore", divide="ignore"):
        wvw = np.where(vol > 0, pv / np.where(vol > 0, vol, 1), vw[first])
    return Buckets(starts[first], o[first], np.maximum.reduceat(h, first),
                   np.minimum.reduceat(lo, first), c[last], vol, np.round(wvw, 4),
                   np.add.reduceat(n, first), last - first + 1, first)


def aggregate_minutes(mb: VendorMinutes, size_minutes: int) -> Buckets:
    """The vendor's ``size_minutes`` bars from raw minute bars."""
    if size_minutes == 1:
        ones = np.ones(len(mb), dtype=np.int64)
        return Buckets(mb.t, mb.o, mb.h, mb.l, mb.c, mb.v, mb.vw, mb.n, ones,
                       np.arange(len(mb)))
    starts = bucket_starts(mb.t, mb.mod, size_minutes)
    return reduce_groups(starts, mb.o, mb.h, mb.l, mb.c, mb.v, mb.vw, mb.n)


def week_starts(sessions: np.ndarray) -> np.ndarray:
    """Epoch ms of Sunday 00:00 ET of each session's week."""
    days = sessions.astype("datetime64[D]").astype(np.int64)
    sunday = days - (days + 4) % 7  # 1970-01-01 was a Thursday
    return tcal.local_time_epochs(sunday.astype("datetime64[D]"), 0, NY) * 1000


def parse_instant(s: str, *, end: bool) -> int:
    """``from``/``to`` as epoch ms: digits are taken as ms; a ``YYYY-MM-DD``
    date is 00:00 ET of that date (``end``: the last ms of that ET date)."""
    if s.isdigit():
        return int(s)
    d = dt.date.fromisoformat(s)
    if end:
        d = d + dt.timedelta(days=1)
    ms = tcal.local_midnight_epoch(d, NY) * 1000
    return ms - 1 if end else ms
