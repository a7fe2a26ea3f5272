"""Backfill: bring every configured symbol up to the latest completed session.

Incremental per symbol: from the last stored session minus
``history.lookback_sessions`` (vendors revise recent bars) to the latest
completed session of the calendar; a new symbol gets its whole history from
``history.start`` or its own ``since``. Candles are validated and scored
(``quality.py``), written with COPY + one upsert per symbol in a transaction
that also moves the symbol's checkpoint, so a killed run resumes where it
stopped and a re-run changes nothing.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import numpy as np

from . import calendar as tcal
from . import db, intraday, quality, store
from .errors import LockBusy, ProviderAuthError, ProviderError, UnknownSymbol
from .locks import BACKFILL_LOCK
from .providers import make_provider
from .candles import Bars
from .providers.http import MemoryStats
from .ingest import corpactions
from .store import demo as dstore

log = logging.getLogger("appliance.backfill")


@dataclass
class SymbolPlan:
    symbol: str
    start: dt.date
    end: dt.date
    full: bool  # a new symbol (whole history)
    #: re-fetch its splits and dividends (a whole history, or a range the
    #: operator asked for: how a vendor's revision of them is taken in)
    actions: bool = False

    @property
    def refresh_actions(self) -> bool:
        return self.full or self.actions


@dataclass
class Plan:
    method: str  # "aggregates" | "grouped"
    symbols: list[SymbolPlan]
    grouped_sessions: list[dt.date] = field(default_factory=list)
    estimated_requests: int = 0

    def describe(self) -> str:
        if self.method == "grouped":
            return (f"grouped daily: {len(self.grouped_sessions)} request(s) for "
                    f"{len(self.symbols)} symbol(s)")
        return f"per-symbol aggregates: ~{self.estimated_requests} request(s) for " \
               f"{len(self.symbols)} symbol(s)"


def make_plan(conn, cfg, provider, symbols: list[str], *, start: dt.date | None,
              end: dt.date | None, now: dt.datetime) -> Plan:
    cal = cfg["calendar"]
    latest = tcal.latest_completed_session(cal, now)
    end_all = min(end, latest) if end else latest
    lookback = cfg["history"]["lookback_sessions"]
    specs = {s.symbol: s for s in cfg.symbols}
    default_since = cfg.history_start("1d")
    # a real vendor replaces the demo's history: the whole history, which
    # write_symbol stores in place of every demo bar (demodata.py)
    demo = set(dstore.demo_symbols(conn, minute=False)) \
        if start is None and dstore.replacing(provider.name) else set()
    delisted = store.securities.delisted(conn)
    plans = []
    for sym in symbols:
        # a delisted security traded until the session before its delisting:
        # nothing after it is asked for
        end = min(end_all, delisted[sym] - dt.timedelta(days=1)) if sym in delisted else end_all
        if start is not None:
            plans.append(SymbolPlan(sym, start, end, full=False, actions=True))
            continue
        since = specs[sym].since if sym in specs else default_since
        if sym in delisted and sym not in demo and store.last_stored_session(conn, sym):
            continue  # its history is stored: a routine run asks nothing more of it
        if sym in demo:
            plans.append(SymbolPlan(sym, since, end, full=True))
            continue
        last = store.last_stored_session(conn, sym)
        first, asked_from = store.history_coverage(conn, sym)
        if last is None:
            plans.append(SymbolPlan(sym, since, end, full=True))
        elif first is not None and since < first and (asked_from is None or since < asked_from):
            # `since` (or history.start) moved earlier than anything asked for
            # so far: the whole history again, which fills the earlier sessions
            plans.append(SymbolPlan(sym, since, end, full=True))
        else:
            # re-fetch the `lookback` most recent stored sessions (vendors revise them)
            if lookback <= 0:
                s = last + dt.timedelta(days=1)
            elif lookback == 1:
                s = last
            else:
                s = tcal.previous_sessions(cal, last, lookback - 1)[0].astype(object)
            s = max(s, since) if last >= since else s
            plans.append(SymbolPlan(sym, s, end, full=False))  # s > end: up to date
    plans = [p for p in plans if p.start <= p.end]
    per_symbol_cost = len(plans)
    grouped_ok = bool(getattr(provider, "supports_grouped", False)) and \
        cfg.get("provider.polygon.grouped_daily", True) is not False
    if grouped_ok and plans and not any(p.full for p in plans) and start is None:
        sessions = sorted(set().union(*(
            set(tcal.sessions(cal, p.start, p.end).astype(object).tolist()) for p in plans)))
        if 0 < len(sessions) < per_symbol_cost:
            return Plan("grouped", plans, sessions, len(sessions))
    return Plan("aggregates", plans, [], per_symbol_cost)


def run_backfill(rt, run_id, report, symbols=None, start=None, end=None, now=None) -> dict:
    """The backfill job (``runs.execute`` calls it). Returns the run's result."""
    cfg = rt.config
    now = now or dt.datetime.now(dt.timezone.utc)
    start = dt.date.fromisoformat(start) if isinstance(start, str) else start
    end = dt.date.fromisoformat(end) if isinstance(end, str) else end
    syms = list(symbols) if symbols else cfg.active_symbols
    tfs = {s.symbol: s.timeframes for s in cfg.symbols}
    minute_syms = [s for s in syms if "1m" in tfs.get(s, ())]
    syms = [s for s in syms if "1d" in tfs.get(s, ("1d",))]
    stats = MemoryStats()
    provider = make_provider(cfg["provider"], stats=stats, redis=rt.redis)
    if hasattr(provider, "universe"):  # the demo provider's grouped daily knows only these
        provider.universe = tuple(dict.fromkeys(list(provider.universe) + syms))
    # a connection of its own: the lock lives as long as it, also if the worker is killed
    lock_conn = db.connect(rt.endpoints.database_url, autocommit=True)
    try:
        if not store.locks.try_lock(lock_conn, BACKFILL_LOCK):
            _wait_for_lock(rt, cfg, lock_conn, run_id, report)
        windows = []
        if minute_syms:  # minute months to fetch, bounded like the daily ones
            windows = _minute_windows(rt, cfg, provider, minute_syms, now, start, end)
        result = _run_locked(rt, cfg, provider, stats, run_id, report, syms, start, end, now,
                             windows)
        if windows and "minutes" not in result:  # not fanned out with the daily chunks
            result = _with_minutes(result, intraday.backfill(
                rt, cfg, provider, stats, run_id, report, minute_syms, windows))
        result["unknown_symbols"] = unknown_among(rt, syms)
        result["fetched"] = _fetched(result, syms, minute_syms, windows, start, end)
        return result
    finally:
        lock_conn.close()


