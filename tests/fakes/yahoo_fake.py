"""A loopback Yahoo Finance chart API (``/v8/finance/chart/{SYMBOL}``).

``YahooFake(bars, splits)`` takes raw truths like ``PolygonFake`` and answers
as Yahoo does: timestamps at the 09:30 New York open, OHLC and volume
**split-adjusted** (for every split it knows, as Yahoo adjusts history) at
float32 precision, ``adjclose`` (the adjusted close, also dividend-adjusted
for ``dividends``: ``(symbol, ex-date, cash)``, each multiplying the closes
before its ex-date by ``1 - cash / raw close before it``, as Yahoo does),
``events.splits`` and ``events.dividends`` within the requested period, ``null`` values for the
sessions in ``null_dates``, and the 404 body for an unknown symbol.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from appliance.core import calendar as tcal
from appliance.core.candles import Bars, Split

from . import FakeServer, Response
from .polygon_fake import _as_bars, _as_split, _d64, _num

NY = "America/New_York"
OPEN_SOD = 9 * 3600 + 1800
NOT_FOUND = {"chart": {"result": None, "error": {
    "code": "Not Found", "description": "No data found, symbol may be delisted"}}}


def _f32(a: np.ndarray) -> list:
    return [None if x != x else x for x in a.astype(np.float32).astype(np.float64).tolist()]


class YahooFake(FakeServer):
    def __init__(self, bars: Mapping | None = None, splits: Iterable = (), *,
                 null_dates: Iterable = (), dividends: Iterable = (), **fault_kw):
        super().__init__(**fault_kw)
        self._data: dict[str, Bars] = {s: _as_bars(s, rows) for s, rows in (bars or {}).items()}
        self._splits: list[Split] = [_as_split(s) for s in splits]
        self.null_dates = np.array([_d64(d) for d in null_dates], dtype="datetime64[D]")
        self._dividends = [(sym, _d64(d), float(c)) for sym, d, c in dividends]

    def route(self, path, query, headers, fault, n):
        parts = path.strip("/").split("/")
        if len(parts) != 4 or parts[:3] != ["v8", "finance", "chart"]:
            return Response(404, {"finance": {"result": None, "error": {
                "code": "Not Found", "description": "HTTP 404 Not Found"}}})
        sym = parts[3]
        b = self._data.get(sym)
        if b is None:
            return Response(404, NOT_FOUND)
        try:
            p1 = int(query.get("period1", 0))
            p2 = int(query.get("period2", 2**31))
        except ValueError:
            return Response(400, {"chart": {"result": None, "error": {
                "code": "Bad Request", "description": "Invalid input - start date cannot be "
                                                     "after end date."}}})
        ts_all = tcal.local_time_epochs(b.session, OPEN_SOD, NY)
        idx = np.nonzero((ts_all >= p1) & (ts_all < p2))[0]
        sess = b.session[idx]
        factor = np.ones(len(idx))
        for s in self._splits:
            if s.symbol == sym:
                factor[sess < _d64(s.execution_date)] *= s.ratio
        null = np.isin(sess, self.null_dates)
        def col(a):
            vals = a[idx] * factor
            vals[null] = np.nan
            return _f32(vals)
        vol = np.round(b.volume[idx] / factor)
        volume = [None if null[i] else int(x) for i, x in enumerate(vol.tolist())]
        close = col(b.close)
        last_close = float(b.close[-1]) if len(b) else None
        meta = {
            "currency": "USD", "symbol": sym, "exchangeName": "NMS",
            "fullExchangeName": "NasdaqGS", "instrumentType": "EQUITY",
            "firstTradeDate": int(ts_all[0]) if len(ts_all) else None,
            "regularMarketTime": int(ts_all[-1]) + 23400 if len(ts_all) else None,
            "hasPrePostMarketData": True, "gmtoffset": -18000, "timezone": "EST",
            "exchangeTimezoneName": NY, "regularMarketPrice": last_close,
            "chartPreviousClose": close[0] if close else None, "priceHint": 2,
            "dataGranularity": "1d", "range": "",
            "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd",
                            "max"],
        }
        result = {"meta": meta}
        if len(idx):
            result["timestamp"] = ts_all[idx].tolist()
            events = {}
            for s in self._splits:
                if s.symbol != sym:
                    continue
                t = int(tcal.local_time_epochs(np.array([_d64(s.execution_date)]), OPEN_SOD, NY)[0])
                if p1 <= t < p2:
                    num, den = _num(s.split_to), _num(s.split_from)
                    events.setdefault("splits", {})[str(t)] = {
                        "date": t, "numerator": num, "denominator": den,
                        "splitRatio": f"{num}:{den}"}
            for dsym, ex, cash in self._dividends:
                t = int(tcal.local_time_epochs(np.array([ex]), OPEN_SOD, NY)[0])
                if dsym == sym and p1 <= t < p2:
                    k = float(np.prod([s.ratio for s in self._splits
                                       if s.symbol == sym and _d64(s.execution_date) > ex]))
                    events.setdefault("dividends", {})[str(t)] = {"amount": cash * k,
                                                                  "date": t}
            if events:
                result["events"] = events
            result["indicators"] = {
                "quote": [{"close": close, "low": col(b.low), "volume": volume,
                           "open": col(b.open), "high": col(b.high)}],
                "adjclose": [{"adjclose": self._adjclose(sym, b, idx, factor, null)}],
            }
        else:
            result["indicators"] = {"quote": [{}], "adjclose": [{}]}
        return Response(200, {"chart": {"result": [result], "error": None}})

    def _adjclose(self, sym, b, idx, factor, null) -> list:
        """The split-adjusted closes times, for every dividend going ex after
        a session, ``1 - cash / raw close before the ex-date``."""
        f = factor.copy()
        for dsym, ex, cash in self._dividends:
            if dsym != sym:
                continue
            i = int(np.searchsorted(b.session, ex)) - 1
            if i >= 0:
                f[b.session[idx] < ex] *= 1.0 - cash / float(b.close[i])
        vals = b.close[idx] * f
        vals[null] = np.nan
        return _f32(vals)
