"""The symbol chart's data, one page at a time, for every timeframe: bars,
whitespace for missing sessions, markers (split, dividend and jump gaps,
missing sessions, invalid bars; on the daily chart the ex-dividend dates)
and, for intraday timeframes, the first bar of each session (the chart
draws a session break there).

Pages run back in time. The first page ends at the latest bar; each page
gives ``older``, the ``end`` to ask for the page before it, or None when it
reaches the symbol's first bar. A page holds ``PAGE[timeframe]`` sessions of
intraday bars (a few thousand bars each), ``DAILY_PAGE`` daily bars, or every
weekly bar.

Times: daily bars carry their session date, weekly bars their week's Sunday
(both ``YYYY-MM-DD``); intraday bars carry the Unix seconds of their New
York wall-clock start read as UTC, so that the chart's time axis, which
shows UTC, shows New York time. Each marker and each invalid bar carries a
``role``; the page colours it from the stylesheet's ``--chart-*`` variables.
"""
from __future__ import annotations

import bisect
import datetime as dt
import json
import math

from appliance import store
from appliance.core.timeframes import REGULAR_OPEN
from appliance.store import minutes as mstore
from appliance.web.bars import exchange_tz

#: The switcher's timeframes, finest first; intraday ones need stored minutes.
TIMEFRAMES = ("1m", "5m", "15m", "1h", "4h", "1d", "1w")
INTRADAY = ("1m", "5m", "15m", "30m", "1h", "4h")
#: Sessions per page of intraday bars.
PAGE = {"1m": 5, "5m": 20, "15m": 60, "30m": 120, "1h": 250, "4h": 1000}
#: Daily bars per page.
DAILY_PAGE = 5000
_EPOCH = dt.date(1970, 1, 1).toordinal()
_FAR_PAST, _FAR_FUTURE = dt.date(1900, 1, 1), dt.date(2999, 12, 31)
_GAP_LIMIT = 5000


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def wall_seconds(session: dt.date, minute: int) -> int:
    """The chart time of a bar starting ``minute`` minutes into the New York
    day ``session``."""
    return (session.toordinal() - _EPOCH) * 86400 + int(minute) * 60


def _candle(t, o, hi, lo, c, validated: bool = True) -> dict:
    o, hi, lo, c = (_num(x) for x in (o, hi, lo, c))
    if None in (o, hi, lo, c):
        return {"time": t}
    item = {"time": t, "open": o, "high": hi, "low": lo, "close": c}
    if not validated:
        item["role"] = "invalid"
    return item


def _gap_marker(t, kind: str, text: str | None = None) -> dict:
    if kind == "missing":
        return {"time": t, "position": "inBar", "role": "missing", "shape": "square",
                "text": text or "missing"}
    if kind == "invalid":
        return {"time": t, "position": "belowBar", "role": "invalid", "shape": "circle",
                "text": text or "invalid"}
    return {"time": t, "position": "aboveBar", "role": kind, "shape": "arrowDown",
            "text": text or kind}


def _dividend_marker(t, d: dict) -> dict:
    cash = "no cash" if d["cash_amount"] is None else f"{d['cash_amount']:g}"
    text = f"ex-div {d['dividend_type']} {cash}" + (" (not applied)" if d["factor"] is None
                                                    else "")
    return {"time": t, "position": "belowBar", "role": "exdiv", "shape": "arrowUp",
            "text": text}


def _older(start: dt.date | None, more: bool) -> str | None:
    return (start - dt.timedelta(days=1)).isoformat() if more and start else None


def _finish(candles: list, markers: list, breaks: list, start, end, more: bool) -> dict:
    candles.sort(key=lambda c: c["time"])
    markers.sort(key=lambda m: m["time"])
    return {"candles": candles, "markers": markers, "breaks": breaks,
            "start": start.isoformat() if start else None,
            "end": end.isoformat() if end else None, "older": _older(start, more)}


def page(conn, symbol: str, timeframe: str, *, adjust: str, end: dt.date | None) -> dict:
    """One page of chart data ending at ``end`` (None: the latest bar),
    prices adjusted in mode ``adjust`` (none, splits or total)."""
    if timeframe == "1d":
        return _daily(conn, symbol, adjust, end)
    if timeframe == "1w":
        return _weekly(conn, symbol, adjust, end)
    return _intraday(conn, symbol, timeframe, adjust, end)


