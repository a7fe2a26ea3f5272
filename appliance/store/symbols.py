"""Symbols and their running aggregates (stats, missing sessions), refreshed
after every write so that status and the console never scan market_data."""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from psycopg import Connection
from psycopg.rows import dict_row

from appliance.store.pool import one_row
from appliance.store.writes import TIMEFRAME, stored_sessions


def refresh_symbol_stats(conn: Connection[Any], symbol: str, *, cal_sessions_fn: Callable[..., Any],
                         score_fn: Callable[..., Any], tz: str,
                         timeframe: str = TIMEFRAME,
                         expected_from: dt.date | None = None) -> dict[str, Any] | None:
    """Recompute one symbol's running aggregates (and its missing sessions).

    ``cal_sessions_fn(first, last)`` returns the calendar's sessions;
    ``score_fn(n_valid, n_total, n_present, n_expected, mean_score)`` the symbol score.
    ``expected_from``: the first session the symbol should have (its configured
    start, when the vendor has not yet been asked from there); None means the
    first stored bar (the vendor had nothing earlier: the listing date).
    """
    row = one_row(conn.execute(
        """SELECT (min(ts) AT TIME ZONE %(tz)s)::date,
                  (max(ts) AT TIME ZONE %(tz)s)::date,
                  count(*), count(*) FILTER (WHERE validated),
                  count(*) FILTER (WHERE gap_detected),
                  count(*) FILTER (WHERE gap_kind = 'split'),
                  count(*) FILTER (WHERE gap_kind = 'jump'),
                  avg(quality_score),
                  -- one demo bar makes the symbol's data demo: never labelled real
                  CASE WHEN bool_or(source = 'demo') THEN 'demo' ELSE max(source) END
           FROM market_data WHERE symbol = %(s)s AND timeframe = %(tf)s""",
        {"s": symbol, "tf": timeframe, "tz": tz}))
    first, last, n, n_valid, gaps, g_split, g_jump, mean_score, source = row
    if n == 0:
        conn.execute("DELETE FROM symbol_stats WHERE symbol = %s", (symbol,))
        conn.execute("DELETE FROM missing_sessions WHERE symbol = %s AND timeframe = %s",
                     (symbol, timeframe))
        return None
    expected = cal_sessions_fn(min(first, expected_from) if expected_from else first, last)
    present = stored_sessions(conn, symbol, timeframe, tz=tz)
    missing = np.setdiff1d(expected, present)
    n_present = len(expected) - len(missing)
    completeness = n_present / len(expected) if len(expected) else 1.0
    score = score_fn(n_valid, n, n_present, len(expected), float(mean_score or 0))
    conn.execute("DELETE FROM missing_sessions WHERE symbol = %s AND timeframe = %s",
                     (symbol, timeframe))
    if len(missing):
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO missing_sessions (symbol, timeframe, session) VALUES (%s, %s, %s)",
                [(symbol, timeframe, d) for d in missing.astype(object).tolist()])
    conn.execute(
        """INSERT INTO symbol_stats (symbol, timeframe, first_session, last_session, records,
               validated, gaps, gaps_split, gaps_jump, missing_sessions, expected_sessions,
               completeness, mean_score, quality_score, source, last_update)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
           ON CONFLICT (symbol) DO UPDATE SET first_session = EXCLUDED.first_session,
               last_session = EXCLUDED.last_session, records = EXCLUDED.records,
               validated = EXCLUDED.validated, gaps = EXCLUDED.gaps,
               gaps_split = EXCLUDED.gaps_split, gaps_jump = EXCLUDED.gaps_jump,
               missing_sessions = EXCLUDED.missing_sessions,
               expected_sessions = EXCLUDED.expected_sessions,
               completeness = EXCLUDED.completeness, mean_score = EXCLUDED.mean_score,
               quality_score = EXCLUDED.quality_score, source = EXCLUDED.source,
               last_update = now()""",
        (symbol, timeframe, first, last, n, n_valid, gaps, g_split, g_jump, len(missing),
         len(expected), completeness, mean_score, score, source))
    return {"symbol": symbol, "records": n, "validated": n_valid, "gaps": gaps,
            "missing": len(missing), "completeness": completeness, "quality_score": score}


def summary(conn: Connection[Any]) -> dict[str, Any]:
    """The database part of /api/v1/status, from the running aggregates."""
    row = one_row(conn.execute(
        """SELECT count(*), coalesce(sum(records), 0), coalesce(sum(validated), 0),
                  coalesce(sum(gaps), 0),
                  -- a delisted security's data ends at its last session: never stale
                  max(last_session) FILTER (WHERE NOT EXISTS (
                    SELECT 1 FROM securities se
                    WHERE se.symbol = symbol_stats.symbol AND se.delisted_on IS NOT NULL)),
                  coalesce(sum(missing_sessions), 0), max(last_update)
           FROM symbol_stats"""))
    n_sym, total, valid, gaps, latest, missing, last_update = row
    size = one_row(conn.execute("SELECT pg_database_size(current_database())"))[0]
    total, valid, gaps = int(total), int(valid), int(gaps)
    return {
        "symbols_available": int(n_sym),
        "total_records": total,
        "validated_records": valid,
        "validation_rate_pct": round(100.0 * valid / total, 2) if total else 0.0,
        "latest_data": latest.isoformat() if latest else None,
        "gaps_flagged": gaps,
        "gaps_flagged_pct": round(100.0 * gaps / total, 3) if total else 0.0,
        "missing_sessions": int(missing),
        "size_bytes": int(size),
        "stats_updated_at": last_update.isoformat() if last_update else None,
    }


