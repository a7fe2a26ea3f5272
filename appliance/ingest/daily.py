"""One symbol's daily bars: fetch, validate, store and checkpoint them, refresh
the symbol's stats (what a backfill does per symbol, alone or in a chunk of a
fanned-out run), and the vendor's word on unknown tickers."""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from appliance import store
from appliance.core import calendar as tcal
from appliance.core import quality
from appliance.core.candles import Bars
from appliance.core.errors import ProviderAuthError, ProviderError, UnknownSymbol
from appliance.ingest import corpactions
from appliance.store import demo as dstore

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
        tz = tcal.exchange_tz(cal)
        prev_close = store.last_close_before(conn, p.symbol, first, tz=tz)
        prev_session = store.last_session_before(conn, p.symbol, first, tz=tz)
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
        res = store.write_bars(conn, bars, checked, issues_of=quality.issues_of, run_id=run_id,
                               tz=tz)
        corpactions.report_unapplied(conn, provider, p.symbol, saved_divs, tz=tz)
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
    had nothing earlier, so that is the listing date). A symbol not in
    ``symbols:`` (one of the universe, from the whole-market files, or one
    removed) counts from its first stored bar: a day's file holds every
    ticker that traded, so one listed later is absent before, not missing."""
    specs = {s.symbol: s.since for s in cfg.symbols}
    if symbol not in specs:
        return None
    since = specs[symbol] or cfg.history_start("1d")
    _first, asked_from = store.history_coverage(conn, symbol)
    return since if asked_from is None or asked_from > since else None


def refresh_stats(conn, cfg, symbol: str) -> dict | None:
    cal = cfg["calendar"]
    return store.refresh_symbol_stats(
        conn, symbol, cal_sessions_fn=lambda a, b: tcal.sessions(cal, a, b),
        score_fn=quality.symbol_score, expected_from=expected_from(conn, cfg, symbol),
        tz=tcal.exchange_tz(cal))
