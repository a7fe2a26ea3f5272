"""Domain types shared by providers, quality and the store: daily candles of
one symbol (``Bars``), a split (``Split``) and a cash dividend (``Dividend``).

Bars travel as columns, not one dict per candle: validation and the COPY into
PostgreSQL both work on whole columns, which is what makes a 630,000-candle
backfill cheap.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from appliance.core.calendar import US_VENDOR_TZ, local_dates, local_time_epochs


def iso_date(d: object) -> str:
    """YYYY-MM-DD of a date, datetime, numpy datetime64 or ISO string."""
    if isinstance(d, str):
        return dt.date.fromisoformat(d).isoformat()
    if isinstance(d, dt.datetime):
        d = d.date()
    if isinstance(d, np.datetime64):
        d = d.astype("datetime64[D]").astype(dt.date)
    assert isinstance(d, dt.date), f"not a date: {d!r}"
    return d.isoformat()


@dataclass
class Bars:
    """Daily bars of one symbol, sorted by session ascending.

    ``session`` holds the trading dates (``datetime64[D]``, the America/New_York
    date the bar starts on). Prices are float64 exactly as parsed from the
    vendor's JSON (so they round-trip); ``vwap`` and ``trades`` may be NaN / -1
    when the vendor omitted them.
    """

    symbol: str
    session: np.ndarray  # datetime64[D]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    vwap: np.ndarray
    trades: np.ndarray  # int64, -1 when unknown
    source: str = "unknown"

    def __len__(self) -> int:
        return int(self.session.shape[0])

    @classmethod
    def empty(cls, symbol: str, source: str = "unknown") -> Bars:
        f = np.empty(0, dtype=np.float64)
        return cls(symbol, np.empty(0, dtype="datetime64[D]"), f, f.copy(), f.copy(),
                   f.copy(), f.copy(), f.copy(), np.empty(0, dtype=np.int64), source)

    @classmethod
    def from_rows(cls, symbol: str, rows: Iterable[tuple[Any, ...]], source: str) -> Bars:
        """rows: (date, open, high, low, close, volume, vwap|None, trades|None)."""
        rows = list(rows)
        if not rows:
            return cls.empty(symbol, source)
        sess = np.array([np.datetime64(r[0], "D") for r in rows], dtype="datetime64[D]")

        def col(i: int) -> np.ndarray:
            return np.array([np.nan if r[i] is None else r[i] for r in rows], dtype=np.float64)

        trades = np.array([-1 if r[7] is None else r[7] for r in rows], dtype=np.int64)
        b = cls(symbol, sess, col(1), col(2), col(3), col(4), col(5), col(6), trades, source)
        return b.sorted()

    def sorted(self) -> Bars:
        """Sorted by session, the last bar kept when a session repeats."""
        if len(self) == 0:
            return self
        # reverse-stable unique keeps the last occurrence of each session
        rev = self.session[::-1]
        _, idx = np.unique(rev, return_index=True)
        # np.unique orders by session, so ``keep`` is already in session order
        keep = (len(self) - 1 - idx)
        return self.take(keep)

    def take(self, idx: Any) -> Bars:
        return Bars(self.symbol, self.session[idx], self.open[idx], self.high[idx], self.low[idx],
                    self.close[idx], self.volume[idx], self.vwap[idx], self.trades[idx], self.source)

    def concat(self, other: Bars) -> Bars:
        c = {n: np.concatenate([getattr(self, n), getattr(other, n)])
             for n in ("session", "open", "high", "low", "close", "volume", "vwap", "trades")}
        return Bars(self.symbol, c["session"], c["open"], c["high"], c["low"], c["close"],
                    c["volume"], c["vwap"], c["trades"], self.source).sorted()


@dataclass(frozen=True)
class Split:
    """A split effective at the open of ``execution_date``: ``split_to`` new
    shares for ``split_from`` old ones (4-for-1 is from=1, to=4)."""

    symbol: str
    execution_date: dt.date
    split_from: float
    split_to: float

    @property
    def ratio(self) -> float:
        """Price after / price before (0.25 for a 4-for-1 split)."""
        return self.split_from / self.split_to


#: The vendor's dividend types: regular cash, special cash, long- and
#: short-term capital gains distributions.
DIVIDEND_TYPES = ("CD", "SC", "LT", "ST")


@dataclass(frozen=True)
class Dividend:
    """A cash distribution of ``cash_amount`` per share, the shares trading
    without it from the open of ``ex_dividend_date``. ``cash_amount`` is None
    when the vendor sent none. ``vendor`` holds every field as the vendor
    sent it (for the store); the typed fields are read from it."""

    symbol: str
    ex_dividend_date: dt.date
    dividend_type: str
    cash_amount: float | None
    declaration_date: dt.date | None = None
    record_date: dt.date | None = None
    pay_date: dt.date | None = None
    frequency: int | None = None
    currency: str | None = None
    vendor_id: str | None = None
    vendor: tuple[tuple[str, Any], ...] = ()  # (key, value) pairs, hashable

    def fields(self) -> dict[str, Any]:
        """The vendor's record as sent (or the typed fields when none was kept)."""
        if self.vendor:
            return dict(self.vendor)
        return {"ticker": self.symbol, "ex_dividend_date": self.ex_dividend_date.isoformat(),
                "dividend_type": self.dividend_type, "cash_amount": self.cash_amount}


@dataclass
class MinuteBars:
    """One-minute bars of one symbol, sorted by start time.

    ``t`` holds each bar's start in Unix seconds (int64); prices and volume are
    float64 exactly as parsed from the vendor's JSON; ``vwap``/``trades`` are
    NaN / -1 when the vendor left them out. ``session`` and ``minute`` (the New
    York date, and the minute of that day the bar starts) are derived from
    ``t``.
    """

    symbol: str
    t: np.ndarray  # int64 Unix seconds
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    vwap: np.ndarray
    trades: np.ndarray  # int64, -1 when unknown
    source: str = "unknown"

    COLUMNS = ("t", "open", "high", "low", "close", "volume", "vwap", "trades")

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @classmethod
    def empty(cls, symbol: str, source: str = "unknown") -> MinuteBars:
        f = np.empty(0, dtype=np.float64)
        return cls(symbol, np.empty(0, dtype=np.int64), f, f.copy(), f.copy(), f.copy(),
                   f.copy(), f.copy(), np.empty(0, dtype=np.int64), source)

    def take(self, idx: Any) -> MinuteBars:
        return MinuteBars(self.symbol, self.t[idx], self.open[idx], self.high[idx],
                          self.low[idx], self.close[idx], self.volume[idx], self.vwap[idx],
                          self.trades[idx], self.source)

    def sorted(self) -> MinuteBars:
        """Sorted by start, the last bar kept when a start repeats."""
        if len(self) == 0:
            return self
        _, idx = np.unique(self.t[::-1], return_index=True)
        return self.take(len(self) - 1 - idx)

    def concat(self, other: MinuteBars) -> MinuteBars:
        c = {n: np.concatenate([getattr(self, n), getattr(other, n)]) for n in self.COLUMNS}
        return MinuteBars(self.symbol, c["t"], c["open"], c["high"], c["low"], c["close"],
                          c["volume"], c["vwap"], c["trades"], self.source).sorted()

    @property
    def session(self) -> np.ndarray:
        return local_dates(self.t, US_VENDOR_TZ)

    @property
    def minute(self) -> np.ndarray:
        """Minute of the New York day each bar starts (570 = 09:30)."""
        s = self.session
        minutes: np.ndarray = (self.t - local_time_epochs(s, 0)) // 60
        return minutes
