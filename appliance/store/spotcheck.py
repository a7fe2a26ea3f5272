"""The spot-check's SQL: which symbols can be sampled, and their stored
validated closes (per New York session)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from psycopg import Connection


def sampling_candidates(conn: Connection[Any], timeframe: str,
                        symbols: list[str] | None) -> list[tuple[Any, ...]]:
    """(symbol, first session, last session, validated candles) of the symbols
    with validated candles (only ``symbols``, unless None), by symbol."""
    return conn.execute(
        """SELECT symbol, first_session, last_session, validated FROM symbol_stats
           WHERE timeframe = %s AND validated > 0 AND first_session IS NOT NULL
             AND (%s::text[] IS NULL OR symbol = ANY(%s::text[]))
           ORDER BY symbol""",
        (timeframe, symbols, symbols)).fetchall()


def validated_closes(conn: Connection[Any], timeframe: str, symbols: list[str], *,
                     tz: str) -> list[tuple[Any, ...]]:
    """(symbol, session, close) of every validated candle of ``symbols``."""
    return conn.execute(
        """SELECT symbol, (ts AT TIME ZONE %s)::date, close FROM market_data
           WHERE timeframe = %s AND symbol = ANY(%s) AND validated ORDER BY symbol, ts""",
        (tz, timeframe, symbols)).fetchall()


def validated_close_near(conn: Connection[Any], symbol: str, timeframe: str, day: dt.date, *,
                         tz: str) -> tuple[Any, ...] | None:
    """(session, close) of the first validated candle at or after ``day`` (else
    the last before it), or None."""
    params = {"s": symbol, "tf": timeframe, "day": day, "tz": tz}
    row = conn.execute(
        """SELECT (ts AT TIME ZONE %(tz)s)::date, close FROM market_data
           WHERE symbol = %(s)s AND timeframe = %(tf)s AND validated
             AND ts >= (%(day)s::date::timestamp AT TIME ZONE %(tz)s)
           ORDER BY ts LIMIT 1""", params).fetchone()
    if row is None:
        row = conn.execute(
            """SELECT (ts AT TIME ZONE %(tz)s)::date, close FROM market_data
               WHERE symbol = %(s)s AND timeframe = %(tf)s AND validated
                 AND ts < (%(day)s::date::timestamp AT TIME ZONE %(tz)s)
               ORDER BY ts DESC LIMIT 1""", params).fetchone()
    return row


def split_factors(conn: Connection[Any], symbol: str, sessions: list[dt.date], *, tz: str) -> list[float]:
    """The split factor of ``symbol``'s bar of each session, from the one
    home of the adjustment (``adjustment_factor(symbol, day, 'splits', tz)``)."""
    rows = conn.execute(
        """SELECT adjustment_factor(%s, d, 'splits', %s)
           FROM unnest(%s::date[]) WITH ORDINALITY u(d, i) ORDER BY i""",
        (symbol, tz, list(sessions))).fetchall()
    return [r[0] for r in rows]
