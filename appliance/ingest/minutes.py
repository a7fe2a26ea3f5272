"""Intraday: one-minute bars for the symbols whose ``timeframes`` include
``1m``, fetched one month per request (the vendor's advice), validated, stored
exactly and rolled up to 5m..4h inside PostgreSQL.

A symbol's minute history runs from ``history.start`` (its ``1m`` entry when
it has one) to the latest completed session. ``minute_months`` records each
month fetched and how far, in the transaction that stores it, so a restarted
backfill asks only for what is missing (in whatever order the months were
done, by one worker or many) and never for a stored month again. The plan counts its requests up front, and the
estimated time of arrival follows from the vendor's rate limit and the pace so
far.

Rules (labelling in ``timeframes``): minutes outside the configured session
(``session: regular | extended``) are not kept; a kept bar with inconsistent
OHLC is stored but flagged invalid and left out of reads and rollups; a
calendar session without any minute bar is a ``missing`` gap, a missing
single minute is not (a minute without trades has no bar).
"""  # noqa: E501
from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from appliance import store
from appliance.core import calendar as tcal
from appliance.core import quality
from appliance.core.candles import MinuteBars
from appliance.core.errors import ProviderAuthError, ProviderError
from appliance.core.timeframes import REGULAR_CLOSE, REGULAR_OPEN, session_window
from appliance.store import demo as dstore
from appliance.store import minutes as mstore

log = logging.getLogger("appliance.intraday")


@dataclass
class Window:
    symbol: str
    start: dt.date
    end: dt.date


def _month_start(d: dt.date) -> dt.date:
    return d.replace(day=1)


def _month_end(d: dt.date) -> dt.date:
    return (d.replace(day=1) + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)


def minute_start(cfg, symbol: str) -> dt.date:
    """Where ``symbol``'s minute history starts: ``history.start`` (its 1m
    entry), or the symbol's own ``since`` when that is later. Not the daily
    start a symbol without ``since`` takes: a 1m start before it was cut
    back to it, silently."""
    return spec_minute_start(cfg, next((s for s in cfg.symbols if s.symbol == symbol), None))


def spec_minute_start(cfg, spec) -> dt.date:
    """``minute_start`` of a symbol's spec (None: a symbol not configured)."""
    base = cfg.history_start("1m")
    return max(base, spec.own_since) if spec is not None and spec.own_since else base


def plan(conn, cfg, symbols: list[str], *, end: dt.date,
         start: dt.date | None = None) -> list[Window]:
    """The windows to fetch, per symbol and calendar month up to ``end``.
    Without ``start``: from the symbol's ``minute_start``, less what
    ``minute_months`` says is stored (a month stored up to some day is
    fetched from the next). With ``start`` (a bounded re-fetch, like the
    daily ``--start``): every month of ``start``..``end``, stored or not."""
    done = mstore.fetched_months(conn, symbols) if start is None else {}
    out: list[Window] = []
    for sym in symbols:
        first = start if start is not None else minute_start(cfg, sym)
        m = _month_start(first)
        while m <= end:
            lo, hi = max(m, first), min(_month_end(m), end)
            got = done.get((sym, m))
            if got is not None:
                lo = max(lo, got + dt.timedelta(days=1))
            if lo <= hi:
                out.append(Window(sym, lo, hi))
            m = _month_end(m) + dt.timedelta(days=1)
    return out


def fetch_window(rt, cfg, provider, w: Window, run_id) -> Counter:
    """Fetch one window's minute bars, store them and record the month, in
    one transaction."""
    bars = provider.minute_bars(w.symbol, w.start, w.end)
    month = _month_start(w.start)
    with rt.conn() as conn:
        bars = _own_sessions(bars, store.securities.security(conn, w.symbol))
        res = write(conn, cfg, bars)
        # a month is recorded as stored up to a day only when nothing before
        # the window is missing (a bounded re-fetch mid-month is not a month)
        got = mstore.fetched_months(conn, [w.symbol]).get((w.symbol, month))
        if w.start <= max(month, minute_start(cfg, w.symbol)) or \
                (got is not None and w.start <= got + dt.timedelta(days=1)):
            mstore.record_month(conn, w.symbol, month, w.end, run_id)
    return res