def symbol_rows(conn: Connection[Any]) -> list[dict[str, Any]]:
    """Every configured or stored symbol with its stats."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT coalesce(s.symbol, st.symbol) AS symbol,
                      coalesce(s.active, false) AS active,
                      (s.symbol IS NOT NULL AND s.removed_at IS NULL) AS configured,
                      s.since, st.first_session, st.last_session,
                      coalesce(st.records, 0) AS records, coalesce(st.validated, 0) AS validated,
                      coalesce(st.gaps, 0) AS gaps, coalesce(st.gaps_split, 0) AS gaps_split,
                      coalesce(st.gaps_jump, 0) AS gaps_jump,
                      coalesce(st.missing_sessions, 0) AS missing_sessions,
                      st.expected_sessions, st.completeness, st.quality_score, st.mean_score,
                      st.source, st.last_update
               FROM symbols s FULL OUTER JOIN symbol_stats st ON st.symbol = s.symbol
               ORDER BY 1""")
        return cur.fetchall()


def symbol_row(conn: Connection[Any], symbol: str) -> dict[str, Any] | None:
    for r in symbol_rows_for(conn, [symbol]):
        return r
    return None


def symbol_rows_for(conn: Connection[Any], symbols: Sequence[str]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT coalesce(s.symbol, st.symbol) AS symbol, coalesce(s.active, false) AS active,
                      (s.symbol IS NOT NULL AND s.removed_at IS NULL) AS configured, s.since,
                      st.first_session, st.last_session, coalesce(st.records, 0) AS records,
                      coalesce(st.validated, 0) AS validated, coalesce(st.gaps, 0) AS gaps,
                      coalesce(st.missing_sessions, 0) AS missing_sessions, st.completeness,
                      st.quality_score, st.source, st.last_update
               FROM symbols s FULL OUTER JOIN symbol_stats st ON st.symbol = s.symbol
               WHERE coalesce(s.symbol, st.symbol) = ANY(%s)""", (list(symbols),))
        return cur.fetchall()


def sync_symbols(conn: Connection[Any], specs: Iterable[Any]) -> dict[str, Any]:
    """Make the symbols table match the config: add new, reactivate, deactivate
    removed ones (their data stays). Returns ``{"added", "removed"}``."""
    existing = {r[0]: (r[1], r[2]) for r in
                conn.execute("SELECT symbol, active, since FROM symbols").fetchall()}
    wanted = {s.symbol: s for s in specs}
    added, removed = [], []
    for sym, spec in wanted.items():
        if sym not in existing:
            added.append(sym)
        elif not existing[sym][0] and spec.active:
            added.append(sym)
        conn.execute(
            """INSERT INTO symbols (symbol, active, since) VALUES (%s, %s, %s)
               ON CONFLICT (symbol) DO UPDATE SET active = EXCLUDED.active,
                 since = EXCLUDED.since,
                 removed_at = CASE WHEN EXCLUDED.active THEN NULL ELSE symbols.removed_at END""",
            (sym, spec.active, spec.since))
    for sym, (active, _) in existing.items():
        if sym not in wanted and active:
            removed.append(sym)
            conn.execute("UPDATE symbols SET active = false, removed_at = now() WHERE symbol = %s",
                         (sym,))
    return {"added": added, "removed": removed}


def symbol_known(conn: Connection[Any], symbol: str) -> bool:
    """The symbol was ever configured, or has stored candles."""
    return conn.execute("""SELECT 1 FROM symbols WHERE symbol = %s
                           UNION ALL SELECT 1 FROM symbol_stats WHERE symbol = %s LIMIT 1""",
                        (symbol, symbol)).fetchone() is not None


def no_symbol_stats(conn: Connection[Any]) -> bool:
    """Nothing stored yet: no symbol has statistics."""
    return bool(one_row(conn.execute("SELECT NOT EXISTS (SELECT 1 FROM symbol_stats)"))[0])


def has_daily_bars(conn: Connection[Any], symbol: str) -> bool:
    """Any daily candle of ``symbol`` is stored."""
    return conn.execute("SELECT 1 FROM market_data WHERE symbol = %s AND timeframe = %s LIMIT 1",
                        (symbol, TIMEFRAME)).fetchone() is not None


def mark_unknown(conn: Connection[Any], symbol: str, reason: str) -> None:
    """The vendor does not know ``symbol`` (kept until ``clear_unknown``)."""
    conn.execute("""INSERT INTO symbols (symbol, unknown_at, unknown_reason)
                    VALUES (%s, now(), %s)
                    ON CONFLICT (symbol) DO UPDATE SET unknown_reason = EXCLUDED.unknown_reason,
                      unknown_at = coalesce(symbols.unknown_at, now())""", (symbol, reason))


def clear_unknown(conn: Connection[Any], symbol: str) -> None:
    conn.execute("""UPDATE symbols SET unknown_at = NULL, unknown_reason = NULL
                    WHERE symbol = %s AND unknown_at IS NOT NULL""", (symbol,))


def unknown_symbols(conn: Connection[Any]) -> list[dict[str, Any]]:
    """Configured (active) symbols the vendor does not know: symbol, since, reason."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT symbol, unknown_at AS since, unknown_reason AS reason FROM symbols
                       WHERE active AND unknown_at IS NOT NULL ORDER BY symbol""")
        return cur.fetchall()
