"""Demo provider: deterministic synthetic data for a machine with no vendor key.

Clearly labelled (``label = "demo (synthetic data)"``, source ``demo``)
wherever it appears. Per symbol, a random walk is generated once from a fixed
epoch (2000-01-03) over the real sessions of the calendar, seeded from
``seed`` and the symbol's name, and then sliced: the same symbol and session
always give the same bar, whatever range is asked for. Bars exist only up to
the latest *completed* session (today's only after the close).

So that every state of the console can be seen, the series contain:

* real-world splits with raw prices dropping by the ratio on the execution
  session (AAPL 4-for-1 on 2020-08-31, NVDA 10-for-1 on 2024-06-10, TSLA
  3-for-1 on 2022-08-25, AMZN 20-for-1 on 2022-06-06, GOOGL 20-for-1 on
  2022-07-18);
* a few deterministic bad ticks between 2021 and mid-2025: high below low,
  a zero open, a negative volume (AAPL has all three, other symbols some);
* an unexplained overnight jump of about +30% (AAPL and some others);
* one session missing from the series for some symbols;
* quarterly cash dividends (AAPL, MSFT, JPM, XOM, SPY; type CD) from 2020
  on, and one special dividend (MSFT, type SC): reference data only, the
  synthetic prices do not drop on the ex-dates.
"""
from __future__ import annotations

import datetime as dt
import threading
import zlib
from collections.abc import Callable, Iterable

import numpy as np

from appliance.core import calendar as tcal
from appliance.core.candles import Bars, Dividend, MinuteBars, Split
from appliance.providers import demominutes

EPOCH = dt.date(2000, 1, 3)
SOURCE = "demo"
LABEL = "demo (synthetic data)"
#: symbol -> [(execution date, split_from, split_to)]
DEMO_SPLITS: dict[str, list[tuple[dt.date, float, float]]] = {
    "AAPL": [(dt.date(2020, 8, 31), 1, 4)],
    "NVDA": [(dt.date(2024, 6, 10), 1, 10)],
    "TSLA": [(dt.date(2022, 8, 25), 1, 3)],
    "AMZN": [(dt.date(2022, 6, 6), 1, 20)],
    "GOOGL": [(dt.date(2022, 7, 18), 1, 20)],
}
#: symbol -> (cash per quarter, month of the first ex-date of the year)
DEMO_DIVIDENDS: dict[str, tuple[float, int]] = {
    "AAPL": (0.24, 2), "MSFT": (0.75, 2), "JPM": (1.15, 1), "XOM": (0.95, 2), "SPY": (1.6, 3),
}
#: symbol -> [(ex-date, cash)]: special (SC) dividends
DEMO_SPECIAL: dict[str, list[tuple[dt.date, float]]] = {"MSFT": [(dt.date(2024, 11, 20), 3.0)]}
DIVIDENDS_FROM = 2020
DEFAULT_UNIVERSE = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "JPM", "XOM", "SPY")
#: symbols that always carry every kind of anomaly
SHOWCASE = ("AAPL",)
ANOMALY_START = dt.date(2021, 1, 1)
ANOMALY_END = dt.date(2025, 6, 30)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Series:
    __slots__ = ("session", "open", "high", "low", "close", "volume", "vwap", "trades")

    def __init__(self, **cols):
        for k, v in cols.items():
            setattr(self, k, v)