def _own_sessions(bars: MinuteBars, security: dict | None) -> MinuteBars:
    """Only the bars of sessions on which the ticker named this security (a
    ticker another company used before is never stored as its minutes)."""
    periods = [t for t in (security or {}).get("tickers") or () if t["ticker"] == bars.symbol]
    if not (security or {}).get("tickers") or len(bars) == 0:
        return bars
    keep = np.zeros(len(bars), dtype=bool)
    for t in periods:
        k = bars.session >= np.datetime64(t["valid_from"], "D")
        if t["valid_to"]:
            k &= bars.session < np.datetime64(t["valid_to"], "D")
        keep |= k
    return bars if keep.all() else bars.take(np.nonzero(keep)[0])


def in_session(cfg, bars: MinuteBars) -> np.ndarray:
    """Per bar: True when it starts inside its session's configured window."""
    days = bars.session
    lo, hi = session_window(cfg["calendar"], days, cfg["session"])
    m = bars.minute
    return (m >= lo) & (m < hi)


def write(conn, cfg, bars: MinuteBars) -> Counter:
    """Validate ``bars`` (one symbol), store every session they cover and
    refresh that session's rollups. The caller commits."""
    out = Counter()
    if len(bars) == 0:
        return out
    keep = in_session(cfg, bars)
    out["outside_session"] = int((~keep).sum())
    bars = bars.take(np.nonzero(keep)[0])
    if len(bars) == 0:
        return out
    ok = quality.minute_rules(bars.open, bars.high, bars.low, bars.close, bars.volume)
    sessions = bars.session
    minute = bars.minute
    cut = np.nonzero(np.diff(sessions.astype(np.int64)))[0] + 1
    days = []
    staged = []
    for idx in np.split(np.arange(len(bars)), cut):
        day = sessions[idx[0]].astype(dt.date)
        days.append(day)
        staged.append(mstore.MinuteSession(
            bars.symbol, day, minute[idx], bars.open[idx], bars.high[idx], bars.low[idx],
            bars.close[idx], bars.volume[idx], bars.vwap[idx], bars.trades[idx],
            np.nonzero(~ok[idx])[0].tolist(), bars.source))
    mstore.ensure_partitions_for(conn, min(days), max(days))
    mstore.write_days(conn, staged, rollups=True)
    out["sessions"] += len(days)
    out["bars"] += len(bars)
    out["invalid"] += int((~ok).sum())
    return out


def inconsistent_sessions(conn, cfg, symbol: str, start: dt.date, end: dt.date) -> list[dict]:
    """Sessions whose daily bar disagrees with its regular-hours minute bars
    (``quality.daily_agrees``), for sessions holding both."""
    cal = cfg["calendar"]
    days = tcal.sessions(cal, start, end)
    if len(days) == 0:
        return []
    _lo, close = session_window(cal, days, "regular")
    early = days[close != REGULAR_CLOSE].astype(object).tolist()
    early_close = int(close[close != REGULAR_CLOSE].max()) if early else REGULAR_CLOSE
    minutes = mstore.regular_aggregates(conn, symbol, start, end, REGULAR_OPEN, REGULAR_CLOSE,
                                        early, early_close)
    daily = store.daily_hlv(conn, symbol, start, end, tz=tcal.exchange_tz(cal))
    out = []
    for session, mh, ml, mv in minutes:
        d = daily.get(session)
        if d is not None and not quality.daily_agrees(*d, mh, ml, mv):
            out.append({"session": session.isoformat(), "daily": list(d),
                        "minutes": [mh, ml, mv]})
    return out


def expected_span(conn, cfg, symbol: str) -> tuple[dt.date, dt.date] | None:
    """The sessions ``symbol``'s minute history should cover. From the first
    stored session (the vendor's minute history can start later than asked,
    and retention drops the oldest); for a symbol that keeps minute bars
    (``1m`` in its timeframes) and has none yet, from its ``minute_start``
    or its first daily bar if later. To the last stored session, or for a
    symbol that keeps minute bars to the last day fetched from the vendor if
    later: sessions the vendor answered without minutes are missing ones
    (a symbol the vendor has no minutes for showed as complete)."""
    first, last, fetched = mstore.minute_span(conn, symbol)
    # a bare mapping of settings (no Config) declares no symbols
    spec = next((s for s in getattr(cfg, "symbols", ()) if s.symbol == symbol), None)
    if spec is None or "1m" not in (spec.timeframes or ()):
        return None if first is None or last is None else (first, last)
    if first is None:
        row = store.symbol_row(conn, symbol)
        daily_first = row["first_session"] if row else None
        first = max(minute_start(cfg, symbol), daily_first or dt.date.min)
    ends = [d for d in (last, fetched) if d is not None]
    return (first, max(ends)) if ends and first <= max(ends) else None


