"""Polygon.io (also served as api.massive.com): the primary source.

* Aggregates ``/v2/aggs/ticker/{T}/range/1/day/{from}/{to}`` with
  ``adjusted=false`` (raw prices: the appliance applies splits itself),
  ``sort=asc``, ``limit=50000``, following ``next_url`` until absent.
* Grouped daily ``/v2/aggs/grouped/locale/us/market/stocks/{date}``: every
  symbol of one session in one request.
* Splits ``/v3/reference/splits`` (paginated, duplicates removed).
* Dividends ``/v3/reference/dividends`` (paginated; exact repeats removed,
  every field kept as sent: the store merges and judges them).

``t`` is the Unix millisecond start of the bar (00:00 America/New_York for a
daily bar). Dates are always taken in America/New_York: a timestamp late in
the New York evening is already the next day in UTC.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from urllib.parse import quote

import numpy as np

from appliance.core.calendar import US_VENDOR_TZ, local_dates
from appliance.core.candles import DIVIDEND_TYPES, Bars, Dividend, MinuteBars, Split, iso_date
from appliance.core.errors import ProviderAuthError, ProviderDataError, ProviderError
from appliance.providers.base import require_api_key
from appliance.providers.http import HttpClient, client_for, redact_text

DATA_STATUSES = ("OK", "DELAYED")
MAX_PAGES = 10_000




def _as_date(d) -> dt.date:
    return dt.date.fromisoformat(iso_date(d))


def _columns(results: list, where: str) -> tuple:
    """(t_ms, o, h, l, c, v, vw, n) arrays from Polygon result objects."""
    nan = float("nan")
    try:
        t = np.array([r["t"] for r in results], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise ProviderDataError(f"polygon: result without a usable timestamp 't' in {where}: {e}",
                                url=where or None) from None

    def col(key: str) -> np.ndarray:
        return np.array([nan if (v := r.get(key)) is None else v for r in results],
                        dtype=np.float64)

    try:
        cols = (col("o"), col("h"), col("l"), col("c"), col("v"), col("vw"))
        n = np.array([-1 if (x := r.get("n")) is None else x for r in results], dtype=np.int64)
    except (TypeError, ValueError, AttributeError) as e:
        raise ProviderDataError(f"polygon: non-numeric value in {where}: {e}",
                                url=where or None) from None
    return (t, *cols, n)


def bars_from_results(symbol: str, results: list, source: str = "polygon",
                      where: str = "") -> Bars:
    """Bars from Polygon result objects (``o h l c v t`` expected, ``vw n``
    optional: NaN / -1). A result without ``t`` cannot be placed:
    ProviderDataError. A missing price stays NaN for validation to flag."""
    if not results:
        return Bars.empty(symbol, source)
    t, o, h, lo, c, v, vw, n = _columns(results, where)
    session = local_dates(t // 1000, US_VENDOR_TZ)
    return Bars(symbol, session, o, h, lo, c, v, vw, n, source).sorted()


def minute_bars_from_results(symbol: str, results: list, source: str = "polygon",
                             where: str = "") -> MinuteBars:
    """MinuteBars from Polygon result objects (``t`` is the bar's start in ms)."""
    if not results:
        return MinuteBars.empty(symbol, source)
    t, o, h, lo, c, v, vw, n = _columns(results, where)
    return MinuteBars(symbol, t // 1000, o, h, lo, c, v, vw, n, source).sorted()


class PolygonProvider:
    name = "polygon"
    label = "Polygon"
    supports_grouped = True
    supports_minutes = True
    split_adjusted = False

    def __init__(self, settings: Mapping, *, stats=None, client: HttpClient | None = None,
                 limiter=None):
        """``settings``: the ``provider.polygon`` config section, defaults included
        (``providers.settings``). ``client`` replaces the one it describes."""
        api_key = require_api_key("polygon", settings["api_key"])
        auth = settings["auth"]
        if auth not in ("query", "header"):
            raise ProviderError(f"provider.polygon.auth must be 'query' or 'header', not {auth!r}",
                                permanent=True)
        self.api_key = api_key
        self.base_url = settings["base_url"].rstrip("/")
        self.auth = auth
        self.client = client or client_for("polygon", settings, stats=stats, limiter=limiter)

    @property
    def stats(self):
        return self.client.stats

    def __repr__(self) -> str:  # never shows the key
        return f"PolygonProvider(base_url={self.base_url!r}, auth={self.auth!r})"

    # -- requests ----------------------------------------------------------------
    def _get(self, url: str, params: Mapping | None = None) -> dict:
        params = dict(params or {})
        headers = {}
        if self.auth == "query":
            params["apiKey"] = self.api_key
        else:
            headers["Authorization"] = f"Bearer {self.api_key}"
        _, data = self.client.get_json(url, params=params, headers=headers,
                                       redact=(self.api_key,))
        shown = redact_text(url, (self.api_key,))
        if not isinstance(data, dict):
            raise ProviderDataError(f"polygon: expected a JSON object from {shown}, got "
                                    f"{type(data).__name__}", url=shown)
        status = data.get("status")
        if status is not None and status not in DATA_STATUSES:
            msg = data.get("error") or data.get("message") or ""
            raise ProviderDataError(f"polygon: status {status!r} from {shown}: {msg}", url=shown)
        return data

    def _pages(self, url: str, params: Mapping) -> Iterator[dict]:
        """The first page, then each ``next_url`` (the key re-added by ``_get``)."""
        data = self._get(url, params)
        yield data
        pages = 1
        while data.get("next_url"):
            pages += 1
            if pages > MAX_PAGES:
                raise ProviderDataError(f"polygon: more than {MAX_PAGES} pages from "
                                        f"{redact_text(url, (self.api_key,))}")
            data = self._get(data["next_url"])
            yield data

    # -- the Provider interface -----------------------------------------------------
    def symbol_known(self, symbol: str) -> bool | None:
        """Whether the vendor's reference knows ``symbol`` (``/v3/reference/
        tickers/{symbol}``: 404 NOT_FOUND is False); None when it cannot tell."""
        url = f"{self.base_url}/v3/reference/tickers/{quote(symbol, safe='.')}"
        params, headers = {}, {}
        if self.auth == "query":
            params["apiKey"] = self.api_key
        else:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            status, data = self.client.get_json(url, params=params, headers=headers,
                                                redact=(self.api_key,), allow_statuses=(404,))
        except ProviderAuthError:
            raise
        except ProviderError:
            return None
        if status == 404:
            return False
        return bool(isinstance(data, dict) and data.get("results"))

    def daily_bars(self, symbol: str, start, end) -> Bars:
        """Raw daily bars, ``start``..``end`` inclusive (America/New_York dates)."""
        bars = bars_from_results(symbol, self.aggregates(symbol, 1, "day", start, end), "polygon",
                                 f"{symbol} 1/day {iso_date(start)}..{iso_date(end)}")
        if len(bars):
            lo, hi = np.datetime64(iso_date(start), "D"), np.datetime64(iso_date(end), "D")
            keep = (bars.session >= lo) & (bars.session <= hi)
            if not keep.all():
                bars = bars.take(np.nonzero(keep)[0])
        return bars

    def aggregates(self, symbol: str, multiplier: int, timespan: str, start, end) -> list:
        """Raw result objects of ``range/{multiplier}/{timespan}/{start}/{end}``
        (dates, both inclusive), every page followed."""
        url = (f"{self.base_url}/v2/aggs/ticker/{quote(symbol, safe='.')}/range/{multiplier}/"
               f"{timespan}/{iso_date(start)}/{iso_date(end)}")
        params = {"adjusted": "false", "sort": "asc", "limit": 50000}
        results: list = []
        for page in self._pages(url, params):
            res = page.get("results")
            if res:
                results.extend(res)
        return results

    def minute_bars(self, symbol: str, start, end) -> MinuteBars:
        """Raw one-minute bars of the sessions ``start``..``end`` (New York
        dates, inclusive; ask for at most a month, as the vendor advises)."""
        where = f"{symbol} 1/minute {iso_date(start)}..{iso_date(end)}"
        bars = minute_bars_from_results(symbol, self.aggregates(symbol, 1, "minute", start, end),
                                        "polygon", where)
        if len(bars):
            s = bars.session
            keep = (s >= np.datetime64(iso_date(start), "D")) & \
                (s <= np.datetime64(iso_date(end), "D"))
            if not keep.all():
                bars = bars.take(np.nonzero(keep)[0])
        return bars

    def grouped_daily(self, session) -> dict[str, Bars]:
        """Every symbol's raw bar for one session (empty on holidays/weekends).

        Bars are dated with the requested session."""
        day = iso_date(session)
        url = f"{self.base_url}/v2/aggs/grouped/locale/us/market/stocks/{day}"
        data = self._get(url, {"adjusted": "false"})
        results = [r for r in (data.get("results") or ()) if r.get("T")]
        if not results:
            return {}
        _, o, h, lo, c, v, vw, n = _columns(results, redact_text(url, (self.api_key,)))
        sess = np.full(1, np.datetime64(day, "D"))
        out: dict[str, Bars] = {}
        for i, r in enumerate(results):
            j = slice(i, i + 1)
            out[r["T"]] = Bars(r["T"], sess.copy(), o[j], h[j], lo[j], c[j], v[j], vw[j], n[j],
                               "polygon")
        return out

    def splits_between(self, start, end) -> list[Split]:
        """Every ticker's splits executed in ``start``..``end``: one paged
        request for the whole market (the universe), not one per ticker;
        deduplicated, sorted by ticker and date."""
        url = f"{self.base_url}/v3/reference/splits"
        params = {"execution_date.gte": iso_date(start), "execution_date.lte": iso_date(end),
                  "limit": 1000}
        seen: set[tuple] = set()
        for page in self._pages(url, params):
            for r in page.get("results") or ():
                try:
                    key = (str(r["ticker"]), dt.date.fromisoformat(r["execution_date"]),
                           float(r["split_from"]), float(r["split_to"]))
                except (KeyError, TypeError, ValueError) as e:
                    raise ProviderDataError(f"polygon: malformed split record {r!r}: {e}",
                                            url=url) from None
                if key[2] > 0 and key[3] > 0:
                    seen.add(key)
        return [Split(*k) for k in sorted(seen)]

    def splits(self, symbol: str, start=None, end=None) -> list[Split]:
        """Splits of ``symbol`` (optionally within ``start``..``end``), deduplicated,
        sorted by execution date; fractional ratios are kept as floats."""
        url = f"{self.base_url}/v3/reference/splits"
        params: dict = {"ticker": symbol, "limit": 1000}
        if start is not None:
            params["execution_date.gte"] = iso_date(start)
        if end is not None:
            params["execution_date.lte"] = iso_date(end)
        seen: set[tuple] = set()
        out: list[Split] = []
        lo = _as_date(start) if start is not None else None
        hi = _as_date(end) if end is not None else None
        for page in self._pages(url, params):
            for r in page.get("results") or ():
                if r.get("ticker", symbol) != symbol:
                    continue
                try:
                    d = dt.date.fromisoformat(r["execution_date"])
                    f, t = float(r["split_from"]), float(r["split_to"])
                except (KeyError, TypeError, ValueError) as e:
                    raise ProviderDataError(f"polygon: malformed split record {r!r}: {e}",
                                            url=url) from None
                if f <= 0 or t <= 0 or (lo and d < lo) or (hi and d > hi):
                    continue
                key = (d, f, t)
                if key not in seen:
                    seen.add(key)
                    out.append(Split(symbol, d, f, t))
        out.sort(key=lambda s: (s.execution_date, s.split_from, s.split_to))
        return out

    def dividends(self, symbol: str, start=None, end=None) -> list[Dividend]:
        """Cash dividends of ``symbol`` (optionally with ex-dates within
        ``start``..``end``), sorted by ex-date then type; exact repeats sent
        twice are kept once. A record without a ticker-matching ex-date or
        type cannot be placed: ProviderDataError. A missing or zero cash
        amount is kept as sent (None / 0.0): the store refuses to apply it and
        says so."""
        url = f"{self.base_url}/v3/reference/dividends"
        params: dict = {"ticker": symbol, "limit": 1000}
        if start is not None:
            params["ex_dividend_date.gte"] = iso_date(start)
        if end is not None:
            params["ex_dividend_date.lte"] = iso_date(end)
        seen: set = set()
        out: list[Dividend] = []
        for page in self._pages(url, params):
            for r in page.get("results") or ():
                if not isinstance(r, dict) or r.get("ticker", symbol) != symbol:
                    continue
                d = dividend_from_record(symbol, r, url)
                key = (d.ex_dividend_date, d.dividend_type, d.cash_amount, d.pay_date)
                if key not in seen:
                    seen.add(key)
                    out.append(d)
        out.sort(key=lambda d: (d.ex_dividend_date, d.dividend_type))
        return out


    def dividends_between(self, start, end, symbols=None) -> dict[str, list[Dividend]]:
        """The whole market's dividends going ex in ``start``..``end``, by
        ticker (only those of ``symbols`` when given), from one paged request
        without a ticker: how a routine run learns of new dividends."""
        url = f"{self.base_url}/v3/reference/dividends"
        params = {"ex_dividend_date.gte": iso_date(start), "ex_dividend_date.lte": iso_date(end),
                  "limit": 1000}
        out: dict[str, list[Dividend]] = {}
        seen: set = set()
        for page in self._pages(url, params):
            for r in page.get("results") or ():
                sym = r.get("ticker") if isinstance(r, dict) else None
                if not sym or (symbols is not None and sym not in symbols):
                    continue
                d = dividend_from_record(sym, r, url)
                key = (sym, d.ex_dividend_date, d.dividend_type, d.cash_amount, d.pay_date)
                if key not in seen:
                    seen.add(key)
                    out.setdefault(sym, []).append(d)
        for v in out.values():
            v.sort(key=lambda d: (d.ex_dividend_date, d.dividend_type))
        return out


    def ticker_history(self, symbol: str) -> dict | None:
        """The security ``symbol`` names now, from ``/vX/reference/tickers/
        {symbol}/events?types=ticker_change``: ``{"composite_figi", "name",
        "cik", "events": [(date, ticker)] oldest first}``; None when the
        vendor does not know it (404). Malformed events: ProviderDataError."""
        url = f"{self.base_url}/vX/reference/tickers/{quote(symbol, safe='.')}/events"
        params, headers = {"types": "ticker_change"}, {}
        if self.auth == "query":
            params["apiKey"] = self.api_key
        else:
            headers["Authorization"] = f"Bearer {self.api_key}"
        status, data = self.client.get_json(url, params=params, headers=headers,
                                            redact=(self.api_key,), allow_statuses=(404,))
        if status == 404 or not isinstance(data, dict) or not data.get("results"):
            return None
        r = data["results"]
        events = []
        for e in r.get("events") or ():
            try:
                if e.get("type") != "ticker_change":
                    continue
                events.append((dt.date.fromisoformat(e["date"]), e["ticker_change"]["ticker"]))
            except (KeyError, TypeError, ValueError, AttributeError):
                raise ProviderDataError(f"polygon: malformed ticker event {e!r} of {symbol}",
                                        url=redact_text(url, (self.api_key,))) from None
        events.sort()
        return {"composite_figi": r.get("composite_figi"), "name": r.get("name"),
                "cik": r.get("cik"), "events": events}

    def delistings(self, symbol: str) -> list[dict]:
        """Inactive listings of ticker ``symbol`` (``/v3/reference/tickers?
        ticker=&active=false``): ``[{"composite_figi", "name", "delisted_on"}]``
        with ``delisted_on`` the New York date of ``delisted_utc``."""
        out = []
        url = f"{self.base_url}/v3/reference/tickers"
        for page in self._pages(url, {"ticker": symbol, "active": "false", "limit": 1000}):
            for r in page.get("results") or ():
                if not isinstance(r, dict) or r.get("ticker") != symbol \
                        or not r.get("delisted_utc"):
                    continue
                try:
                    t = dt.datetime.fromisoformat(str(r["delisted_utc"]).replace("Z", "+00:00"))
                except ValueError:
                    raise ProviderDataError(f"polygon: bad delisted_utc {r['delisted_utc']!r} "
                                            f"of {symbol}", url=url) from None
                day = local_dates(np.array([int(t.timestamp())]), US_VENDOR_TZ)[0]
                out.append({"composite_figi": r.get("composite_figi"), "name": r.get("name"),
                            "delisted_on": day.astype(dt.date)})
        return out


def _opt_date(r: dict, key: str, where: str):
    v = r.get(key)
    if v in (None, ""):
        return None
    try:
        return dt.date.fromisoformat(str(v)[:10])
    except ValueError:
        raise ProviderDataError(f"polygon: dividend record with a bad {key} {v!r}",
                                url=where) from None


def dividend_from_record(symbol: str, r: dict, where: str = "") -> Dividend:
    """A ``Dividend`` from one ``/v3/reference/dividends`` result object."""
    ex = _opt_date(r, "ex_dividend_date", where)
    kind = r.get("dividend_type")
    if ex is None or kind not in DIVIDEND_TYPES:
        raise ProviderDataError(f"polygon: dividend record without a usable ex_dividend_date "
                                f"and dividend_type ({', '.join(DIVIDEND_TYPES)}): {r!r}",
                                url=where or None)
    cash = r.get("cash_amount")
    if cash is not None:
        try:
            cash = float(cash)
        except (TypeError, ValueError):
            raise ProviderDataError(f"polygon: dividend record with a non-numeric cash_amount "
                                    f"{cash!r}", url=where or None) from None
    freq = r.get("frequency")
    return Dividend(symbol, ex, kind, cash,
                    declaration_date=_opt_date(r, "declaration_date", where),
                    record_date=_opt_date(r, "record_date", where),
                    pay_date=_opt_date(r, "pay_date", where),
                    frequency=freq if isinstance(freq, int) else None,
                    currency=r.get("currency"), vendor_id=r.get("id"),
                    vendor=tuple(r.items()))