class DemoProvider:
    name = "demo"
    label = LABEL
    supports_grouped = True
    supports_minutes = True
    split_adjusted = False

    def __init__(self, seed: int = 42, calendar: str = "XNYS",
                 universe: Iterable[str] | None = None,
                 now: Callable[[], dt.datetime] = _utcnow):
        self.seed = int(seed)
        self.calendar = calendar
        self.universe = tuple(dict.fromkeys(list(DEFAULT_UNIVERSE) + list(universe or ())))
        self.now = now
        self._lock = threading.Lock()
        self._cache: dict[str, _Series] = {}

    def __repr__(self) -> str:
        return f"DemoProvider(seed={self.seed}, calendar={self.calendar!r}) [{LABEL}]"

    # -- generation ------------------------------------------------------------
    def _rng(self, symbol: str, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, zlib.crc32(symbol.encode()), stream])

    def _series(self, symbol: str) -> _Series:
        s = self._cache.get(symbol)
        if s is not None:
            return s
        s = self._generate(symbol)
        with self._lock:
            self._cache.setdefault(symbol, s)
        return self._cache[symbol]

    def _generate(self, symbol: str) -> _Series:
        sess = tcal.all_sessions(self.calendar)
        sess = sess[sess >= np.datetime64(EPOCH, "D")]
        n = len(sess)
        rng = self._rng(symbol, 0)
        sigma = rng.uniform(0.011, 0.026)  # daily volatility
        p0 = float(np.exp(rng.uniform(np.log(8), np.log(120))))
        drift = rng.uniform(0.0001, 0.0005)
        # mean-reverting log price around a drifting trend keeps 25 years plausible
        shocks = rng.standard_normal(n) * sigma
        x = np.empty(n)
        trend = np.log(p0) + drift * np.arange(n)
        dev = 0.0
        for i in range(n):
            dev = dev * 0.998 + shocks[i]
            x[i] = trend[i] + dev
        close_adj = np.exp(x)
        overnight = rng.standard_normal(n) * sigma * 0.35
        prev = np.concatenate([[close_adj[0] / np.exp(shocks[0])], close_adj[:-1]])
        open_adj = prev * np.exp(overnight)
        wick = np.abs(rng.standard_normal((2, n))) * sigma * 0.6
        high_adj = np.maximum(open_adj, close_adj) * np.exp(wick[0])
        low_adj = np.minimum(open_adj, close_adj) * np.exp(-wick[1])
        vol_adj = np.exp(rng.normal(np.log(rng.uniform(2e6, 4e7)), 0.35, n))

        # raw prices: before each split, prices are higher by to/from, volumes lower
        factor = np.ones(n)
        for d, fr, to in DEMO_SPLITS.get(symbol, ()):
            factor[sess < np.datetime64(d, "D")] *= to / fr
        dec = 2
        o = np.round(open_adj * factor, dec)
        c = np.round(close_adj * factor, dec)
        h = np.maximum(np.round(high_adj * factor, dec), np.maximum(o, c))
        lo = np.minimum(np.round(low_adj * factor, dec), np.minimum(o, c))
        lo = np.maximum(lo, 0.01)
        v = np.round(vol_adj / factor)
        vw = np.round((h + lo + c) / 3.0, 4)
        trades = (v // rng.integers(60, 250, n)).astype(np.int64)

        # deterministic anomalies inside a fixed window
        arng = self._rng(symbol, 1)
        win = np.nonzero((sess >= np.datetime64(ANOMALY_START, "D"))
                         & (sess <= np.datetime64(ANOMALY_END, "D")))[0]
        split_days = [np.datetime64(d, "D") for d, _, _ in DEMO_SPLITS.get(symbol, ())]
        win = win[~np.isin(sess[win], np.array(split_days, dtype="datetime64[D]"))]
        win = win[~np.isin(sess[win - 1], np.array(split_days, dtype="datetime64[D]"))]
        show = symbol in SHOWCASE
        picks = arng.choice(win, size=5, replace=False) if len(win) >= 5 else np.array([], int)
        keep = np.ones(n, dtype=bool)
        if len(picks):
            want = arng.random(5) < 0.4
            if show:
                want[:] = True
            i_hilo, i_zero, i_negvol, i_jump, i_missing = (int(p) for p in picks)
            if want[3]:  # a +30% overnight jump that stays (no split explains it)
                o[i_jump:] = np.round(o[i_jump:] * 1.3, dec)
                h[i_jump:] = np.round(h[i_jump:] * 1.3, dec)
                lo[i_jump:] = np.round(lo[i_jump:] * 1.3, dec)
                c[i_jump:] = np.round(c[i_jump:] * 1.3, dec)
                vw[i_jump:] = np.round(vw[i_jump:] * 1.3, 4)
            if want[0]:
                h[i_hilo], lo[i_hilo] = lo[i_hilo], h[i_hilo]
            if want[1]:
                o[i_zero] = 0.0
            if want[2]:
                v[i_negvol] = -v[i_negvol]
            if want[4]:
                keep[i_missing] = False
        idx = np.nonzero(keep)[0]
        return _Series(session=sess[idx], open=o[idx], high=h[idx], low=lo[idx], close=c[idx],
                       volume=v[idx], vwap=vw[idx], trades=trades[idx])

    # -- the Provider interface ---------------------------------------------------------
    def latest_session(self) -> dt.date:
        return tcal.latest_completed_session(self.calendar, self.now())

    def daily_bars(self, symbol: str, start, end) -> Bars:
        """Raw synthetic bars on ``start``..``end`` (inclusive), never past the
        latest completed session."""
        s = self._series(symbol)
        hi = min(np.datetime64(end, "D"), np.datetime64(self.latest_session(), "D"))
        lo = np.datetime64(start, "D")
        a = int(np.searchsorted(s.session, lo, side="left"))
        b = int(np.searchsorted(s.session, hi, side="right"))
        if b <= a:
            return Bars.empty(symbol, SOURCE)
        j = slice(a, b)
        return Bars(symbol, s.session[j].copy(), s.open[j].copy(), s.high[j].copy(),
                    s.low[j].copy(), s.close[j].copy(), s.volume[j].copy(), s.vwap[j].copy(),
                    s.trades[j].copy(), SOURCE)

    def minute_bars(self, symbol: str, start, end) -> MinuteBars:
        """Synthetic minute bars of the sessions ``start``..``end``, consistent
        with the daily bars (``demominutes``)."""
        return demominutes.minute_bars(self.seed, self.calendar,
                                       self.daily_bars(symbol, start, end))

    def grouped_daily(self, session, symbols: Iterable[str] | None = None) -> dict[str, Bars]:
        """One bar per symbol of the universe (or of ``symbols``) for ``session``;
        empty for a holiday, a weekend or a session not yet completed."""
        day = session if isinstance(session, dt.date) else np.datetime64(session, "D").astype(dt.date)
        if isinstance(day, dt.datetime):
            day = day.date()
        if not tcal.is_session(self.calendar, day) or day > self.latest_session():
            return {}
        out = {}
        for sym in (symbols if symbols is not None else self.universe):
            b = self.daily_bars(sym, day, day)
            if len(b):
                out[sym] = b
        return out

    def splits(self, symbol: str, start=None, end=None) -> list[Split]:
        latest = self.latest_session()
        lo = np.datetime64(start, "D") if start is not None else None
        hi = np.datetime64(end, "D") if end is not None else None
        out = []
        for d, fr, to in DEMO_SPLITS.get(symbol, ()):
            d64 = np.datetime64(d, "D")
            if d > latest or (lo is not None and d64 < lo) or (hi is not None and d64 > hi):
                continue
            out.append(Split(symbol, d, float(fr), float(to)))
        return sorted(out, key=lambda s: s.execution_date)

    def dividends(self, symbol: str, start=None, end=None) -> list[Dividend]:
        """Quarterly cash dividends (``DEMO_DIVIDENDS``: the ex-date is the
        second Thursday of the month, declared four weeks before, paid two
        weeks after) and the special ones, up to the latest session."""
        latest = self.latest_session()
        lo = dt.date.fromisoformat(str(np.datetime64(start, "D"))) if start is not None else None
        hi = dt.date.fromisoformat(str(np.datetime64(end, "D"))) if end is not None else None
        rows: list[tuple[dt.date, str, float, int]] = []
        if symbol in DEMO_DIVIDENDS:
            cash, first = DEMO_DIVIDENDS[symbol]
            for year in range(DIVIDENDS_FROM, latest.year + 1):
                for q in range(4):
                    d = dt.date(year, first + 3 * q, 1)
                    d += dt.timedelta(days=(3 - d.weekday()) % 7 + 7)  # 2nd Thursday
                    rows.append((d, "CD", cash, 4))
        rows += [(d, "SC", c, 0) for d, c in DEMO_SPECIAL.get(symbol, ())]
        out = []
        for d, kind, cash, freq in rows:
            if d > latest or (lo and d < lo) or (hi and d > hi):
                continue
            rec = {"cash_amount": cash, "currency": "USD",
                   "declaration_date": (d - dt.timedelta(days=28)).isoformat(),
                   "dividend_type": kind, "ex_dividend_date": d.isoformat(), "frequency": freq,
                   "pay_date": (d + dt.timedelta(days=14)).isoformat(),
                   "record_date": (d + dt.timedelta(days=1)).isoformat(), "ticker": symbol}
            out.append(Dividend(symbol, d, kind, cash, d - dt.timedelta(days=28),
                                d + dt.timedelta(days=1), d + dt.timedelta(days=14), freq,
                                "USD", None, tuple(rec.items())))
        return sorted(out, key=lambda x: (x.ex_dividend_date, x.dividend_type))

    def dividends_between(self, start, end, symbols=None) -> dict[str, list[Dividend]]:
        """The universe's (or ``symbols``') dividends going ex in ``start``..``end``."""
        out = {}
        for sym in (symbols if symbols is not None else self.universe):
            d = self.dividends(sym, start, end)
            if d:
                out[sym] = d
        return out
