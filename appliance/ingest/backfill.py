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
from typing import Any
from zoneinfo import ZoneInfo

from appliance import store
from appliance.core import calendar as tcal
from appliance.core.candles import Bars
from appliance.core.errors import LockBusy, ProviderAuthError, ProviderError
from appliance.ingest import chunks, corpactions
from appliance.ingest import flatfiles as flat
from appliance.ingest import minutes as intraday
from appliance.ingest.daily import SymbolPlan, unknown_among, write_symbol
from appliance.jobs.registry import JobResult
from appliance.providers import make_provider
from appliance.providers.http import MemoryStats
from appliance.store import demo as dstore
from appliance.store import pool as db
from appliance.store.locks import BACKFILL_LOCK

log = logging.getLogger("appliance.backfill")


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
        if sym in delisted and sym not in demo and store.last_stored_session(
                conn, sym, tz=tcal.exchange_tz(cfg["calendar"])):
            continue  # its history is stored: a routine run asks nothing more of it
        if sym in demo:
            plans.append(SymbolPlan(sym, since, end, full=True))
            continue
        last = store.last_stored_session(conn, sym, tz=tcal.exchange_tz(cfg["calendar"]))
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


class BackfillResult(JobResult, total=False):
    """The ``backfill`` job's result (``runs.execute`` stores it)."""
    #: how the bars were fetched ("grouped" or per symbol, files, chunks)
    plan: str
    symbols: int
    symbols_ok: int
    #: what failed -> why ("AAPL", "AAPL (1m)", "flat files", "flat file …")
    failed: dict[str, str]
    inserted: int
    updated: int
    revised: int
    rejected: int
    requests: int
    retries: int
    #: fanned out: chunks run and the hosts that ran them (host -> chunks)
    chunks: int
    hosts: dict[str, int]
    #: flat files: total, done, failed, bytes, rows, bars
    files: dict[str, int]
    #: the minute phase (``ingest.minutes.backfill``'s totals)
    minutes: dict[str, Any]
    #: the universe's sessions after its newest daily file (sessions, rows, …)
    universe_rest: dict[str, int]
    unknown_symbols: list[str]
    #: what was fetched per resolution ("1d", "1m": symbols, start, end, …)
    fetched: dict[str, dict[str, Any]]


def run_backfill(rt, run_id, report, symbols=None, start=None, end=None,
                 now=None) -> BackfillResult:
    """The backfill job (``runs.execute`` calls it). Returns the run's result."""
    cfg = rt.config
    now = now or dt.datetime.now(dt.UTC)
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
        fplan, files_error = None, None
        daily_start = start
        if flat.enabled(cfg):  # the flat files take what they do cheaper; REST the rest
            try:
                fplan, daily_start, windows = plan_files(rt, cfg, provider, syms, windows,
                                                         start, end, now)
            except ProviderAuthError as e:  # wrong keys, no such bucket: REST goes on
                files_error = e.message
                with rt.conn() as conn:
                    store.add_event(conn, "error", "flat_files", e.message, {})
        if fplan is not None:
            syms = _not_in_universe_tail(cfg, provider, fplan, syms, now)
            report({"phase": "plan", "plan": fplan.describe()})
            _universe_splits(rt, cfg, provider, fplan, end, now)
        result = _run_locked(rt, cfg, provider, stats, run_id, report, syms, daily_start, end,
                             now, windows, files=fplan.files if fplan else ())
        if fplan is not None:
            result["plan"] = "; ".join(x for x in (fplan.describe(), result.get("plan")) if x)
            tail = _universe_tail(rt, cfg, provider, fplan, run_id, end, now)
            if tail:
                result["universe_rest"] = tail
        if windows and "minutes" not in result:  # not fanned out with the daily chunks
            result = _with_minutes(result, intraday.backfill(
                rt, cfg, provider, stats, run_id, report, minute_syms, windows))
        if files_error:
            why = files_error.removeprefix("flat files: ")
            result["failed"] = dict(result.get("failed") or {}, **{"flat files": why})
            result["error"] = "; ".join(x for x in (result.get("error"), files_error) if x)
            result["status"] = "partial" if result.get("status") == "ok" else \
                result.get("status", "failed")
        result["unknown_symbols"] = unknown_among(rt, syms)
        result["fetched"] = _fetched(result, syms, minute_syms, windows, start, end)
        return result
    finally:
        lock_conn.close()


