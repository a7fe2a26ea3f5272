"""Offline import from a directory of CSV files.

One file per symbol, ``<SYMBOL>.csv``, with the header
``Date,Open,High,Low,Close,Volume`` and optionally ``VWAP,Trades`` (header
names are case-insensitive, columns may come in any order). Dates are
``YYYY-MM-DD``. An empty value is kept as missing (NaN) for validation to
flag; a value that is not a number, a bad date or a wrong field count raises
``ProviderDataError`` naming the file and line. A missing file means no data.

Splits come from an optional ``splits.csv`` in the same directory:
``Symbol,Date,From,To`` (4-for-1 is From=1, To=4).
"""
from __future__ import annotations

import csv
import datetime as dt
import os

import numpy as np

from appliance.core.candles import Bars, Split
from appliance.core.errors import ProviderDataError, ProviderError

REQUIRED = ("date", "open", "high", "low", "close", "volume")
OPTIONAL = ("vwap", "trades")


def _d(x) -> dt.date:
    if isinstance(x, dt.datetime):
        return x.date()
    if isinstance(x, np.datetime64):
        return x.astype("datetime64[D]").astype(dt.date)
    if isinstance(x, str):
        return dt.date.fromisoformat(x)
    return x


class CsvProvider:
    name = "csv"
    label = "CSV files"
    supports_grouped = False
    split_adjusted = False

    def __init__(self, path: str):
        if not path:
            raise ProviderError("provider.csv.path is empty", permanent=True)
        self.path = os.path.abspath(path)

    def _file(self, symbol: str) -> str:
        if not symbol or "/" in symbol or "\\" in symbol or symbol.startswith("."):
            raise ProviderError(f"csv: invalid symbol {symbol!r}", permanent=True)
        return os.path.join(self.path, f"{symbol}.csv")

    def read(self, symbol: str) -> Bars:
        """Every bar of ``symbol``'s file."""
        path = self._file(symbol)
        try:
            f = open(path, newline="", encoding="utf-8-sig")
        except FileNotFoundError:
            return Bars.empty(symbol, "csv")
        rows = []
        with f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return Bars.empty(symbol, "csv")
            names = [h.strip().lower() for h in header]
            missing = [c for c in REQUIRED if c not in names]
            if missing:
                raise ProviderDataError(f"{path}:1: header lacks {', '.join(missing)} "
                                        f"(expected Date,Open,High,Low,Close,Volume[,VWAP,Trades])")
            pos = {c: names.index(c) for c in REQUIRED + OPTIONAL if c in names}
            for fields in reader:
                line = reader.line_num
                if not fields or all(not x.strip() for x in fields):
                    continue
                if len(fields) != len(names):
                    raise ProviderDataError(f"{path}:{line}: expected {len(names)} fields, "
                                            f"got {len(fields)}")
                try:
                    day = dt.date.fromisoformat(fields[pos["date"]].strip())

                    def num(c):
                        if c not in pos:
                            return None
                        x = fields[pos[c]].strip()  # noqa: B023
                        return None if x == "" else float(x)

                    trades = num("trades")
                    rows.append((day, num("open"), num("high"), num("low"), num("close"),
                                 num("volume"), num("vwap"),
                                 None if trades is None else int(trades)))
                except ValueError as e:
                    raise ProviderDataError(f"{path}:{line}: {e}") from None
        return Bars.from_rows(symbol, rows, "csv")

    def daily_bars(self, symbol: str, start, end) -> Bars:
        b = self.read(symbol)
        if not len(b):
            return b
        lo, hi = np.datetime64(_d(start), "D"), np.datetime64(_d(end), "D")
        return b.take(np.nonzero((b.session >= lo) & (b.session <= hi))[0])

    def splits(self, symbol: str, start=None, end=None) -> list[Split]:
        path = os.path.join(self.path, "splits.csv")
        if not os.path.exists(path):
            return []
        lo = _d(start) if start is not None else None
        hi = _d(end) if end is not None else None
        out = set()
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = {(n or "").strip().lower(): n for n in (reader.fieldnames or [])}
            if not {"symbol", "date", "from", "to"} <= fields.keys():
                raise ProviderDataError(f"{path}:1: header must be Symbol,Date,From,To")
            for row in reader:
                try:
                    if row[fields["symbol"]].strip() != symbol:
                        continue
                    d = dt.date.fromisoformat(row[fields["date"]].strip())
                    fr, to = float(row[fields["from"]]), float(row[fields["to"]])
                except (ValueError, TypeError, AttributeError) as e:
                    raise ProviderDataError(f"{path}:{reader.line_num}: {e}") from None
                if fr <= 0 or to <= 0:
                    raise ProviderDataError(f"{path}:{reader.line_num}: split ratio must be > 0")
                if (lo and d < lo) or (hi and d > hi):
                    continue
                out.add(Split(symbol, d, fr, to))
        return sorted(out, key=lambda s: s.execution_date)

    def grouped_daily(self, session) -> dict[str, Bars]:
        raise NotImplementedError("csv has no grouped daily import")
