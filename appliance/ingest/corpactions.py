"""Corporate actions and identity, fetched with the daily bars: a symbol's
bars under each ticker its security had (``security_bars``), its identity
(composite FIGI, ticker history, delisting: ``refresh_identity``), its
splits and dividends asked under those tickers (``own_actions``), the
dividends stored with their events (``save_dividends``), and a routine run's
one market-wide request for the dividends going ex in its sessions
(``recent_dividends``). ``backfill`` calls these; the SQL is in
``store.dividends`` and ``store.securities``."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from appliance import store
from appliance.core.candles import Bars
from appliance.core.errors import ProviderAuthError, ProviderError

log = logging.getLogger("appliance.ingest.backfill")


def security_bars(rt, provider, p) -> Bars:
    """The planned range of ``p.symbol``'s daily bars, fetched under each
    ticker its security had in that range and only for the dates that ticker
    named it (a renamed company's older bars come under its older ticker; a
    ticker another company used before is never read for those dates). A
    plan that refreshes corporate actions first refreshes the identity
    (vendors that publish it: Polygon)."""
    if p.refresh_actions and getattr(provider, "ticker_history", None) is not None:
        with rt.conn() as conn:
            refresh_identity(conn, provider, p.symbol)
    with rt.conn() as conn:
        sec = store.securities.security(conn, p.symbol)
    tickers = (sec or {}).get("tickers") or []
    if not tickers:
        return provider.daily_bars(p.symbol, p.start, p.end)
    end = p.end
    if sec.get("delisted_on"):
        end = min(end, sec["delisted_on"] - dt.timedelta(days=1))
    bars = Bars.empty(p.symbol, provider.name)
    for t in tickers:
        a = max(p.start, t["valid_from"])
        b = min(end, t["valid_to"] - dt.timedelta(days=1)) if t["valid_to"] else end
        if a <= b:
            got = provider.daily_bars(t["ticker"], a, b)
            got.symbol = p.symbol
            bars = bars.concat(got)
    bars.source = provider.name
    return bars


def refresh_identity(conn, provider, symbol: str) -> None:
    """Store the security ``symbol`` names (composite FIGI, ticker history)
    and its delisting, from the vendor. Conflicting events or a FIGI already
    another symbol's are said as an ``identity`` event and change nothing
    stored; a vendor error is logged and said, the stored identity kept."""
    try:
        ident = provider.ticker_history(symbol)
        gone = provider.delistings(symbol)
    except ProviderAuthError:
        raise
    except ProviderError as e:
        log.warning("identity of %s unavailable: %s", symbol, e.message)
        store.add_event(conn, "warning", "identity", f"{symbol}: ticker history unavailable "
                        f"from {provider.name}, the stored one is kept: {e.message}",
                        {"symbol": symbol})
        return
    figi = (ident or {}).get("composite_figi")
    # a delisting of this ticker is this security's when the FIGIs agree (a
    # reused ticker's earlier company is another security)
    mine = [g for g in gone if not figi or not g["composite_figi"] or g["composite_figi"] == figi]
    if ident is None and mine:
        ident = {"composite_figi": mine[-1]["composite_figi"], "name": mine[-1]["name"],
                 "events": []}
    if ident is None:
        return
    problem = store.securities.save_identity(conn, symbol, ident, provider.name)
    if problem:
        store.add_event(conn, "warning", "identity",
                        f"{symbol}: ticker history not stored: {problem}",
                        {"symbol": symbol, "composite_figi": figi, "problem": problem})
        return
    store.securities.set_delisted(conn, symbol,
                                  max(g["delisted_on"] for g in mine) if mine else None)


def own_actions(conn, fetch, symbol: str, date_field: str) -> list:
    """``symbol``'s splits or dividends (``fetch(ticker)``, dated by
    ``date_field``): asked under each ticker its security had, kept for the
    dates that ticker named it and relabelled ``symbol`` (a renamed company's
    older actions come under its older ticker; a reused ticker's earlier
    company's never enter). Without a ticker history: ``fetch(symbol)``."""
    sec = store.securities.security(conn, symbol)
    tickers = (sec or {}).get("tickers") or []
    if not tickers:
        return fetch(symbol)
    out = []
    for t in tickers:
        for a in fetch(t["ticker"]):
            d = getattr(a, date_field)
            if d >= t["valid_from"] and (t["valid_to"] is None or d < t["valid_to"]):
                out.append(dataclasses.replace(a, symbol=symbol))
    return out


def save_dividends(conn, provider, symbol: str, run_id) -> list[dt.date]:
    """Fetch and store ``symbol``'s dividends (vendors that publish them);
    each one that cannot be applied is said as a ``dividend`` event. Returns
    the ex-dates saved (new or revised). A vendor error is logged and said,
    the stored dividends untouched."""
    fetch = getattr(provider, "dividends", None)  # Polygon and the demo publish them
    if fetch is None:
        return []
    try:
        fresh = own_actions(conn, fetch, symbol, "ex_dividend_date")
    except ProviderAuthError:
        raise
    except ProviderError as e:
        log.warning("dividends of %s unavailable: %s", symbol, e.message)
        store.add_event(conn, "warning", "dividend",
                        f"{symbol}: dividends unavailable from {provider.name}, the stored "
                        f"ones are kept: {e.message}", {"symbol": symbol})
        return []
    return store_dividends(conn, provider, symbol, fresh, run_id)


def store_dividends(conn, provider, symbol: str, fresh, run_id) -> list[dt.date]:
    """Store one vendor answer's dividends of ``symbol``, each problem said
    as a ``dividend`` event; returns the ex-dates saved (new or revised)."""
    res = store.dividends.save_dividends(conn, fresh, provider.name, run_id)
    for sym, ex, kind, cash, problem in res["problems"]:
        store.add_event(conn, "warning", "dividend",
                        f"{sym}: dividend {kind} ex {ex} not applied: {problem}",
                        {"symbol": sym, "ex_dividend_date": ex.isoformat(),
                         "dividend_type": kind, "cash_amount": cash, "problem": problem})
    if res["revised"]:
        store.add_event(conn, "info", "dividend",
                        f"{symbol}: {res['revised']} dividend(s) revised by {provider.name} "
                        f"(old and new values in dividend_revisions)",
                        {"symbol": symbol, "revised": res["revised"]})
    return [k[1] for k in res["saved"]]


#: Days before the earliest session of a routine run whose ex-dates it asks for.
RECENT_DIVIDEND_DAYS = 10


def recent_dividends(rt, provider, plan, run_id) -> None:
    """A routine run (no symbol refreshing its corporate actions) asks for
    the dividends of the whole market going ex in its sessions, in one paged
    request (``dividends_between``), and stores those of its symbols: so a
    newly declared dividend enters the total-return series, and the quality
    check knows it, without one request per symbol. A vendor error is logged
    and said; the run goes on."""
    routine = [p for p in plan.symbols if not p.refresh_actions]
    fetch = getattr(provider, "dividends_between", None)  # Polygon and the demo
    if not routine or fetch is None:
        return
    lo = min(p.start for p in routine) - dt.timedelta(days=RECENT_DIVIDEND_DAYS)
    hi = max(p.end for p in routine)
    wanted = {p.symbol for p in routine}
    with rt.conn() as conn:
        try:
            found = fetch(lo, hi, wanted)
        except ProviderAuthError:
            raise
        except ProviderError as e:
            log.warning("recent dividends unavailable: %s", e.message)
            store.add_event(conn, "warning", "dividend",
                            f"dividends going ex {lo}..{hi} unavailable from {provider.name}; "
                            f"the next run asks again: {e.message}", {})
            return
        for sym in sorted(wanted & set(found)):
            store_dividends(conn, provider, sym, found[sym], run_id)


def report_unapplied(conn, provider, symbol: str, ex_dates: list[dt.date], *, tz: str) -> None:
    """A ``dividend`` event for each newly saved dividend that the stored
    bars cannot apply (no close before its ex-date, or cash not below it)."""
    if not ex_dates:
        return
    rows = store.dividends.unapplied(conn, symbol, ex_dates, tz=tz)
    early = [u for u in rows if u["reason"] == "no_close_before"]
    if early:
        first, last = early[0]["ex_dividend_date"], early[-1]["ex_dividend_date"]
        store.add_event(conn, "info", "dividend",
                        f"{symbol}: {len(early)} dividend(s) with ex-dates {first}..{last} not "
                        f"applied: before the first stored bar (no close before them); they "
                        f"apply once earlier history is stored",
                        {"symbol": symbol, "problem": "no_close_before", "count": len(early),
                         "first": first.isoformat(), "last": last.isoformat(),
                         "provider": provider.name})
    for u in rows:
        if u["reason"] == "no_close_before":
            continue
        store.add_event(conn, "warning", "dividend",
                        f"{symbol}: dividend {u['dividend_type']} ex {u['ex_dividend_date']} "
                        f"not applied: its cash {u['cash_amount']!r} is not below the close "
                        f"before it ({u['close_before']!r})",
                        {"symbol": symbol, "ex_dividend_date": u["ex_dividend_date"].isoformat(),
                         "dividend_type": u["dividend_type"], "cash_amount": u["cash_amount"],
                         "problem": u["reason"], "provider": provider.name})