def _minute_windows(rt, cfg, provider, minute_syms: list[str], now, start, end) -> list:
    """The minute months to fetch (``intraday.plan``), bounded by ``start``
    and ``end`` like the daily ones. With a real vendor, the months of a
    symbol still holding demo sessions count as not fetched: the vendor's
    minutes replace the demo's (``demodata``)."""
    latest = tcal.latest_completed_session(cfg["calendar"], now)
    with rt.conn() as conn:
        if dstore.replacing(provider.name):
            demo = sorted(set(dstore.demo_symbols(conn, daily=False)) & set(minute_syms))
            if demo:
                dstore.forget_demo_months(conn, demo)
        return intraday.plan(conn, cfg, minute_syms,
                             end=min(end, latest) if end else latest, start=start)


def _fetched(result: dict, syms, minute_syms, windows, start, end) -> dict:
    """What the run fetched, per resolution (``--start/--end`` bound both)."""
    iso = lambda d: d.isoformat() if d else None  # noqa: E731
    out = {"1d": {"symbols": len(syms), "start": iso(start), "end": iso(end)}}
    if minute_syms:
        m = result.get("minutes") or {}
        out["1m"] = {"symbols": len({w.symbol for w in windows}), "months": len(windows),
                     "start": iso(min((w.start for w in windows), default=None)),
                     "end": iso(max((w.end for w in windows), default=None)),
                     "bars": int(m.get("bars") or 0)}
    return out


