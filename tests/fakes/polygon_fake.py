"""A loopback Polygon (Massive) server answering in the vendor's shapes.

Data-driven: ``PolygonFake(bars, splits)`` where ``bars`` maps a symbol to a
list of ``(date, o, h, l, c, v, vw, n)`` rows (``vw``/``n`` may be None and are
then left out, as Polygon does) or to a columnar ``Bars``; ``splits`` are
``Split`` objects or ``(symbol, date, split_from, split_to)`` tuples. Bars are
raw; ``adjusted=true`` (Polygon's default) answers split-adjusted values.

Endpoints: aggregates (real ``next_url`` pagination past ``page_size``
results; ``day`` and ``week`` spans from the daily bars, ``minute`` and
``hour`` spans of any multiplier from ``minutes``, see below), grouped daily, splits (paginated past ``splits_page_size``), dividends
(``dividends``: vendor records, see ``dividend_record``; newest ex-date
first, paginated past ``dividends_page_size``, filters ``ticker`` and
``ex_dividend_date.gte/.lte``). The
key is checked (``apiKey`` or ``Authorization: Bearer``; 401 bodies as
Polygon's), dates before ``plan_start`` get Polygon's 403 plan body, and the
faults of ``FakeServer`` can be injected (see ``tests.fakes``).

``make_truth(symbols, start, end, seed)`` builds realistic raw bars on XNYS
sessions with one 4-for-1 split, for tests and benchmarks.

Intraday: ``PolygonFake(bars, splits, minutes=...)`` with ``minutes`` mapping a
symbol to raw ``VendorMinutes`` (``tests.fakes.minute_truth.make_minute_truth``
builds both consistently). Minute and hour bars are aggregated from them the
vendor's way (``tests.fakes.vendor_minutes``); ``from``/``to`` are ET dates
(inclusive) or epoch ms, and a bar is served when its start lies between
them. ``limit`` counts base aggregates (minutes for minute/hour spans, days
for weeks): a page holds whole bars whose base aggregates add up to at most
``limit`` (at least one bar). Each page's JSON is built on its own.
"""  # noqa: E501
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from appliance.core import calendar as tcal
from appliance.core.candles import Bars, Split

from . import FakeServer, Response
from .vendor_minutes import (
    SPAN_MINUTES,
    Buckets,
    VendorMinutes,
    aggregate_minutes,
    parse_instant,
    reduce_groups,
    week_starts,
)

BODY_401_UNKNOWN = "Unknown API Key"
BODY_401_MISSING = "API Key was not provided"
BODY_403_PLAN = ("Your plan doesn't include this data timeframe. Please upgrade your plan at "
                 "https://polygon.io/pricing")
BODY_429 = ("You've exceeded the maximum requests per minute, please wait or upgrade your "
            "subscription to continue. https://polygon.io/pricing")
NY = "America/New_York"


def _d64(x) -> np.datetime64:
    if isinstance(x, dt.datetime):
        x = x.date()
    return np.datetime64(x, "D")


def _num(x: float):
    """Integral floats as ints (``135647456``), others as round-trip floats."""
    f = float(x)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def _as_bars(symbol: str, data) -> Bars:
    if isinstance(data, Bars):
        return data.sorted()
    return Bars.from_rows(symbol, data, "truth")


def _as_split(s) -> Split:
    if isinstance(s, Split):
        return s
    sym, d, fr, to = s
    if isinstance(d, str):
        d = dt.date.fromisoformat(d)
    return Split(sym, d, float(fr), float(to))


@dataclass
class Truth:
    """What the fake serves: ``bars`` symbol -> raw ``Bars``; ``splits``."""

    bars: dict[str, Bars]
    splits: list[Split]

    def __iter__(self):  # ``bars, splits = make_truth(...)``
        return iter((self.bars, self.splits))

    def rows(self, symbol: str) -> list[tuple]:
        b = self.bars[symbol]
        return [(d, o, h, lo, c, v, None if np.isnan(vw) else vw, None if n < 0 else n)
                for d, o, h, lo, c, v, vw, n in zip(
                    b.session.astype(dt.date).tolist(), b.open.tolist(), b.high.tolist(),
                    b.low.tolist(), b.close.tolist(), b.volume.tolist(), b.vwap.tolist(),
                    b.trades.tolist(), strict=False)]

    @property
    def n_candles(self) -> int:
        return sum(len(b) for b in self.bars.values())


