"""Yahoo Finance chart API (keyless, unofficial): the monthly cross-check source.

``/v8/finance/chart/{SYMBOL}?period1=&period2=&interval=1d&events=div,splits``.
Timestamps are Unix seconds of the session open (09:30 America/New_York) and
are converted to New York dates. Rows with a null price are skipped.

Yahoo's OHLC **are split-adjusted** (``adjclose`` is also dividend-adjusted):
``daily_bars`` returns them as Yahoo publishes them and the provider carries
``split_adjusted = True``, so a comparison with raw prices must first adjust
the raw side by the stored splits or un-adjust this one.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np

from appliance.core.calendar import US_VENDOR_TZ, local_dates, local_midnight_epoch
from appliance.core.candles import Bars, Split
from appliance.core.errors import ProviderDataError, ProviderError
from appliance.providers.http import HttpClient, client_for

NY = US_VENDOR_TZ


@dataclass
class YahooChart:
    bars: Bars  # split-adjusted OHLC, volume as published
    splits: list[Split]
    adjclose: np.ndarray  # float64, aligned with bars (NaN when absent)


def _date(d) -> dt.date:
    if isinstance(d, dt.datetime):
        return d.date()
    if isinstance(d, np.datetime64):
        return d.astype("datetime64[D]").astype(dt.date)
    return d


class YahooProvider:
    name = "yahoo"
    label = "Yahoo Finance (split-adjusted)"
    supports_grouped = False
    split_adjusted = True

    def __init__(self, settings: Mapping, *, stats=None, client: HttpClient | None = None,
                 limiter=None):
        """``settings``: the ``provider.yahoo`` config section, defaults included
        (``providers.settings``). ``client`` replaces the one it describes."""
        self.base_url = settings["base_url"].rstrip("/")
        self.client = client or client_for("yahoo", settings, stats=stats, limiter=limiter)

    @property
    def stats(self):
        return self.client.stats

    def chart(self, symbol: str, start=None, end=None) -> YahooChart:
        """One chart request: bars (``start``..``end`` inclusive), splits and adjclose."""
        start = _date(start) if start is not None else dt.date(1970, 1, 2)
        end = _date(end) if end is not None else dt.date.today()
        url = f"{self.base_url}/v8/finance/chart/{quote(symbol, safe='.^=-')}"
        params = {"period1": max(0, local_midnight_epoch(start, NY)),
                  "period2": local_midnight_epoch(end + dt.timedelta(days=1), NY),
                  "interval": "1d", "events": "div,splits"}
        _, data = self.client.get_json(url, params=params)
        shown = self.client.display_url(url, params)
        try:
            chart = data["chart"]
            if chart.get("error"):
                e = chart["error"]
                raise ProviderError(f"yahoo: {symbol}: {e.get('description') or e.get('code')}",
                                    url=shown, permanent=True)
            results = chart.get("result") or []
        except (TypeError, KeyError, AttributeError):
            raise ProviderDataError(f"yahoo: unexpected chart response from {shown}",
                                    url=shown) from None
        if not results:
            return YahooChart(Bars.empty(symbol, "yahoo"), [], np.empty(0))
        r = results[0]
        splits = self._splits(symbol, (r.get("events") or {}).get("splits") or {})
        ts = r.get("timestamp") or []
        if not ts:
            return YahooChart(Bars.empty(symbol, "yahoo"), splits, np.empty(0))
        try:
            q = (r.get("indicators") or {}).get("quote") or [{}]
            q = q[0] or {}
            adj = ((r.get("indicators") or {}).get("adjclose") or [{}])[0] or {}
            n = len(ts)

            def col(values):
                values = values or [None] * n
                if len(values) != n:
                    raise ValueError("column length differs from timestamps")
                return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

            o, h, lo, c, v = (col(q.get(k)) for k in ("open", "high", "low", "close", "volume"))
            ac = col(adj.get("adjclose"))
            t = np.array(ts, dtype=np.int64)
        except (TypeError, ValueError, AttributeError) as e:
            raise ProviderDataError(f"yahoo: malformed chart from {shown}: {e}", url=shown) from None
        session = local_dates(t, NY)
        keep = ~(np.isnan(o) | np.isnan(h) | np.isnan(lo) | np.isnan(c))
        keep &= (session >= np.datetime64(start, "D")) & (session <= np.datetime64(end, "D"))
        idx = np.nonzero(keep)[0]
        sel = idx[np.argsort(session[idx], kind="stable")]
        last = np.ones(len(sel), dtype=bool)  # a repeated session keeps its last row
        last[:-1] = session[sel][1:] != session[sel][:-1]
        sel = sel[last]
        bars = Bars(symbol, session[sel], o[sel], h[sel], lo[sel], c[sel], v[sel],
                    np.full(len(sel), np.nan), np.full(len(sel), -1, dtype=np.int64), "yahoo")
        adjc = ac[sel]
        return YahooChart(bars, splits, adjc)

    @staticmethod
    def _splits(symbol: str, events: dict) -> list[Split]:
        out = set()
        for ev in events.values():
            try:
                d = local_dates(np.array([int(ev["date"])]), NY)[0].astype(dt.date)
                num, den = float(ev["numerator"]), float(ev["denominator"])
            except (KeyError, TypeError, ValueError):
                continue
            if num > 0 and den > 0:
                out.add(Split(symbol, d, den, num))
        return sorted(out, key=lambda s: s.execution_date)

    def daily_bars(self, symbol: str, start, end) -> Bars:
        """Yahoo's **split-adjusted** daily bars, ``start``..``end`` inclusive."""
        return self.chart(symbol, start, end).bars

    def adjusted_close(self, symbol: str, start, end) -> tuple[np.ndarray, np.ndarray]:
        """(sessions, adjclose): split- and dividend-adjusted closes."""
        c = self.chart(symbol, start, end)
        return c.bars.session, c.adjclose

    def splits(self, symbol: str, start=None, end=None) -> list[Split]:
        return self.chart(symbol, start, end).splits

    def grouped_daily(self, session) -> dict[str, Bars]:
        raise NotImplementedError("yahoo has no grouped daily endpoint")