#: seconds between two looks at the backfill lock while another backfill runs
LOCK_POLL_S = 1.0


def _wait_for_lock(rt, cfg, lock_conn, run_id, report) -> None:
    """Another backfill runs: wait for it (its progress says so), then take
    the lock. It fetches only what that one did not, so nothing is asked
    twice. Raises LockBusy only when it still runs near this job's timeout."""
    deadline = time.monotonic() + max(60.0, 0.9 * float(cfg["jobs"]["timeout_seconds"]))
    while True:
        with rt.conn() as conn:
            other = [rid for rid, job in store.runs.running_recently(conn)
                     if job == "backfill" and rid != run_id]
        other_id = other[0] if other else None
        msg = (f"waiting for backfill run {other_id} to finish (one backfill at a time); "
               f"this one then fetches what is still missing" if other_id else
               "waiting for the running backfill to finish (one backfill at a time)")
        report({"phase": "waiting", "waiting_for": other_id, "message": msg})
        if store.locks.try_lock(lock_conn, BACKFILL_LOCK):
            return
        if time.monotonic() > deadline:
            raise LockBusy(f"backfill run {other_id or '?'} still runs after this one waited "
                           f"{0.9 * float(cfg['jobs']['timeout_seconds']):.0f} s; this one did "
                           f"not start")
        time.sleep(LOCK_POLL_S)


def _with_minutes(daily: dict, minutes: dict) -> dict:
    """The run's result with the minute phase's under ``minutes``; a symbol
    whose minutes failed makes the run partial."""
    out = dict(daily, minutes=minutes)
    failed = minutes.get("failed") or {}
    if failed:
        out["failed"] = dict(daily.get("failed") or {}, **{f"{k} (1m)": v
                                                            for k, v in failed.items()})
        if out.get("status") == "ok":
            out["status"] = "partial"
        first = "; ".join(f"{k} (1m): {v}" for k, v in list(failed.items())[:5])
        out["error"] = "; ".join(x for x in (daily.get("error"), first) if x)
    return out


def _fetch_grouped(provider, plan: Plan, report, stats) -> dict[str, list[Bars]]:
    """One grouped-daily request per planned session, split per symbol. A
    failed day switches the plan to per-symbol requests (and returns {})."""
    grouped: dict[str, list[Bars]] = {}
    for i, session in enumerate(plan.grouped_sessions):
        try:
            day = provider.grouped_daily(session)
        except ProviderAuthError:
            raise
        except ProviderError as e:
            log.warning("grouped daily %s failed (%s); falling back to aggregates", session, e)
            plan.method = "aggregates"
            return {}
        for p in plan.symbols:
            if p.symbol in day and p.start <= session <= p.end:
                grouped.setdefault(p.symbol, []).append(day[p.symbol])
        report({"phase": "grouped", "sessions_done": i + 1,
                "sessions_total": len(plan.grouped_sessions),
                "requests": stats.total("request")})
    return grouped