def make_truth(symbols: Iterable[str], start, end, seed: int = 7, *,
               split_symbol: str | None = None, split_date=None, split_to: float = 4.0,
               calendar: str = "XNYS") -> Truth:
    """Realistic raw daily bars on the calendar's sessions in ``start``..``end``.

    Prices have 4 decimals (like Polygon), volumes are integers, ``vw`` lies
    within the bar and ``n`` is a trade count. ``split_symbol`` (default: the
    first symbol) gets a ``split_to``-for-1 split on ``split_date`` (default:
    the middle session): raw prices drop by the ratio that session."""
    symbols = list(symbols)
    sess = tcal.sessions(calendar, start, end)
    n = len(sess)
    out: dict[str, Bars] = {}
    splits: list[Split] = []
    if symbols and n:
        split_symbol = split_symbol or symbols[0]
        if split_date is None:
            split_date = sess[n // 2].astype(dt.date)
        split_date = _d64(split_date).astype(dt.date)
        splits.append(Split(split_symbol, split_date, 1.0, float(split_to)))
    for sym in symbols:
        rng = np.random.default_rng([seed, zlib.crc32(sym.encode())])
        sigma = rng.uniform(0.01, 0.025)
        p0 = float(np.exp(rng.uniform(np.log(10), np.log(300))))
        ret = rng.standard_normal(n) * sigma + rng.uniform(-0.0002, 0.0006)
        close = p0 * np.exp(np.cumsum(ret))
        prev = np.concatenate([[p0], close[:-1]])
        opn = prev * np.exp(rng.standard_normal(n) * sigma * 0.3)
        wick = np.abs(rng.standard_normal((2, n))) * sigma * 0.5
        high = np.maximum(opn, close) * np.exp(wick[0])
        low = np.minimum(opn, close) * np.exp(-wick[1])
        vol = np.exp(rng.normal(np.log(rng.uniform(5e5, 5e7)), 0.4, n))
        factor = np.ones(n)
        for s in splits:
            if s.symbol == sym:
                factor[sess < _d64(s.execution_date)] *= s.split_to / s.split_from
        o = np.round(opn * factor, 4)
        c = np.round(close * factor, 4)
        h = np.maximum(np.round(high * factor, 4), np.maximum(o, c))
        lo = np.minimum(np.round(low * factor, 4), np.minimum(o, c))
        v = np.round(vol / factor)
        w = rng.uniform(0.3, 0.7, n)
        vw = np.round(lo + (h - lo) * w, 4)
        trades = np.maximum(1, v // rng.integers(50, 400, n)).astype(np.int64)
        out[sym] = Bars(sym, sess.copy(), o, h, lo, c, v, vw, trades, "truth")
    return Truth(out, splits)


_ROW = '{"v":%r,"vw":%r,"o":%r,"c":%r,"h":%r,"l":%r,"t":%r,"n":%r}'


def _rows_json(b: Buckets) -> str:
    """The ``results`` rows as ``json.dumps`` would write them, built fast."""
    v = [_num(x) for x in b.v.tolist()]
    cols = (b.vw.tolist(), b.o.tolist(), b.c.tolist(), b.h.tolist(), b.l.tolist(),
            b.t.tolist(), b.n.tolist())
    if not np.isnan(b.vw).any() and bool((b.n >= 0).all()):
        return ",".join([_ROW % r for r in zip(v, *cols, strict=False)])
    out = []
    for v_i, vw, o, c, h, lo, t, n in zip(v, *cols, strict=False):
        r = {"v": v_i}
        if vw == vw:
            r["vw"] = vw
        r.update({"o": o, "c": c, "h": h, "l": lo, "t": t})
        if n >= 0:
            r["n"] = n
        out.append(json.dumps(r, separators=(",", ":")))
    return ",".join(out)


def aggs_body(ticker: str, adjusted: bool, b: Buckets, status: str, rid: str,
              next_url: str | None) -> str:
    """An aggregates answer, byte for byte as the daily path's ``json.dumps``."""
    k = len(b)
    sep = (",", ":")
    head = json.dumps({"ticker": ticker, "queryCount": k, "resultsCount": k,
                       "adjusted": adjusted}, separators=sep)[:-1]
    tail = {"status": status, "request_id": rid, "count": k}
    if next_url:
        tail["next_url"] = next_url
    results = ',"results":[' + _rows_json(b) + "]" if k else ""
    return head + results + "," + json.dumps(tail, separators=sep)[1:]


def _minute_buckets(mb: VendorMinutes | None, size: int, lo: int, hi: int
                    ) -> tuple[Buckets, np.ndarray]:
    """``size``-minute bars starting in ``lo``..``hi`` and their minutes' ``t``."""
    if mb is None or len(mb) == 0:
        return reduce_groups(np.empty(0, np.int64), *([None] * 7)), np.empty(0, np.int64)
    a = int(np.searchsorted(mb.t, lo, side="left"))
    z = int(np.searchsorted(mb.t, hi + size * 60_000, side="left"))
    sub = mb.take(slice(a, z))
    bk = aggregate_minutes(sub, size)
    keep = slice(int(np.searchsorted(bk.t, lo, side="left")),
                 int(np.searchsorted(bk.t, hi, side="right")))
    return bk.take(keep), sub.t


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def _unb64(s: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))


class PolygonFake(FakeServer):
    """See the module docstring. ``requests`` counts per path; ``log`` lists
    ``(path, query, status, fault)``."""

    def __init__(self, bars: Mapping | None = None, splits: Iterable = (), *,
                 api_key: str | None = "test-key", page_size: int = 50000,
                 splits_page_size: int = 1000, plan_start=None, status: str = "OK",
                 requests_per_minute: float | None = None, clock=time.monotonic,
                 minutes: Mapping | None = None, dividends: Iterable = (),
                 dividends_page_size: int = 1000, identities: Mapping | None = None,
                 inactive: Iterable = (), **fault_kw):
        super().__init__(**fault_kw)
        self.api_key = api_key
        self.page_size = int(page_size)
        self.splits_page_size = int(splits_page_size)
        self.plan_start = _d64(plan_start) if plan_start is not None else None
        self.status = status
        self.requests_per_minute = requests_per_minute
        self.clock = clock
        self._times: list[float] = []
        self.rate_limited = 0
        self._data: dict[str, Bars] = {}
        self._t_ms: dict[str, np.ndarray] = {}
        self._splits: list[Split] = [_as_split(s) for s in splits]
        self._dividends: list[dict] = [dict(d) for d in dividends]
        self.dividends_page_size = int(dividends_page_size)
        # ticker -> {"name", "composite_figi", "cik", "events": [(date, ticker)]}: the
        # security the ticker names now; inactive listings: {"ticker", "name",
        # "composite_figi", "delisted_utc"}
        self._identities = dict(identities or {})
        self._inactive = [dict(r) for r in inactive]
        self._dlock = threading.Lock()
        for sym, rows in (bars or {}).items():
            self.set_bars(sym, rows)
        # symbol -> VendorMinutes; a caller's Mapping (possibly regenerating) is kept as is
        self._minutes: Mapping[str, VendorMinutes] = minutes if minutes is not None else {}

    # -- data ---------------------------------------------------------------------
    def set_bars(self, symbol: str, rows) -> None:
        """Replace a symbol's bars (e.g. to simulate a vendor revision)."""
        b = _as_bars(symbol, rows)
        t = tcal.local_time_epochs(b.session, 0, NY) * 1000
        with self._dlock:
            self._data[symbol] = b
            self._t_ms[symbol] = t

    def set_minutes(self, symbol: str, minutes: VendorMinutes) -> None:
        """Replace a symbol's raw minute bars."""
        with self._dlock:
            if not isinstance(self._minutes, dict):
                self._minutes = dict(self._minutes)
            self._minutes[symbol] = minutes

    def set_dividends(self, records: Iterable[dict]) -> None:
        """Replace every dividend record (e.g. to simulate a vendor revision)."""
        with self._dlock:
            self._dividends = [dict(d) for d in records]

    def add_split(self, split) -> None:
        with self._dlock:
            self._splits.append(_as_split(split))

    def _factor(self, symbol: str, sess: np.ndarray) -> np.ndarray:
        f = np.ones(len(sess))
        for s in self._splits:
            if s.symbol == symbol:
                f[sess < _d64(s.execution_date)] *= s.ratio
        return f

    # -- responses ------------------------------------------------------------------------
    def fault_response(self, kind, n):
        rid = self.request_id(n)
        if kind == "429":
            return Response(429, {"status": "ERROR", "request_id": rid, "error": BODY_429})
        if kind == "500":
            return Response(500, {"status": "ERROR", "request_id": rid,
                                  "error": "Internal Server Error"})
        if kind == "502":
            return Response(502, "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n"
                                 "<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
                                 "</body>\r\n</html>\r\n", {"Content-Type": "text/html"})
        if kind == "503":
            return Response(503, "upstream connect error or disconnect/reset before headers. "
                                 "reset reason: connection failure",
                            {"Content-Type": "text/plain"})
        return None

    def _auth(self, query: dict, headers, rid: str) -> Response | None:
        if self.api_key is None:
            return None
        key = query.get("apiKey")
        auth = headers.get("Authorization") or ""
        if key is None and auth.startswith("Bearer "):
            key = auth[len("Bearer "):]
        if not key:
            return Response(401, {"status": "ERROR", "request_id": rid, "error": BODY_401_MISSING})
        if key != self.api_key:
            return Response(401, {"status": "ERROR", "request_id": rid, "error": BODY_401_UNKNOWN})
        return None

    def _rate_limit(self, rid: str) -> Response | None:
        if not self.requests_per_minute:
            return None
        now = self.clock()
        with self._lock:
            self._times = [t for t in self._times if now - t < 60.0]
            if len(self._times) >= self.requests_per_minute:
                self.rate_limited += 1
                return Response(429, {"status": "ERROR", "request_id": rid, "error": BODY_429})
            self._times.append(now)
        return None

    def _forbidden(self, rid: str) -> Response:
        return Response(403, {"status": "NOT_AUTHORIZED", "request_id": rid, "message": BODY_403_PLAN})

    def route(self, path, query, headers, fault, n):
        rid = self.request_id(n)
        resp = self._auth(query, headers, rid) or self._rate_limit(rid)
        if resp is not None:
            return resp
        parts = path.strip("/").split("/")
        if len(parts) == 9 and parts[:2] == ["v2", "aggs"] and parts[2] == "ticker" \
                and parts[4] == "range":
            return self._aggs(parts[3], parts[5], parts[6], parts[7], parts[8], query, fault, rid)
        if len(parts) == 8 and parts[:7] == ["v2", "aggs", "grouped", "locale", "us", "market",
                                             "stocks"]:
            return self._grouped(parts[7], query, rid)
        if path.rstrip("/") == "/v3/reference/splits":
            return self._splits_page(query, rid)
        if path.rstrip("/") == "/v3/reference/dividends":
            return self._dividends_page(query, rid)
        if len(parts) == 4 and parts[:3] == ["v3", "reference", "tickers"]:
            return self._ticker(parts[3], rid)
        if len(parts) == 5 and parts[:3] == ["vX", "reference", "tickers"] \
                and parts[4] == "events":
            return self._events(parts[3], query, rid)
        if path.rstrip("/") == "/v3/reference/tickers":
            return self._tickers(query, rid)
        return Response(404, {"status": "NOT_FOUND", "request_id": rid,
                              "message": "Not found: " + path})

    def _ticker(self, ticker: str, rid: str) -> Response:
        """``/v3/reference/tickers/{ticker}``: the tickers it has bars for are
        known; any other is answered as the vendor answers an unknown one."""
        with self._dlock:
            known = ticker in self._data
        if not known:
            return Response(404, {"status": "NOT_FOUND", "request_id": rid,
                                  "message": "Ticker not found."})
        return Response(200, {"results": {"ticker": ticker, "name": ticker, "market": "stocks",
                                          "locale": "us", "active": True,
                                          "currency_name": "usd"},
                              "status": "OK", "request_id": rid})

    @staticmethod
    def _parse_when(s: str) -> np.datetime64:
        if s.isdigit():  # a millisecond timestamp (as in next_url)
            return tcal.local_dates(np.array([int(s) // 1000]), NY)[0]
        return np.datetime64(dt.date.fromisoformat(s), "D")

    def _aggs(self, ticker, mult, span, frm, to, query, fault, rid):
        try:
            lo, hi = self._parse_when(frm), self._parse_when(to)
        except ValueError:
            return Response(400, {"status": "ERROR", "request_id": rid,
                                  "error": "Could not parse the time parameter: 'from'."})
        if span in SPAN_MINUTES or span == "week":
            return self._bucketed(ticker, mult, span, frm, to, query, fault, rid)
        if mult != "1" or span != "day":
            return Response(400, {"status": "ERROR", "request_id": rid,
                                  "error": "this fake serves 1/day, 1/week and "
                                           "N/minute, N/hour aggregates"})
        opts, adjusted, limit = self._opts(query)
        if self.plan_start is not None and lo < self.plan_start:
            return self._forbidden(rid)
        with self._dlock:
            b = self._data.get(ticker)
            t_all = self._t_ms.get(ticker)
        head = {"ticker": ticker}
        results = []
        next_url = None
        if b is not None and len(b):
            a = int(np.searchsorted(b.session, lo, side="left"))
            z = int(np.searchsorted(b.session, hi, side="right"))
            if opts["sort"] == "desc":
                idx = np.arange(z - 1, a - 1, -1)
            else:
                idx = np.arange(a, z)
            if fault == "empty_page" and len(idx):
                page, rest = idx[:0], idx
            else:
                page, rest = idx[:limit], idx[limit:]
            if len(rest):
                nxt = int(t_all[rest[0]])
                if opts["sort"] == "desc":
                    frm2, to2 = frm, str(nxt)
                else:
                    frm2, to2 = str(nxt), to
                cursor = _b64({"adjusted": "true" if adjusted else "false", "sort": opts["sort"],
                               "limit": str(opts["limit"])})
                next_url = (f"{self.base_url}/v2/aggs/ticker/{ticker}/range/1/day/{frm2}/{to2}"
                            f"?cursor={cursor}")
            if len(page):
                f = self._factor(ticker, b.session[page]) if adjusted else np.ones(len(page))
                results = self._results(b, t_all, page, f)
        body = {**head, "queryCount": len(results), "resultsCount": len(results),
                "adjusted": adjusted}
        if results:
            body["results"] = results
        body.update({"status": self.status, "request_id": rid, "count": len(results)})
        if next_url:
            body["next_url"] = next_url
        return Response(200, body)

    def _opts(self, query: dict) -> tuple[dict, bool, int]:
        """The request's options (a ``cursor`` carries the first page's), whether
        to adjust, and the page's limit."""
        opts = {"adjusted": query.get("adjusted", "true"), "sort": query.get("sort", "asc"),
                "limit": query.get("limit", "5000")}
        if "cursor" in query:
            opts.update(_unb64(query["cursor"]))
        adjusted = str(opts["adjusted"]).lower() != "false"
        limit = max(1, min(int(opts["limit"]), 50000, self.page_size))
        return opts, adjusted, limit

    def _bucketed(self, ticker, mult, span, frm, to, query, fault, rid):
        """Minute/hour bars from the minutes, week bars from the daily bars."""
        try:
            lo, hi = parse_instant(frm, end=False), parse_instant(to, end=True)
        except ValueError:
            return Response(400, {"status": "ERROR", "request_id": rid,
                                  "error": "Could not parse the time parameter: 'from'."})
        size = int(mult) * SPAN_MINUTES.get(span, 0) if mult.isdigit() else 0
        if (span == "week" and mult != "1") or (span != "week" and not 1 <= size <= 1440):
            return Response(400, {"status": "ERROR", "request_id": rid,
                                  "error": f"this fake does not serve {mult}/{span} aggregates"})
        opts, adjusted, limit = self._opts(query)
        if self.plan_start is not None and \
                tcal.local_dates(np.array([lo // 1000]), NY)[0] < self.plan_start:
            return self._forbidden(rid)
        if span == "week":
            bk, base_t = self._weeks(ticker, lo, hi, adjusted)
        else:
            with self._dlock:
                store = self._minutes
            mb = store.get(ticker)  # outside the lock: a mapping may generate
            bk, base_t = _minute_buckets(mb, size, lo, hi)
        desc = opts["sort"] == "desc"
        order = np.arange(len(bk))[::-1] if desc else np.arange(len(bk))
        if fault == "empty_page" and len(order):
            page, rest = order[:0], order
        else:
            k = max(1, int(np.searchsorted(np.cumsum(bk.base[order]), limit, side="right")))
            page, rest = order[:k], order[k:]
        next_url = None
        if len(rest):
            j = int(rest[0])
            if desc:  # up to the next bar's last base aggregate
                frm2, to2 = frm, str(int(base_t[bk.first[j] + bk.base[j] - 1]))
            else:
                frm2, to2 = str(int(bk.t[j])), to
            cursor = _b64({"adjusted": "true" if adjusted else "false", "sort": opts["sort"],
                           "limit": str(opts["limit"])})
            next_url = (f"{self.base_url}/v2/aggs/ticker/{ticker}/range/{mult}/{span}/{frm2}/{to2}"
                        f"?cursor={cursor}")
        pb = bk.take(page)
        if adjusted and span != "week" and len(pb):
            pb = pb.scaled(self._factor(ticker, tcal.local_dates(pb.t // 1000, NY)))
        return Response(200, aggs_body(ticker, adjusted, pb, self.status, rid, next_url))

    def _weeks(self, ticker, lo, hi, adjusted) -> tuple[Buckets, np.ndarray]:
        """Weekly bars (Sunday 00:00 ET) of the sessions in ``lo``..``hi``,
        split-adjusted day by day first when ``adjusted``."""
        with self._dlock:
            b = self._data.get(ticker)
            t_all = self._t_ms.get(ticker)
        if b is None:
            return reduce_groups(np.empty(0, np.int64), *([None] * 7)), np.empty(0, np.int64)
        d = tcal.local_dates(np.array([lo // 1000, hi // 1000]), NY)
        idx = np.arange(int(np.searchsorted(b.session, d[0], side="left")),
                        int(np.searchsorted(b.session, d[1], side="right")))
        f = self._factor(ticker, b.session[idx]) if adjusted else np.ones(len(idx))
        bk = reduce_groups(week_starts(b.session[idx]), b.open[idx] * f, b.high[idx] * f,
                           b.low[idx] * f, b.close[idx] * f, b.volume[idx] / f,
                           b.vwap[idx] * f, b.trades[idx])
        if len(bk):
            bk.n[np.minimum.reduceat(b.trades[idx], bk.first) < 0] = -1
        return bk, t_all[idx]

    @staticmethod
    def _results(b: Bars, t_all, idx, factor, symbol: str | None = None,
                 t_override: np.ndarray | None = None) -> list[dict]:
        o = (b.open[idx] * factor).tolist()
        h = (b.high[idx] * factor).tolist()
        lo = (b.low[idx] * factor).tolist()
        c = (b.close[idx] * factor).tolist()
        vw = (b.vwap[idx] * factor).tolist()
        v = (b.volume[idx] / factor).tolist()
        n = b.trades[idx].tolist()
        t = (t_all[idx] if t_override is None else t_override).tolist()
        out = []
        for i in range(len(o)):
            r = {"T": symbol} if symbol else {}
            r["v"] = _num(v[i])
            if vw[i] == vw[i]:  # not NaN
                r["vw"] = vw[i]
            r["o"], r["c"], r["h"], r["l"], r["t"] = o[i], c[i], h[i], lo[i], t[i]
            if n[i] >= 0:
                r["n"] = n[i]
            out.append(r)
        return out

    def _grouped(self, date_s, query, rid):
        try:
            day = np.datetime64(dt.date.fromisoformat(date_s), "D")
        except ValueError:
            return Response(400, {"status": "ERROR", "request_id": rid,
                                  "error": "Could not parse the date parameter."})
        if self.plan_start is not None and day < self.plan_start:
            return self._forbidden(rid)
        adjusted = query.get("adjusted", "true").lower() != "false"
        t_close = tcal.local_time_epochs(np.array([day]), 16 * 3600, NY) * 1000
        results = []
        with self._dlock:
            items = list(self._data.items())
            t_map = dict(self._t_ms)
        for sym, b in items:
            i = int(np.searchsorted(b.session, day))
            if i < len(b) and b.session[i] == day:
                idx = np.array([i])
                f = self._factor(sym, b.session[idx]) if adjusted else np.ones(1)
                results.extend(self._results(b, t_map[sym], idx, f, symbol=sym,
                                             t_override=t_close))
        body = {"queryCount": len(results), "resultsCount": len(results), "adjusted": adjusted}
        if results:
            body["results"] = results
        body.update({"status": self.status, "request_id": rid, "count": len(results)})
        return Response(200, body)

    def _splits_page(self, query, rid):
        if "cursor" in query:
            q = _unb64(query["cursor"])
        else:
            q = {k: query[k] for k in ("ticker", "execution_date.gte", "execution_date.lte",
                                       "limit", "order") if k in query}
            q["offset"] = 0
        with self._dlock:
            rows = list(self._splits)
        if q.get("ticker"):
            rows = [s for s in rows if s.symbol == q["ticker"]]
        if q.get("execution_date.gte"):
            g = dt.date.fromisoformat(q["execution_date.gte"])
            rows = [s for s in rows if s.execution_date >= g]
        if q.get("execution_date.lte"):
            le = dt.date.fromisoformat(q["execution_date.lte"])
            rows = [s for s in rows if s.execution_date <= le]
        rows.sort(key=lambda s: s.execution_date, reverse=q.get("order", "desc") != "asc")
        limit = max(1, min(int(q.get("limit", 10)), 1000, self.splits_page_size))
        off = int(q.get("offset", 0))
        page = rows[off:off + limit]
        results = []
        for s in page:
            sid = hashlib.sha256(f"{s.symbol}{s.execution_date}{s.split_from}{s.split_to}{off}"
                                 .encode()).hexdigest()
            results.append({"execution_date": s.execution_date.isoformat(), "id": "E" + sid,
                            "split_from": _num(s.split_from), "split_to": _num(s.split_to),
                            "ticker": s.symbol})
        body = {"results": results, "status": "OK", "request_id": rid}
        if off + limit < len(rows):
            q2 = dict(q, offset=off + limit)
            body["next_url"] = f"{self.base_url}/v3/reference/splits?cursor={_b64(q2)}"
        return Response(200, body)

    def _events(self, ticker: str, query, rid) -> Response:
        """``/vX/reference/tickers/{ticker}/events``: the vendor's shape (events
        newest first); an unknown ticker is a 404 as the vendor answers it."""
        ident = self._identities.get(ticker)
        if ident is None:
            return Response(404, {"status": "NOT_FOUND", "request_id": rid,
                                  "message": "Ticker not found."})
        events = [{"ticker_change": {"ticker": t}, "type": "ticker_change",
                   "date": d.isoformat() if isinstance(d, dt.date) else d}
                  for d, t in sorted(ident["events"], key=lambda e: str(e[0]), reverse=True)]
        return Response(200, {"results": {"name": ident.get("name", ticker),
                                          "composite_figi": ident.get("composite_figi"),
                                          "cik": ident.get("cik"), "events": events},
                              "status": "OK", "request_id": rid})

    def _tickers(self, query, rid) -> Response:
        """``/v3/reference/tickers?ticker=&active=false``: inactive listings."""
        rows = [r for r in self._inactive
                if r.get("ticker") == query.get("ticker")
                and query.get("active", "true").lower() == "false"]
        results = [{"active": False, "cik": r.get("cik"), "composite_figi": r.get("composite_figi"),
                    "currency_name": "usd", "delisted_utc": r["delisted_utc"],
                    "locale": "us", "market": "stocks", "name": r.get("name", r["ticker"]),
                    "ticker": r["ticker"], "type": "CS"} for r in rows]
        return Response(200, {"results": results, "status": "OK", "request_id": rid,
                              "count": len(results)})

    def _dividends_page(self, query, rid):
        if "cursor" in query:
            q = _unb64(query["cursor"])
        else:
            q = {k: query[k] for k in ("ticker", "ex_dividend_date.gte", "ex_dividend_date.lte",
                                       "limit", "order") if k in query}
            q["offset"] = 0
        with self._dlock:
            rows = list(self._dividends)
        if q.get("ticker"):
            rows = [r for r in rows if r.get("ticker") == q["ticker"]]
        if q.get("ex_dividend_date.gte"):
            rows = [r for r in rows if r.get("ex_dividend_date", "") >= q["ex_dividend_date.gte"]]
        if q.get("ex_dividend_date.lte"):
            rows = [r for r in rows if r.get("ex_dividend_date", "") <= q["ex_dividend_date.lte"]]
        rows.sort(key=lambda r: r.get("ex_dividend_date", ""),
                  reverse=q.get("order", "desc") != "asc")
        limit = max(1, min(int(q.get("limit", 10)), 1000, self.dividends_page_size))
        off = int(q.get("offset", 0))
        body = {"results": rows[off:off + limit], "status": "OK", "request_id": rid}
        if off + limit < len(rows):
            q2 = dict(q, offset=off + limit)
            body["next_url"] = f"{self.base_url}/v3/reference/dividends?cursor={_b64(q2)}"
        return Response(200, body)


def dividend_record(ticker: str, ex_date, cash, dividend_type: str = "CD", *,
                    frequency: int = 4, currency: str = "USD", **fields) -> dict:
    """One ``/v3/reference/dividends`` result as the vendor sends it (keys in
    its alphabetical order; ``cash=None`` leaves ``cash_amount`` out, as a
    broken record would). ``fields`` override or add keys."""
    ex = ex_date if isinstance(ex_date, dt.date) else dt.date.fromisoformat(ex_date)
    rec = {"cash_amount": cash, "currency": currency,
           "declaration_date": (ex - dt.timedelta(days=30)).isoformat(),
           "dividend_type": dividend_type, "ex_dividend_date": ex.isoformat(),
           "frequency": frequency,
           "id": "E" + hashlib.sha256(f"{ticker}{ex}{dividend_type}{cash}".encode()).hexdigest(),
           "pay_date": (ex + dt.timedelta(days=14)).isoformat(),
           "record_date": (ex + dt.timedelta(days=1)).isoformat(), "ticker": ticker}
    if cash is None:
        del rec["cash_amount"]
    rec.update(fields)
    return dict(sorted(rec.items()))