def _not_in_universe_tail(cfg, provider, fplan, syms, now) -> list[str]:
    """``syms`` less what the universe's grouped-daily tail fetches anyway
    (``_universe_tail``: its answer holds every ticker, and it keeps the
    configured symbols as a file does): no session is asked for twice."""
    if fplan.covered.get("1d") is None or flat.universe_start(cfg, "1d") is None or \
            not getattr(provider, "supports_grouped", False):
        return syms
    return []


def _universe_tail(rt, cfg, provider, fplan, run_id, end, now) -> dict | None:
    """The universe's sessions after its newest daily file (the file of the
    latest session appears the next morning): one grouped-daily request per
    session, stored like a file's day. None when there is nothing to do."""
    newest = fplan.covered.get("1d")
    if newest is None or flat.universe_start(cfg, "1d") is None or \
            not getattr(provider, "supports_grouped", False):  # a vendor capability
        return None
    latest = tcal.latest_completed_session(cfg["calendar"], now)
    last = min(end, latest) if end else latest
    days = tcal.sessions(cfg["calendar"], newest + dt.timedelta(days=1), last)
    totals = Counter()
    today = now.astimezone(ZoneInfo(tcal.exchange_tz(cfg["calendar"]))).date()
    for d in days.astype(object).tolist():
        try:
            grouped = provider.grouped_daily(d)
        except ProviderError as e:
            log.warning("grouped daily %s for the universe failed: %s", d, e.message)
            totals["failed"] += 1
            continue
        with rt.conn() as conn:
            totals.update(flat.store_grouped(conn, cfg, d, grouped, source=provider.name,
                                             run_id=run_id, today=today))
        totals["sessions"] += 1
    return dict(totals) or None


def _universe_splits(rt, cfg, provider, fplan, end, now) -> None:
    """The universe's splits over the daily days this run stores, from the
    splits endpoint by execution date (one paged request, not one per
    ticker), saved before the files so that their gap checks see them."""
    ask = getattr(provider, "splits_between", None)  # a vendor capability (Polygon)
    days = [f.day for f in fplan.files if f.timeframe == "1d"]
    if ask is None or not days or flat.universe_start(cfg, "1d") is None:
        return
    last = min(end, tcal.latest_completed_session(cfg["calendar"], now)) if end else \
        tcal.latest_completed_session(cfg["calendar"], now)
    try:
        found = ask(min(days), last)
    except ProviderAuthError:
        raise
    except ProviderError as e:
        log.warning("universe splits unavailable: %s", e.message)
        return
    with rt.conn() as conn:
        store.save_splits(conn, found, provider.name)


def plan_files(rt, cfg, provider, syms, windows, start, end, now):
    """The flat-file plan (``ingest.flatfiles.make_plan``) weighed against
    the REST plan, and what REST is left with: the daily start (the day after
    the newest file, when files serve daily bars) and the minute windows
    clipped the same way. Returns (file plan, daily start, windows)."""
    latest = tcal.latest_completed_session(cfg["calendar"], now)
    last = min(end, latest) if end else latest
    with rt.conn() as conn:
        rest = make_plan(conn, cfg, provider, syms, start=start, end=end, now=now)
        fplan = flat.make_plan(conn, cfg, flat.client(cfg), end=last, start=start,
                               rest_requests={"1d": rest.estimated_requests,
                                              "1m": len(windows)})
    daily_start = start
    if fplan.uses_files("1d") and fplan.covered.get("1d"):
        daily_start = max(start or dt.date.min, fplan.covered["1d"] + dt.timedelta(days=1))
    if fplan.uses_files("1m") and fplan.covered.get("1m"):
        after = fplan.covered["1m"] + dt.timedelta(days=1)
        windows = [intraday.Window(w.symbol, max(w.start, after), w.end) for w in windows
                   if w.end >= after]
    return fplan, daily_start, windows


