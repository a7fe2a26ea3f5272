"""Bars as typed columns, for the Arrow/Parquet answers, the bulk endpoint
and the exported dataset: the same rows as the JSON answers (same SQL
underneath, same order, same cursor), but every value in its own column
instead of one text per bar.

Every query returns ``ms`` first (the bar's start in Unix milliseconds, the
cursor and the ``time`` column), then the columns of ``COLUMNS[kind]``.
Parameters: symbol, tf ('1d'), start, end (sessions), after (timestamptz,
a week for 1w, or NULL), limit (or NULL), tz (the exchange time zone).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from psycopg import Connection
from psycopg.abc import Buffer

from appliance.store.minutes import _source
from appliance.store.pool import one_row
from appliance.store.reads import _historical_select, weekly_sql

#: The value columns of each kind of timeframe, in the order returned.
COLUMNS = {
    "intraday": ("session", "open", "high", "low", "close", "volume", "vwap", "trades",
                 "validated"),
    "daily": ("open", "high", "low", "close", "volume", "vwap", "trades", "validated",
              "quality_score", "gap_detected", "gap_kind", "source"),
    "weekly": ("open", "high", "low", "close", "volume", "vwap", "trades", "sessions"),
}
_PRICES = ("open", "high", "low", "close", "volume", "vwap")


def kind_of(timeframe: str) -> str:
    return {"1d": "daily", "1w": "weekly"}.get(timeframe, "intraday")


def _ny_ms(date_col: str) -> str:
    return (f"(extract(epoch FROM ({date_col}::timestamp AT TIME ZONE %(tz)s))"
            f" * 1000)::bigint")


def bars_sql(timeframe: str, *, adjust: str | bool | None, include_invalid: bool) -> str:
    """SQL of one symbol's bars as (ms, *COLUMNS[kind])."""
    kind = kind_of(timeframe)
    prices = ", ".join(f"z.{c}::float8" for c in _PRICES)
    if kind == "intraday":
        src = _source(timeframe, adjust, include_invalid)
        return f"""SELECT (extract(epoch FROM z.ts) * 1000)::bigint, z.session, {prices},
                          z.trades::int8, z.validated FROM ({src}) z"""
    if kind == "daily":
        src = _historical_select(adjust, include_invalid)
        return f"""SELECT {_ny_ms('z.time')}, {prices}, z.trades::int8, z.validated,
                          z.quality_score, z.gap_detected, z.gap_kind, z.source
                   FROM ({src}) z"""
    src = weekly_sql(adjust, include_invalid, "columns")
    return f"""SELECT {_ny_ms('z.week')}, {prices}, z.trades::int8, z.sessions::int8
               FROM ({src}) z"""


def intraday_copy_sql(timeframe: str, *, adjust: str | bool | None, include_invalid: bool) -> str:
    """``COPY ... TO STDOUT (FORMAT binary)`` of one symbol's intraday bars,
    every field fixed-width and never NULL (a missing price is NaN, a missing
    trade count -1), so that every row has the same bytes: ``arrowbars``
    reads them with one numpy view, no Python object per value."""
    src = _source(timeframe, adjust, include_invalid)
    prices = ", ".join(f"coalesce(z.{c}::float8, 'NaN')" for c in _PRICES)
    return f"""COPY (SELECT (extract(epoch FROM z.ts) * 1000)::bigint, z.session, {prices},
                            coalesce(z.trades::int8, -1), z.validated FROM ({src}) z)
               TO STDOUT (FORMAT binary)"""


def copy_out(conn: Connection[Any], sql: str, params: dict[str, Any]) -> Iterator[Buffer]:
    """The bytes of a ``COPY ... TO STDOUT``, block by block."""
    with conn.cursor() as cur:
        with cur.copy(sql, params) as cp:
            yield from cp


def count_rows(conn: Connection[Any], timeframe: str, symbols: list[str], start: dt.date, end: dt.date,
               include_invalid: bool, *, tz: str) -> int:
    """How many bars ``bars_sql`` gives for these symbols (an upper bound for
    1m with include_invalid false, exact otherwise); cheap: it counts array
    lengths and index entries, it decodes no bar."""
    p = {"symbols": symbols, "start": start, "end": end, "tf": timeframe, "tz": tz}
    if timeframe == "1m":
        bad = "" if include_invalid else " - cardinality(invalid)"
        sql = f"""SELECT coalesce(sum(cardinality(minutes){bad}), 0) FROM minute_bars
                  WHERE symbol = ANY(%(symbols)s) AND session BETWEEN %(start)s AND %(end)s"""
    elif kind_of(timeframe) == "intraday":
        sql = """SELECT coalesce(sum(cardinality(starts)), 0) FROM rollup_bars
                 WHERE symbol = ANY(%(symbols)s) AND timeframe = %(tf)s
                   AND session BETWEEN %(start)s AND %(end)s"""
    else:
        valid = "" if include_invalid else "AND validated"
        what = ("count(*)" if timeframe == "1d" else
                "count(DISTINCT (symbol, d - extract(dow FROM d)::int))")
        sql = f"""SELECT {what} FROM (
                    SELECT symbol, (ts AT TIME ZONE %(tz)s)::date AS d
                    FROM market_data
                    WHERE symbol = ANY(%(symbols)s) AND timeframe = '1d'
                      AND ts >= (%(start)s::date::timestamp AT TIME ZONE %(tz)s)
                      AND ts < ((%(end)s::date + 1)::timestamp AT TIME ZONE %(tz)s)
                      {valid}) q"""
    return int(one_row(conn.execute(sql, p))[0])


def stored_symbols(conn: Connection[Any], timeframe: str) -> list[str]:
    """Every symbol with bars of ``timeframe``'s stored resolution, sorted."""
    if kind_of(timeframe) == "intraday":
        sql = "SELECT DISTINCT symbol FROM minute_bars ORDER BY 1"
    else:
        sql = "SELECT DISTINCT symbol FROM market_data WHERE timeframe = '1d' ORDER BY 1"
    return [r[0] for r in conn.execute(sql).fetchall()]


def month_fingerprints(conn: Connection[Any], timeframe: str, start: dt.date, end: dt.date, *,
                       tz: str) -> dict[str, Any]:
    """{first day of month: (symbols, bars, latest ingestion)} of the stored
    resolution ``timeframe`` is served from, for the months of start..end.
    A replaced session changes its month's latest ingestion; a deleted one its
    counts. Weekly bars belong to the month of their Sunday."""
    p = {"start": start, "end": end, "tz": tz}
    if kind_of(timeframe) == "intraday":
        sql = """SELECT date_trunc('month', session)::date, array_agg(DISTINCT symbol),
                        sum(cardinality(minutes)), max(ingested_at)
                 FROM minute_bars WHERE session BETWEEN %(start)s AND %(end)s GROUP BY 1"""
    else:
        day = "(ts AT TIME ZONE %(tz)s)::date"
        label = day if timeframe == "1d" else f"({day} - extract(dow FROM {day})::int)"
        sql = f"""SELECT date_trunc('month', {label})::date, array_agg(DISTINCT symbol),
                         count(*), max(ingested_at)
                  FROM market_data
                  WHERE timeframe = '1d'
                    AND ts >= (%(start)s::date - 7)::timestamp AT TIME ZONE %(tz)s
                    AND ts < ((%(end)s::date + 7)::timestamp AT TIME ZONE %(tz)s)
                  GROUP BY 1"""
    out = {}
    for month, syms, n, latest in conn.execute(sql, p).fetchall():
        if start.replace(day=1) <= month <= end:
            out[month] = (sorted(syms), int(n), latest)
    return out
