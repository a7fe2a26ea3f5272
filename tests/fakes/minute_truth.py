"""Deterministic raw 1-minute bars on XNYS sessions, with the daily bars the
vendor would derive from them.

``make_minute_truth(symbols, start, end, seed)`` returns a ``MinuteTruth``:
a ``Truth`` (``bars``: daily ``Bars``, ``splits``) plus ``minutes`` (symbol ->
``VendorMinutes``), so one ``PolygonFake`` serves 1/day, 1/week and every
minute/hour multiplier consistently::

    truth = make_minute_truth(["AAPL", "MSFT"], "2024-06-03", "2024-07-31", seed=1)
    with PolygonFake(truth.bars, truth.splits, minutes=truth.minutes) as fake:
        ...

What the minutes look like:

- Pre-market 04:00-09:30 ET and after-hours 16:00-20:00 ET bars
  (``session="extended"``, the default), much thinner than regular hours: a
  minute there has a bar with probability ``extended_fill`` (scaled per
  symbol; 40 % of that before 08:00 and after 18:00) and a few percent of the
  regular minutes' volume. ``session="regular"`` keeps 09:30-16:00 only.
- Missing minutes: each regular-hours minute is absent with probability
  ``missing`` (scaled per symbol by 0.5-1.5); absent minutes have no bar.
- Early closes come from the calendar (``regular_close_minutes``): on those
  days (13:00 close) there is no
  regular-session bar at or after the close, after-hours bars run from the
  close for four hours (13:00-17:00 ET) and nothing comes later.
- Splits: every tenth symbol (``symbols[::10]``, so the first one) by default
  gets a ``split_to``-for-1 split on ``split_date`` (default the middle
  session). Bars before it are raw pre-split (prices times the ratio, volume
  divided), as in ``make_truth``.
- Prices have at most 4 decimals, ``l <= o, c <= h``, ``vw`` in ``[l, h]``,
  volumes and trade counts are whole numbers >= 1.

The daily bar of each session follows the vendor's rule: ``o``/``c`` are
the first/last regular-hours minute's open/close, ``h``/``l`` the max/min of
the regular-hours minutes, ``v`` their volume sum times
``1 + daily_volume_bias`` rounded (vendors disagree on volume), ``vw`` the
volume-weighted mean of their ``vw`` (4 decimals) and ``n`` the sum of their
trade counts. Extended-hours minutes never enter the daily bar.

Each symbol is generated from its own seed (``seed`` and the symbol's name),
so ``keep_minutes=False`` can drop the minutes after deriving the daily bars
and regenerate a symbol's minutes when asked for them (keeping the last
``cache_symbols``): 500 symbols x 1 year of extended minutes are ~65 million
bars, too many to hold at once.
"""
from __future__ import annotations

import collections
import datetime as dt
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from appliance.core import calendar as tcal
from appliance.core.candles import Bars, Split

from .polygon_fake import Truth
from .vendor_minutes import (
    AFTER_CLOSE,
    EARLY_CLOSE,
    MINUTE_MS,
    NY,
    PRE_OPEN,
    REGULAR_CLOSE,
    REGULAR_OPEN,
    VendorMinutes,
)

SLOTS = AFTER_CLOSE - PRE_OPEN            # 960 minutes 04:00-20:00
R0 = REGULAR_OPEN - PRE_OPEN              # first regular slot (09:30)
R1 = REGULAR_CLOSE - PRE_OPEN             # end of the regular slots (16:00)
AFTER_HOURS_MINUTES = 240


def session_closes(sessions: np.ndarray, calendar: str = "XNYS") -> np.ndarray:
    """ET minute of day of each session's regular close (960 = 16:00, 780 = 13:00)."""
    return tcal.regular_close_minutes(calendar, sessions).astype(np.int32)