def describe_plan(rt, symbols=None, start=None, end=None, now=None) -> list[str]:
    """What a backfill would fetch, and how, without fetching (``appliance
    backfill --plan``)."""
    cfg = rt.config
    now = now or dt.datetime.now(dt.UTC)
    syms = list(symbols) if symbols else cfg.active_symbols
    tfs = {s.symbol: s.timeframes for s in cfg.symbols}
    minute_syms = [s for s in syms if "1m" in tfs.get(s, ())]
    syms = [s for s in syms if "1d" in tfs.get(s, ("1d",))]
    provider = make_provider(cfg["provider"], stats=MemoryStats(), redis=rt.redis)
    windows = _minute_windows(rt, cfg, provider, minute_syms, now, start, end) \
        if minute_syms else []
    lines = []
    daily_start = start
    if flat.enabled(cfg):
        fplan, daily_start, windows = plan_files(rt, cfg, provider, syms, windows, start, end,
                                                 now)
        lines.append("flat files: " + (fplan.describe() or "nothing to do"))
    with rt.conn() as conn:
        plan = make_plan(conn, cfg, provider, syms, start=daily_start, end=end, now=now)
    lines.append(f"1d REST: {plan.describe()}" if plan.symbols else "1d REST: nothing to do")
    lines.append(f"1m REST: {len(windows)} month request(s) for "
                 f"{len({w.symbol for w in windows})} symbol(s)")
    return lines


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
                windows=(), files=()) -> dict:
    today = now.astimezone(ZoneInfo(tcal.exchange_tz(cfg["calendar"]))).date()
    with rt.conn() as conn:
        plan = make_plan(conn, cfg, provider, syms, start=start, end=end, now=now)
    log.info("backfill plan: %s", plan.describe())
    corpactions.recent_dividends(rt, provider, plan, run_id)
    if files:  # one chunk per file (chunks.py); a grouped daily plan runs here first
        fan = bool(cfg["backfill"]["fan_out"])
        if plan.method == "grouped" or not fan:
            daily = _run_here(rt, cfg, provider, stats, run_id, report, plan, today) \
                if plan.symbols else None
            res = chunks.run_parent(rt, cfg, Plan("aggregates", []), run_id, report, windows,
                                    files, enqueue=fan)
            return _merged(daily, res)
        return chunks.run_parent(rt, cfg, plan, run_id, report, windows, files)
    if chunks.wanted(cfg, plan, windows):  # chunks for every worker (chunks.py)
        return chunks.run_parent(rt, cfg, plan, run_id, report, windows)
    if plan.method == "grouped" and cfg["backfill"]["fan_out"] and len(windows) > 1:
        # the grouped daily here (a few requests), the minute months as chunks:
        # every worker takes them, and a stopped worker hands them over
        daily = _run_here(rt, cfg, provider, stats, run_id, report, plan, today) \
            if plan.symbols else None
        return _merged(daily, chunks.run_parent(rt, cfg, Plan("aggregates", []), run_id,
                                                report, windows))
    return _run_here(rt, cfg, provider, stats, run_id, report, plan, today)


def _merged(daily: dict | None, res: dict) -> dict:
    """A daily phase run here and the fanned-out files' or minute months'
    result, as one."""
    if daily is None:
        return res
    out = dict(res)
    for k in ("symbols", "symbols_ok", "inserted", "updated", "revised", "rejected",
              "requests", "retries"):
        out[k] = int(daily.get(k) or 0) + int(res.get(k) or 0)
    out["failed"] = {**(daily.get("failed") or {}), **(res.get("failed") or {})}
    out["plan"] = f"{daily.get('plan')}; {res.get('plan')}"
    both = {daily.get("status", "ok"), res.get("status", "ok")}
    out["status"] = both.pop() if len(both) == 1 else "partial"
    out["error"] = "; ".join(x for x in (daily.get("error"), res.get("error")) if x) or None
    return out


def _run_here(rt, cfg, provider, stats, run_id, report, plan: Plan, today) -> dict:
    """The daily plan run by this process, symbol after symbol."""
    totals = Counter()
    failed: dict[str, str] = {}
    t0 = time.monotonic()
    done = 0
    n = len(plan.symbols)

    def progress(current: str | None = None, force: bool = False):
        elapsed = time.monotonic() - t0
        eta = (elapsed / done * (n - done)) if done else None
        report({"symbols_total": n, "symbols_done": done, "current": current,
                "rows": totals["inserted"] + totals["updated"], "inserted": totals["inserted"],
                "updated": totals["updated"], "rejected": totals["rejected"],
                "requests": stats.total("request"), "retries": stats.total("retry"),
                "eta_s": round(eta, 1) if eta is not None else None, "plan": plan.describe()},
               force)

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
        except Exception as e:  # one symbol's failure must not stop the rest
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
    progress(force=True)  # the last report is never throttled away: n of n
    status = "ok" if not failed else ("failed" if len(failed) == n else "partial")
    return {"status": status, "plan": plan.describe(), "symbols": n,
            "symbols_ok": n - len(failed), "failed": failed, "inserted": totals["inserted"],
            "updated": totals["updated"], "revised": totals["revised"],
            "rejected": totals["rejected"], "requests": requests, "retries": retries,
            "error": (f"{len(failed)} symbol(s) failed: " +
                      "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:5])) if failed else None}