def _run_locked(rt, cfg, provider, stats, run_id, report, syms, start, end, now,
                windows=()) -> dict:
    today = now.astimezone(ZoneInfo("America/New_York")).date()
    with rt.conn() as conn:
        plan = make_plan(conn, cfg, provider, syms, start=start, end=end, now=now)
    log.info("backfill plan: %s", plan.describe())
    corpactions.recent_dividends(rt, provider, plan, run_id)
    from . import chunks
    if chunks.wanted(cfg, plan, windows):  # chunks for every worker (chunks.py)
        return chunks.run_parent(rt, cfg, plan, run_id, report, windows)
    totals = Counter()
    failed: dict[str, str] = {}
    t0 = time.monotonic()
    done = 0
    n = len(plan.symbols)

    def progress(current: str | None = None):
        elapsed = time.monotonic() - t0
        eta = (elapsed / done * (n - done)) if done else None
        report({"symbols_total": n, "symbols_done": done, "current": current,
                "rows": totals["inserted"] + totals["updated"], "inserted": totals["inserted"],
                "updated": totals["updated"], "rejected": totals["rejected"],
                "requests": stats.total("request"), "retries": stats.total("retry"),
                "eta_s": round(eta, 1) if eta is not None else None, "plan": plan.describe()})

    progress()
    grouped = _fetch_grouped(provider, plan, report, stats) if plan.method == "grouped" else {}

    for p in plan.symbols:
        progress(p.symbol)
        try:
            if plan.method == "grouped":
                bars = Bars.empty(p.symbol, provider.name)
                for b in grouped.get(p.symbol, []):
                    bars = bars.concat(b)
                bars.source = provider.name
            else:
                bars = corpactions.security_bars(rt, provider, p)
            res = write_symbol(rt, cfg, provider, p, bars, run_id=run_id, today=today)
            totals.update(res)
        except ProviderAuthError as e:
            failed[p.symbol] = e.message
            # every further request would fail the same way
            for rest in plan.symbols[plan.symbols.index(p) + 1:]:
                failed[rest.symbol] = "not attempted: " + e.message
            with rt.conn() as conn:
                store.add_vendor_counts(conn, stats.drain())
                store.add_event(conn, "error", "vendor", e.message,
                                {"provider": provider.name, "status": e.status})
            break
        except ProviderError as e:
            failed[p.symbol] = e.message
            log.warning("backfill %s failed: %s", p.symbol, e.message)
        except Exception as e:  # noqa: BLE001 - one symbol's failure must not stop the rest
            failed[p.symbol] = f"{e.__class__.__name__}: {e}"
            log.exception("backfill %s failed", p.symbol)
        done += 1
        if done % 20 == 0:
            with rt.conn() as conn:
                store.add_vendor_counts(conn, stats.drain())
    requests, retries = stats.total("request"), stats.total("retry")
    with rt.conn() as conn:
        store.add_vendor_counts(conn, stats.drain())
        for sym, msg in failed.items():
            store.add_event(conn, "error", "backfill", f"{sym}: {msg}", {"symbol": sym})
    progress()
    status = "ok" if not failed else ("failed" if len(failed) == n else "partial")
    return {"status": status, "plan": plan.describe(), "symbols": n,
            "symbols_ok": n - len(failed), "failed": failed, "inserted": totals["inserted"],
            "updated": totals["updated"], "revised": totals["revised"],
            "rejected": totals["rejected"], "requests": requests, "retries": retries,
            "error": (f"{len(failed)} symbol(s) failed: " +
                      "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:5])) if failed else None}


def backfill_symbol(rt, cfg, provider, p: SymbolPlan, *, run_id, today) -> Counter:
    """One symbol's planned range, fetched per symbol and stored (a chunk of a
    fanned-out backfill)."""
    return write_symbol(rt, cfg, provider, p, corpactions.security_bars(rt, provider, p),
                        run_id=run_id, today=today)


def write_symbol(rt, cfg, provider, p: SymbolPlan, bars: Bars, *, run_id, today) -> Counter:
    """Validate, store and checkpoint one symbol's bars; refresh its stats."""
    cal = cfg["calendar"]
    q = cfg["quality"]
    out = Counter()
    with rt.conn() as conn:
        if p.full and dstore.replacing(provider.name):
            # the vendor's whole history takes the place of any demo bar, in
            # this transaction: a session it lacks keeps no demo bar
            out["demo_replaced"] = dstore.drop_daily(conn, p.symbol)
        if p.refresh_actions:
            try:
                store.save_splits(conn, corpactions.own_actions(
                    conn, provider.splits, p.symbol, "execution_date"), provider.name)
            except ProviderAuthError:
                raise
            except ProviderError as e:
                log.warning("splits of %s unavailable: %s", p.symbol, e.message)
        saved_divs = (corpactions.save_dividends(conn, provider, p.symbol, run_id)
                      if p.refresh_actions else [])
        if p.full:
            store.mark_history_from(conn, p.symbol, p.start)
        if len(bars) == 0:
            if out["demo_replaced"]:
                refresh_stats(conn, cfg, p.symbol)
            _check_known(conn, provider, p.symbol)
            return out
        store.symbols.clear_unknown(conn, p.symbol)
        first = bars.session[0].astype(object)
        last = bars.session[-1].astype(object)
        cal_sessions = tcal.sessions(cal, first, last)
        prev_close = store.last_close_before(conn, p.symbol, first)
        prev_session = store.last_session_before(conn, p.symbol, first)
        splits = store.splits_for(conn, p.symbol)
        divs = store.dividends.applied_dividends(conn, p.symbol)
        checked = quality.validate(bars, cal_sessions, today, prev_close=prev_close, splits=splits,
                                   gap_threshold_pct=q["gap_threshold_pct"],
                                   split_tolerance_pct=q["split_tolerance_pct"], dividends=divs,
                                   prev_session=prev_session)
        if not p.refresh_actions and np.any(np.asarray(checked.gap_kind, dtype=object) == "jump"):
            # a jump may be a split or a special dividend the vendor announced
            # since we last asked
            try:
                fresh = provider.splits(p.symbol)
                if fresh:
                    store.save_splits(conn, fresh, provider.name)
                    splits = store.splits_for(conn, p.symbol)
            except ProviderAuthError:
                raise
            except ProviderError as e:
                log.warning("splits of %s unavailable: %s", p.symbol, e.message)
            saved_divs = corpactions.save_dividends(conn, provider, p.symbol, run_id)
            divs = store.dividends.applied_dividends(conn, p.symbol)
            checked = quality.validate(
                bars, cal_sessions, today, prev_close=prev_close, splits=splits,
                gap_threshold_pct=q["gap_threshold_pct"],
                split_tolerance_pct=q["split_tolerance_pct"], dividends=divs,
                prev_session=prev_session)
        res = store.write_bars(conn, bars, checked, issues_of=quality.issues_of, run_id=run_id)
        corpactions.report_unapplied(conn, provider, p.symbol, saved_divs)
        store.checkpoint(conn, p.symbol, last, run_id)
        out.update(res)
        out["rejected"] += int((~checked.valid).sum())
    with rt.conn() as conn:
        refresh_stats(conn, cfg, p.symbol)
    return out


def _check_known(conn, provider, symbol: str) -> None:
    """Nothing came for ``symbol`` and nothing is stored: when the vendor's
    reference does not know it, it is marked unknown (the ``symbol_unknown``
    warning), said as an event, and this symbol's fetch fails (UnknownSymbol)."""
    ask = getattr(provider, "symbol_known", None)
    if ask is None or store.symbols.has_daily_bars(conn, symbol):
        return
    if ask(symbol) is not False:
        return
    msg = (f"{symbol}: the vendor ({provider.name}) does not know this ticker; correct it "
           f"or remove it from symbols: in appliance.yaml")
    store.symbols.mark_unknown(conn, symbol, msg)
    store.add_event(conn, "warning", "symbol_unknown", msg,
                    {"symbol": symbol, "provider": provider.name})
    conn.commit()  # kept, although this symbol's fetch fails
    raise UnknownSymbol(msg, permanent=True)


def unknown_among(rt, symbols) -> list[str]:
    """Those of ``symbols`` the vendor does not know (marked by ``_check_known``)."""
    with rt.conn() as conn:
        return [r["symbol"] for r in store.symbols.unknown_symbols(conn)
                if r["symbol"] in set(symbols)]


def expected_from(conn, cfg, symbol: str) -> dt.date | None:
    """Where completeness counts from: the configured start until the vendor
    has been asked from there; after that the first stored bar (the vendor
    had nothing earlier, so that is the listing date)."""
    specs = {s.symbol: s.since for s in cfg.symbols}
    since = specs.get(symbol) or cfg.history_start("1d")
    _first, asked_from = store.history_coverage(conn, symbol)
    return since if asked_from is None or asked_from > since else None


def refresh_stats(conn, cfg, symbol: str) -> dict | None:
    cal = cfg["calendar"]
    return store.refresh_symbol_stats(
        conn, symbol, cal_sessions_fn=lambda a, b: tcal.sessions(cal, a, b),
        score_fn=quality.symbol_score, expected_from=expected_from(conn, cfg, symbol))