def refresh_stats(conn, cfg, symbol: str) -> dict | None:
    """Minute stats and 1m missing sessions of ``symbol`` over its
    ``expected_span``."""
    tz = tcal.exchange_tz(cfg["calendar"])
    span = expected_span(conn, cfg, symbol)
    if span is None:
        return mstore.refresh_minute_stats(conn, symbol, np.empty(0, dtype="datetime64[D]"),
                                           tz=tz)
    start, last = span
    expected = tcal.sessions(cfg["calendar"], start, last)
    bad = inconsistent_sessions(conn, cfg, symbol, start, last)
    return mstore.refresh_minute_stats(conn, symbol, expected, len(bad), tz=tz)


def backfill(rt, cfg, provider, stats, run_id, report, symbols: list[str],
             windows: list[Window]) -> dict:
    """Fetch and store the planned ``windows`` here, in order; progress with
    an ETA. Returns totals and the symbols that failed."""
    if not symbols:
        return {"symbols": 0, "requests_planned": 0}
    if not getattr(provider, "supports_minutes", False):
        msg = f"provider {provider.name} has no minute bars; 1m history not fetched"
        log.warning(msg)
        with rt.conn() as conn:  # nothing replaces demo minutes: they go
            for sym in drop_demo_leftovers(conn, provider.name, symbols):
                refresh_stats(conn, cfg, sym)
        return {"symbols": len(symbols), "error": msg, "failed": {s: msg for s in symbols}}
    rpm = float(cfg.get(f"provider.{provider.name}.requests_per_minute") or 0)
    totals, failed = Counter(), {}
    t0, done = time.monotonic(), 0

    def progress(current=None, force=False):
        left = len(windows) - done
        pace = (time.monotonic() - t0) / done if done else None
        by_limit = left * 60.0 / rpm if rpm else None
        eta = max(x for x in (pace and pace * left, by_limit, 0.0) if x is not None)
        report({"phase": "minutes", "months_total": len(windows), "months_done": done,
                "current": current, "bars": totals["bars"], "sessions": totals["sessions"],
                "requests": stats.total("request"), "eta_s": round(eta, 1)}, force)

    for w in windows:
        if w.symbol in failed:
            done += 1
            continue
        progress(f"{w.symbol} {w.start:%Y-%m}")
        try:
            totals.update(fetch_window(rt, cfg, provider, w, run_id))
        except ProviderAuthError as e:
            for s in symbols:
                failed.setdefault(s, e.message)
            break
        except ProviderError as e:
            failed[w.symbol] = e.message
            log.warning("minute bars %s %s..%s failed: %s", w.symbol, w.start, w.end, e.message)
        done += 1
    with rt.conn() as conn:
        drop_demo_leftovers(conn, provider.name, symbols, failed)
        for sym in symbols:
            refresh_stats(conn, cfg, sym)
        for sym, msg in failed.items():
            store.add_event(conn, "error", "backfill", f"{sym} (1m): {msg}",
                            {"symbol": sym, "timeframe": "1m"})
    progress(force=True)
    return {"symbols": len(symbols), "requests_planned": len(windows), "months_done": done,
            "sessions": totals["sessions"], "bars": totals["bars"],
            "invalid": totals["invalid"], "outside_session": totals["outside_session"],
            "failed": failed}


def drop_demo_leftovers(conn, provider_name: str, symbols, failed=()) -> dict[str, int]:
    """After a minute backfill by a real vendor: the demo minute sessions
    still held by ``symbols`` whose months all succeeded (none in ``failed``)
    are sessions the vendor does not have; they are deleted with their
    rollups (``demodata``). Returns {symbol: sessions deleted}; the caller
    refreshes the minute stats."""
    if not dstore.replacing(provider_name):
        return {}
    held = set(dstore.demo_symbols(conn, daily=False)) - set(failed)
    out = {}
    for sym in symbols:
        if sym in held:
            days = dstore.drop_minutes(conn, sym)
            if days:
                out[sym] = len(days)
                log.info("%s: %d demo minute session(s) the vendor does not have deleted",
                         sym, len(days))
    return out