def _daily(conn, symbol: str, adjust: str, end: dt.date | None) -> dict:
    rows = store.chart_series(conn, symbol, adjust=adjust, limit=DAILY_PAGE + 1, end=end,
                              tz=exchange_tz())
    more = len(rows) > DAILY_PAGE
    rows = rows[-DAILY_PAGE:]
    candles, markers = [], []
    for r in rows:
        t = r["time"].isoformat()
        candles.append(_candle(t, r["open"], r["high"], r["low"], r["close"], r["validated"]))
        if not r["validated"]:
            markers.append(_gap_marker(t, "invalid",
                                       "invalid: " + ", ".join(r.get("issues") or [])))
        if r["gap_detected"] and r["gap_kind"] in ("split", "jump", "dividend"):
            markers.append(_gap_marker(t, r["gap_kind"]))
    start = rows[0]["time"] if rows else None
    have = {c["time"] for c in candles}
    if rows:  # ex-dates, at the first bar trading without the dividend
        days = sorted(have)
        for d in store.dividends.dividends_for(conn, symbol, start, rows[-1]["time"],
                                                   tz=exchange_tz()):
            i = bisect.bisect_left(days, d["ex_dividend_date"].isoformat())
            if i < len(days):
                markers.append(_dividend_marker(days[i], d))
    for s in mstore.missing_sessions_in(conn, symbol, "1d", start if more else None, end):
        t = s.isoformat()
        if t not in have:
            candles.append({"time": t})
            have.add(t)
        markers.append(_gap_marker(t, "missing"))
    last = rows[-1]["time"] if rows else None
    return _finish(candles, markers, [], start, end or last, more)


def _sunday(d: dt.date) -> str:
    return (d - dt.timedelta(days=(d.weekday() + 1) % 7)).isoformat()


def _weekly(conn, symbol: str, adjust: str, end: dt.date | None) -> dict:
    """Every weekly bar up to ``end`` (one page). A week is marked when one of
    its sessions is a split or jump gap, missing, or an invalid daily bar
    (left out of the week)."""
    rows = conn.execute(store.weekly_sql(adjust, False, "json"),
                        {"symbol": symbol, "tf": "1d", "start": _FAR_PAST, "tz": exchange_tz(),
                         "end": end or _FAR_FUTURE, "after": None, "limit": None}).fetchall()
    candles = []
    for _ms, text in rows:
        w = json.loads(text)
        candles.append(_candle(w["time"], w["open"], w["high"], w["low"], w["close"]))
    flagged: dict[tuple[str, str], int] = {}
    for g in store.gaps(conn, symbol=symbol, until=end, limit=_GAP_LIMIT, tz=exchange_tz()):
        if g["kind"] in ("split", "jump"):
            key = (_sunday(g["session"]), g["kind"])
            flagged[key] = flagged.get(key, 0) + 1
    for s in mstore.missing_sessions_in(conn, symbol, "1d", None, end):
        key = (_sunday(s), "missing")
        flagged[key] = flagged.get(key, 0) + 1
    for c in store.invalid_candles(conn, symbol, limit=_GAP_LIMIT, tz=exchange_tz()):
        if end is None or c["time"] <= end:
            key = (_sunday(c["time"]), "invalid")
            flagged[key] = flagged.get(key, 0) + 1
    have = {c["time"] for c in candles}
    markers = []
    for (week, kind), n in flagged.items():
        if week not in have:
            candles.append({"time": week})
            have.add(week)
        what = {"invalid": "invalid (left out)", "missing": "missing"}.get(kind, kind)
        markers.append(_gap_marker(week, kind, what if n == 1 else f"{n} × {what}"))
    first = dt.date.fromisoformat(min(have)) if have else None
    last = dt.date.fromisoformat(max(have)) if have else None
    return _finish(candles, markers, [], first, end or last, False)


def _intraday(conn, symbol: str, timeframe: str, adjust: str, end: dt.date | None) -> dict:
    start, last, more = mstore.session_page(conn, symbol, end, PAGE[timeframe])
    if start is None:
        return _finish([], [], [], None, end, False)
    end = end or last
    candles, markers, breaks = [], [], []
    first_bar: dict[dt.date, int] = {}
    for session, m, o, hi, lo, c, ok in mstore.chart_bars(conn, symbol, timeframe, start, end,
                                                          adjust=adjust, tz=exchange_tz()):
        t = wall_seconds(session, m)
        if session not in first_bar:
            first_bar[session] = t
            breaks.append(t)
        candles.append(_candle(t, o, hi, lo, c, ok))
        if not ok:
            markers.append(_gap_marker(t, "invalid", "invalid minute"))
    for s in mstore.missing_sessions_in(conn, symbol, "1m", start, end):
        if s not in first_bar:
            t = wall_seconds(s, REGULAR_OPEN)
            candles.append({"time": t})
            markers.append(_gap_marker(t, "missing", "missing session"))
    for g in store.gaps(conn, symbol=symbol, since=start, until=end, limit=_GAP_LIMIT,
                        tz=exchange_tz()):
        if g["kind"] in ("split", "jump") and g["session"] in first_bar:
            markers.append(_gap_marker(first_bar[g["session"]], g["kind"]))
    return _finish(candles, markers, breaks, start, end, more)