@dataclass
class MinuteTruth(Truth):
    """``Truth`` (daily ``bars``, ``splits``) plus the minutes behind them.

    ``minutes``: symbol -> raw ``VendorMinutes`` (a dict, or a regenerating
    mapping when built with ``keep_minutes=False``); ``sessions``: the
    sessions covered; ``closes``: ET minute of day of each session's close;
    ``session``: ``"extended"`` or ``"regular"``; ``minute_counts`` /
    ``regular_counts``: bars per symbol (all / regular-session only)."""

    minutes: Mapping[str, VendorMinutes] = field(default_factory=dict)
    sessions: np.ndarray = field(default_factory=lambda: np.empty(0, "datetime64[D]"))
    closes: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    session: str = "extended"
    minute_counts: dict[str, int] = field(default_factory=dict)
    regular_counts: dict[str, int] = field(default_factory=dict)

    @property
    def early_closes(self) -> np.ndarray:
        """Sessions closing before 16:00 ET."""
        return self.sessions[self.closes < REGULAR_CLOSE]

    @property
    def n_minutes(self) -> int:
        return sum(self.minute_counts.values())

    @property
    def n_regular_minutes(self) -> int:
        return sum(self.regular_counts.values())

    def regular_minutes(self, symbol: str) -> VendorMinutes:
        """The symbol's regular-session minute bars only."""
        mb = self.minutes[symbol]
        return mb.take(mb.regular)


class RegeneratedMinutes(Mapping):
    """symbol -> ``VendorMinutes`` built on demand by ``make(symbol)``, the last
    ``cache_symbols`` kept (thread-safe)."""

    def __init__(self, symbols: Iterable[str], make: Callable[[str], VendorMinutes],
                 cache_symbols: int = 4):
        self._symbols = list(symbols)
        self._known = set(self._symbols)
        self._make = make
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._size = max(1, int(cache_symbols))
        self._lock = threading.Lock()

    def __getitem__(self, symbol: str) -> VendorMinutes:
        if symbol not in self._known:
            raise KeyError(symbol)
        with self._lock:
            if symbol in self._cache:
                self._cache.move_to_end(symbol)
                return self._cache[symbol]
            mb = self._make(symbol)
            self._cache[symbol] = mb
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
            return mb

    def __iter__(self):
        return iter(self._symbols)

    def __len__(self) -> int:
        return len(self._symbols)


@dataclass(frozen=True)
class _Spec:
    sessions: np.ndarray
    closes: np.ndarray
    start_ms: np.ndarray      # 04:00 ET of each session, epoch ms
    seed: int
    session: str
    missing: float
    extended_fill: float
    daily_volume_bias: float


#: Extended-hours minutes: volatility and volume relative to a regular minute's.
EXT_VOLATILITY, EXT_VOLUME = 0.35, 0.04


def _profiles():
    """Per regular slot: volatility and volume (U-shaped, volume mean 1);
    per slot: the extended-hours fill multiplier."""
    k = np.arange(SLOTS)
    kr = np.clip(k - R0, 0, R1 - R0 - 1)
    vol = 1 + 1.5 * np.exp(-kr / 30) + 0.7 * np.exp(-(389 - kr) / 30)
    volume = 1 + 2 * np.exp(-kr / 20) + 1.5 * np.exp(-(389 - kr) / 25)
    mod = PRE_OPEN + k
    fill = np.where((mod < 8 * 60) | (mod >= 18 * 60), 0.4, 1.0)
    return vol, volume / volume[R0:R1].mean(), fill


_VOL, _VOLUME, _FILL = _profiles()


def _regular(spec: _Spec) -> np.ndarray:
    """Regular-session slots, shape (sessions, SLOTS): 09:30 to the close."""
    k = np.arange(SLOTS)[None, :]
    return (k >= R0) & (k < (spec.closes - PRE_OPEN)[:, None])


