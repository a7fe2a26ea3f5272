"""The demo provider's bars among the stored ones: which symbols still hold
any, and removing them (when a real vendor's history replaces them, or when
the operator deletes them). Daily bars, minute sessions with their rollups,
and splits each carry their ``source``; a symbol's stats say ``demo`` while
any of its bars is (``refresh_symbol_stats``, ``refresh_minute_stats``)."""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from psycopg import Connection

from appliance.store.pool import one_row

#: The demo provider's ``source``.
DEMO = "demo"


def replacing(provider_name: str | None) -> bool:
    """Stored demo bars are replaced when the provider is a real vendor."""
    return (provider_name or DEMO) != DEMO


def demo_symbols(conn: Connection[Any], *, daily: bool = True, minute: bool = True) -> list[str]:
    """Symbols holding any demo bar, daily and/or minute (from the running
    aggregates: no scan of the bars)."""
    return [r[0] for r in conn.execute(
        """SELECT symbol FROM symbol_stats WHERE %(daily)s AND source = %(d)s
           UNION SELECT symbol FROM minute_stats WHERE %(minute)s AND source = %(d)s
           ORDER BY 1""", {"d": DEMO, "daily": daily, "minute": minute})]


def demo_counts(conn: Connection[Any], symbols: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """{symbol: {"daily_bars", "minute_sessions", "splits"}} of the demo data
    held by ``symbols`` (None: every symbol the stats label demo)."""
    syms = list(symbols) if symbols is not None else demo_symbols(conn)
    rows = conn.execute(
        """SELECT s.symbol,
                  (SELECT count(*) FROM market_data m
                    WHERE m.symbol = s.symbol AND m.source = %(d)s),
                  (SELECT count(*) FROM minute_bars b
                    WHERE b.symbol = s.symbol AND b.source = %(d)s),
                  (SELECT count(*) FROM splits p
                    WHERE p.symbol = s.symbol AND p.source = %(d)s)
           FROM unnest(%(syms)s::text[]) s(symbol) ORDER BY 1""",
        {"d": DEMO, "syms": syms}).fetchall()
    return {r[0]: {"daily_bars": int(r[1]), "minute_sessions": int(r[2]), "splits": int(r[3])}
            for r in rows if r[1] or r[2] or r[3]}


def drop_daily(conn: Connection[Any], symbol: str) -> int:
    """Delete ``symbol``'s demo daily bars, demo splits and demo dividends
    (never to enter a real vendor's total-return series), and forget how far
    back its history was asked for (the demo's answer says nothing of the
    vendor's). Returns the bars deleted. The caller refreshes the stats.
    Writes nothing for a symbol without demo data (a new symbol)."""
    held = one_row(conn.execute(
        """SELECT EXISTS (SELECT 1 FROM market_data WHERE symbol = %(s)s AND source = %(d)s)
               OR EXISTS (SELECT 1 FROM splits WHERE symbol = %(s)s AND source = %(d)s)
               OR EXISTS (SELECT 1 FROM dividends WHERE symbol = %(s)s AND source = %(d)s)""",
        {"s": symbol, "d": DEMO}))[0]
    if not held:
        return 0
    n = conn.execute("DELETE FROM market_data WHERE symbol = %s AND source = %s",
                     (symbol, DEMO)).rowcount
    conn.execute("DELETE FROM splits WHERE symbol = %s AND source = %s", (symbol, DEMO))
    conn.execute("DELETE FROM dividends WHERE symbol = %s AND source = %s", (symbol, DEMO))
    conn.execute("UPDATE symbols SET history_from = NULL WHERE symbol = %s", (symbol,))
    return n


def forget_demo_months(conn: Connection[Any], symbols: Sequence[str]) -> int:
    """Minute months of ``symbols`` that still hold a demo session are no
    longer counted as fetched, so the next minute backfill asks the vendor
    for them. Returns the months forgotten."""
    return conn.execute(
        """DELETE FROM minute_months mm
           WHERE mm.symbol = ANY(%(syms)s) AND EXISTS (
             SELECT 1 FROM minute_bars b
              WHERE b.symbol = mm.symbol AND b.source = %(d)s
                AND b.session >= mm.month
                AND b.session < (mm.month + interval '1 month')::date)""",
        {"syms": list(symbols), "d": DEMO}).rowcount


def drop_minutes(conn: Connection[Any], symbol: str) -> list[dt.date]:
    """Delete ``symbol``'s demo minute sessions, their rollups and the
    months that held them (no longer fetched). Returns the sessions deleted;
    the caller refreshes the minute stats."""
    forget_demo_months(conn, [symbol])
    days = [r[0] for r in conn.execute(
        """DELETE FROM minute_bars WHERE symbol = %s AND source = %s RETURNING session""",
        (symbol, DEMO))]
    if days:
        conn.execute("""DELETE FROM rollup_bars WHERE symbol = %s
                        AND session = ANY(%s::date[])""", (symbol, days))
    return sorted(days)