def apply_retention(conn, cfg, today: dt.date) -> dict:
    """``retention.bar_years``: drop the 1m bars (or one rollup's) of sessions
    older than that many years; resolutions not listed are kept for ever.
    Minutes go by whole yearly partitions of minute_bars, rows deleted only in
    the year the cutoff falls in (``store.minutes.drop_minutes_before``); a
    rollup's rows are deleted (rollup_bars is not partitioned). Returns
    {timeframe: sessions removed}; one event per resolution (the partitions
    dropped named); the minute stats of every symbol follow."""
    out = {}
    for tf, years in sorted((cfg.get("retention.bar_years") or {}).items()):
        if not years:
            continue
        cutoff = today.replace(year=today.year - int(years), day=min(today.day, 28))
        dropped: list[str] = []
        if tf == "1m":
            dropped, out[tf] = mstore.drop_minutes_before(conn, cutoff)
        else:
            out[tf] = mstore.delete_bars_before(conn, tf, cutoff)
        if out[tf] or dropped:
            parts = f"; partition(s) {', '.join(dropped)} dropped" if dropped else ""
            store.add_event(conn, "info", "maintenance",
                            f"retention: {out[tf]} session(s) of {tf} bars before {cutoff} "
                            f"removed{parts} (retention.bar_years.{tf} = {years})",
                            {"timeframe": tf, "cutoff": cutoff.isoformat(),
                             "sessions": out[tf], "partitions": dropped})
    if out.get("1m"):
        for sym in mstore.minute_stats(conn):
            refresh_stats(conn, cfg, sym)
    return out


#: The vendor's own aggregates the spot-check compares our rollups with.
CHECKED_ROLLUPS = (("5m", 5, "minute"), ("1h", 1, "hour"))


def _inside(cfg, session: dt.date, start_min: int, width: int) -> bool:
    lo, hi = session_window(cfg["calendar"], np.array([session], dtype="datetime64[D]"),
                            cfg["session"])
    return int(lo[0]) <= start_min and start_min + width <= int(hi[0])


def rollup_check(conn_factory, cfg, provider, samples: int, *, tolerance_pct: float,
                 seed: float | None = None) -> dict:
    """Our 5m and 1h bars against the vendor's ``range/5/minute`` and
    ``range/1/hour`` for sampled symbol-days. Only buckets wholly inside the
    kept session are compared (the vendor's 09:00 hour bar also holds
    pre-market minutes, which ``session: regular`` does not keep). A bar
    matches when open, high, low and close are within ``tolerance_pct`` and
    volume within ten times that."""
    with conn_factory() as conn:
        days = mstore.sample_days(conn, samples, seed)
    compared, mismatches, unavailable = 0, [], []
    for sym, day in days:
        for tf, mult, span in CHECKED_ROLLUPS:
            width = mult if span == "minute" else mult * 60
            try:
                vendor = provider.aggregates(sym, mult, span, day, day)
            except ProviderError as e:
                unavailable.append({"symbol": sym, "session": day.isoformat(),
                                    "timeframe": tf, "reason": e.message})
                continue
            with conn_factory() as conn:
                ours = mstore.day_bars(conn, sym, tf, day,
                                       tz=tcal.exchange_tz(cfg["calendar"]))
            for r in vendor:
                t = int(r.get("t", -1))
                mine = ours.get(t)
                start_min = (t // 1000 - tcal.local_midnight_epoch(
                    day, tcal.exchange_tz(cfg["calendar"]))) // 60
                if mine is None or not _inside(cfg, day, start_min, width):
                    continue
                compared += 1
                diffs = {k: _pct(mine[k], r.get(v)) for k, v in
                         (("open", "o"), ("high", "h"), ("low", "l"), ("close", "c"))}
                diffs["volume"] = _pct(mine["volume"], r.get("v")) / 10
                if max(diffs.values()) > tolerance_pct:
                    mismatches.append({"symbol": sym, "timeframe": tf, "time": mine["time"],
                                       "ours": [mine[k] for k in ("open", "high", "low",
                                                                  "close", "volume")],
                                       "vendor": [r.get(k) for k in "ohlcv"]})
    return {"days": len(days), "compared": compared, "mismatches": len(mismatches),
            "mismatch_pct": round(len(mismatches) / compared * 100, 4) if compared else 0.0,
            "pairs": mismatches[:50], "unavailable": unavailable}


def _pct(a, b) -> float:
    if a is None or b is None:
        return float("inf")
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-12) * 100.0