def _presence(rng, spec: _Spec, regular: np.ndarray) -> np.ndarray:
    """Which slots have a bar, shape (sessions, SLOTS)."""
    ns = len(spec.sessions)
    k = np.arange(SLOTS)[None, :]
    close = (spec.closes - PRE_OPEN)[:, None]
    u = rng.random((ns, SLOTS), dtype=np.float32)
    miss = spec.missing * rng.uniform(0.5, 1.5)
    present = regular & (u >= miss)
    if spec.session == "extended":
        fill = min(1.0, spec.extended_fill * rng.uniform(0.5, 1.5)) * _FILL[None, :]
        after_end = np.minimum(close + AFTER_HOURS_MINUTES, SLOTS)
        ext = (k < R0) | ((k >= close) & (k < after_end))
        present |= ext & (u < fill)
    return present


def _split_factor(symbol: str, sessions: np.ndarray, splits: list[Split]) -> np.ndarray:
    f = np.ones(len(sessions))
    for s in splits:
        if s.symbol == symbol:
            f[sessions < np.datetime64(s.execution_date, "D")] *= s.split_to / s.split_from
    return f


def _grid(symbol: str, spec: _Spec, splits: list[Split]):
    """Raw bar values on the full (sessions, SLOTS) grid and the masks."""
    rng = np.random.default_rng([spec.seed, zlib.crc32(symbol.encode()), 60])
    ns = len(spec.sessions)
    sigma = rng.uniform(0.01, 0.025)
    p0 = float(np.exp(rng.uniform(np.log(10), np.log(300))))
    day_volume = float(np.exp(rng.uniform(np.log(3e5), np.log(2e7))))
    trade_size = rng.uniform(60, 250)
    regular = _regular(spec)
    s_min = np.where(regular, _VOL, EXT_VOLATILITY) * (sigma / np.sqrt(390))
    ret = rng.standard_normal((ns, SLOTS), dtype=np.float32) * s_min
    ret[:, 0] += rng.standard_normal(ns) * sigma * 0.4 + rng.uniform(-0.0002, 0.0006)
    logc = np.log(p0) + np.cumsum(ret, axis=None, dtype=np.float64).reshape(ns, SLOTS)
    f = _split_factor(symbol, spec.sessions, splits)[:, None]
    close = np.exp(logc) * f
    opn = close * np.exp(-ret)  # float32 noise is plenty for synthetic prices
    shape = (ns, SLOTS)
    f32 = np.float32
    wick = np.abs(rng.standard_normal((2, *shape), dtype=f32)) * (0.6 * s_min).astype(f32)
    o = np.round(opn, 4)
    c = np.round(close, 4)
    h = np.maximum(np.round(np.maximum(opn, close) * (1 + wick[0]), 4), np.maximum(o, c))
    lo = np.minimum(np.round(np.minimum(opn, close) * (1 - wick[1]), 4), np.minimum(o, c))
    lo = np.maximum(lo, 0.0001)
    vw = np.round(lo + (h - lo) * (0.25 + 0.5 * rng.random(shape, dtype=f32)), 4)
    day = np.exp(rng.normal(0, 0.35, ns))[:, None] * (day_volume / 390)
    noise = np.exp(rng.standard_normal(shape, dtype=f32) * f32(0.6))
    v = np.maximum(1, np.round(day * np.where(regular, _VOLUME, EXT_VOLUME) * noise / f))
    size = trade_size * np.exp(rng.standard_normal(shape, dtype=f32) * f32(0.3))
    n = np.clip(np.floor(v / size), 1, v)
    present = _presence(rng, spec, regular)
    return (o, h, lo, c, v, vw, n.astype(np.int64)), present, regular


