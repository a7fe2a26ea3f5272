"""Tiingo end-of-day prices: an optional second source.

``/tiingo/daily/{ticker}/prices?startDate=&endDate=&format=json`` with the
header ``Authorization: Token KEY``. Each row carries raw prices (returned by
``daily_bars``; ``split_adjusted = False``), the ``adj*`` prices and a
``splitFactor`` (splits are derived from the rows where it is not 1).
Dates are the trading day (``2018-04-12T00:00:00+00:00``).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from urllib.parse import quote

import numpy as np

from appliance.core.candles import Bars, Split, iso_date
from appliance.core.errors import ProviderDataError
from appliance.providers.base import require_api_key
from appliance.providers.http import HttpClient, client_for


class TiingoProvider:
    name = "tiingo"
    label = "Tiingo"
    supports_grouped = False
    split_adjusted = False

    def __init__(self, settings: Mapping, *, stats=None, client: HttpClient | None = None,
                 limiter=None):
        """``settings``: the ``provider.tiingo`` config section, defaults included
        (``providers.settings``). ``client`` replaces the one it describes."""
        self.api_key = require_api_key("tiingo", settings["api_key"])
        self.base_url = settings["base_url"].rstrip("/")
        self.client = client or client_for("tiingo", settings, stats=stats, limiter=limiter)

    def __repr__(self) -> str:
        return f"TiingoProvider(base_url={self.base_url!r})"

    def _rows(self, symbol: str, start, end) -> list[dict]:
        url = f"{self.base_url}/tiingo/daily/{quote(symbol.lower(), safe='.-')}/prices"
        params = {"startDate": iso_date(start), "endDate": iso_date(end), "format": "json"}
        _, data = self.client.get_json(url, params=params,
                                       headers={"Authorization": f"Token {self.api_key}"},
                                       redact=(self.api_key,))
        if not isinstance(data, list):
            shown = self.client.display_url(url, params, (self.api_key,))
            raise ProviderDataError(f"tiingo: expected a JSON list from {shown}", url=shown)
        return data

    @staticmethod
    def _frame(symbol: str, rows: list[dict], keys: tuple[str, ...]):
        try:
            sess = np.array([r["date"][:10] for r in rows], dtype="datetime64[D]")
            cols = [np.array([np.nan if r.get(k) is None else r[k] for r in rows], dtype=np.float64)
                    for k in keys]
        except (KeyError, TypeError, ValueError) as e:
            raise ProviderDataError(f"tiingo: malformed price row for {symbol}: {e}") from None
        return sess, cols

    def daily_bars(self, symbol: str, start, end) -> Bars:
        """Raw (unadjusted) daily bars, both ends inclusive."""
        rows = self._rows(symbol, start, end)
        if not rows:
            return Bars.empty(symbol, "tiingo")
        sess, (o, h, lo, c, v) = self._frame(symbol, rows, ("open", "high", "low", "close", "volume"))
        n = len(sess)
        return Bars(symbol, sess, o, h, lo, c, v, np.full(n, np.nan),
                    np.full(n, -1, dtype=np.int64), "tiingo").sorted()

    def adjusted_close(self, symbol: str, start, end) -> tuple[np.ndarray, np.ndarray]:
        """(sessions, adjClose): split- and dividend-adjusted closes."""
        rows = self._rows(symbol, start, end)
        sess, (ac,) = self._frame(symbol, rows, ("adjClose",))
        order = np.argsort(sess, kind="stable")
        return sess[order], ac[order]

    def splits(self, symbol: str, start=None, end=None) -> list[Split]:
        rows = self._rows(symbol, start or dt.date(1970, 1, 1), end or dt.date.today())
        out = set()
        for r in rows:
            f = r.get("splitFactor")
            if f and float(f) != 1.0 and float(f) > 0:
                out.add(Split(symbol, dt.date.fromisoformat(r["date"][:10]), 1.0, float(f)))
        return sorted(out, key=lambda s: s.execution_date)

    def grouped_daily(self, session) -> dict[str, Bars]:
        raise NotImplementedError("tiingo has no grouped daily endpoint")