def _daily(symbol: str, spec: _Spec, cols, present, regular) -> Bars:
    """The vendor's daily bars from the regular-hours minutes."""
    o, h, lo, c, v, vw, n = (x[:, R0:R1] for x in cols)
    m = (present & regular)[:, R0:R1]
    has = m.any(axis=1)
    first = np.argmax(m, axis=1)
    last = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)
    rows = np.arange(m.shape[0])
    vol = np.where(m, v, 0).sum(axis=1)
    pv = np.where(m, vw * v, 0).sum(axis=1)
    keep = np.flatnonzero(has)
    safe = np.where(vol > 0, vol, 1)
    dv = np.round(vol * (1 + spec.daily_volume_bias))
    return Bars(symbol, spec.sessions[keep], o[rows, first][keep],
                np.where(m, h, -np.inf).max(axis=1)[keep],
                np.where(m, lo, np.inf).min(axis=1)[keep], c[rows, last][keep], dv[keep],
                np.round(pv / safe, 4)[keep], np.where(m, n, 0).sum(axis=1)[keep], "truth")


def _compress(symbol: str, spec: _Spec, cols, present, regular) -> VendorMinutes:
    flat = np.flatnonzero(present)
    row, col = np.divmod(flat, SLOTS)
    t = spec.start_ms[row] + col.astype(np.int64) * MINUTE_MS
    o, h, lo, c, v, vw, n = (x.reshape(-1)[flat] for x in cols)
    return VendorMinutes(symbol, t, o, h, lo, c, v, vw, n, (PRE_OPEN + col).astype(np.int16),
                      regular.reshape(-1)[flat])


def _one(symbol: str, spec: _Spec, splits: list[Split]) -> tuple[VendorMinutes, Bars]:
    cols, present, regular = _grid(symbol, spec, splits)
    return _compress(symbol, spec, cols, present, regular), \
        _daily(symbol, spec, cols, present, regular)


def _default_splits(symbols, sess, split_symbols, split_date, split_to) -> list[Split]:
    if not symbols or not len(sess):
        return []
    chosen = symbols[::10] if split_symbols is None else list(split_symbols)
    if split_date is None:
        split_date = sess[len(sess) // 2]
    d = np.datetime64(split_date, "D").astype(dt.date)
    return [Split(s, d, 1.0, float(split_to)) for s in chosen]


def make_minute_truth(symbols: Iterable[str], start, end, seed: int = 7, *,
                      session: str = "extended", split_symbols: Iterable[str] | None = None,
                      split_date=None, split_to: float = 4.0, missing: float = 0.02,
                      extended_fill: float = 0.3, daily_volume_bias: float = 0.005,
                      keep_minutes: bool = True, cache_symbols: int = 4,
                      calendar: str = "XNYS") -> MinuteTruth:
    """Raw minute bars and their daily bars on ``calendar``'s sessions in
    ``start``..``end`` (both inclusive). See the module docstring."""
    if session not in ("extended", "regular"):
        raise ValueError(f"session must be 'extended' or 'regular', not {session!r}")
    if not 0 <= missing < 1 or not 0 <= extended_fill <= 1:
        raise ValueError("missing must be in [0, 1) and extended_fill in [0, 1]")
    symbols = list(symbols)
    sess = tcal.sessions(calendar, start, end)
    closes = session_closes(sess, calendar)
    spec = _Spec(sess, closes, tcal.local_time_epochs(sess, PRE_OPEN * 60, NY) * 1000, int(seed),
                 session, float(missing), float(extended_fill), float(daily_volume_bias))
    splits = _default_splits(symbols, sess, split_symbols, split_date, split_to)
    bars: dict[str, Bars] = {}
    minutes: dict[str, VendorMinutes] = {}
    counts: dict[str, int] = {}
    regular: dict[str, int] = {}
    for sym in symbols:
        mb, daily = _one(sym, spec, splits)
        bars[sym] = daily
        counts[sym] = len(mb)
        regular[sym] = int(mb.regular.sum())
        if keep_minutes:
            minutes[sym] = mb
    store: Mapping[str, VendorMinutes] = minutes if keep_minutes else RegeneratedMinutes(
        symbols, lambda s: _one(s, spec, splits)[0], cache_symbols)
    return MinuteTruth(bars, splits, store, sess, closes, session, counts, regular)


__all__ = ["MinuteTruth", "VendorMinutes", "RegeneratedMinutes", "make_minute_truth",
           "session_closes", "EARLY_CLOSE"]
