"""Bars as typed columns, for the Arrow/Parquet answers, the bulk endpoint
and the exported dataset: the same rows as the JSON answers (same order,
same cursor), but every value in its own column instead of one text per bar.

Intraday bars are read as stored, one row per symbol-session
(``session_arrays``), and decoded outside the database
(``ops.arrowbars.decode_sessions``). Daily and weekly bars come from the
JSON answers' SQL (``bars_sql``): every such query returns ``ms`` first
(the bar's start in Unix milliseconds, the cursor and the ``time`` column),
then the columns of ``COLUMNS[kind]``.
Parameters: symbol, tf ('1d'), start, end (sessions), after (timestamptz,
a week for 1w, or NULL), limit (or NULL), tz (the exchange time zone).
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from typing import Any

from psycopg import Connection
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format

from appliance.core.timeframes import ROLLUPS
from appliance.store.minutes import _FIRST_SESSION, _source, candle_sql
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
    """``COPY ... TO STDOUT (FORMAT binary)`` of one symbol's intraday bars
    unpacked in SQL, one row per bar (every field fixed-width and never NULL:
    a missing price is NaN, a missing trade count -1): the limit of reading
    bars that way, measured beside the answers by ``bench/bench_export.py``
    (the answers read ``session_arrays`` instead)."""
    src = _source(timeframe, adjust, include_invalid)
    prices = ", ".join(f"coalesce(z.{c}::float8, 'NaN')" for c in _PRICES)
    return f"""COPY (SELECT (extract(epoch FROM z.ts) * 1000)::bigint, z.session, {prices},
                            coalesce(z.trades::int8, -1), z.validated FROM ({src}) z)
               TO STDOUT (FORMAT binary)"""


#: The array columns of ``session_arrays``' rows, after (session, scale);
#: then (volume_scale, vwap_scale, packed, bars).
ARRAY_COLUMNS = ("minutes", "open", "high", "low", "close", "volume", "vwap", "raw", "trades",
                 "invalid", "body", "upper_wick", "lower_wick")


#: A candle row of rollup_bars (0014) as the float arrays of a float row,
#: decoded in SQL as ``store.minutes._source`` decodes each bar (rollups are
#: a fifth of the minutes or fewer; the minute sessions are decoded by numpy).
_CANDLE = candle_sql("u.oi", "u.bd", "u.uw", "u.lw")
_ROLLUP_FLOATS = f"""LEFT JOIN LATERAL (
      SELECT array_agg(u.oi::float8 / p.p ORDER BY u.i) AS open,
             array_agg({_CANDLE['high']}::float8 / p.p ORDER BY u.i) AS high,
             array_agg({_CANDLE['low']}::float8 / p.p ORDER BY u.i) AS low,
             array_agg({_CANDLE['close']}::float8 / p.p ORDER BY u.i) AS close,
             array_agg(u.vi::float8 / p.pv ORDER BY u.i) AS volume
      FROM unnest(b.open_scaled, b.body, b.upper_wick, b.lower_wick, b.volume_scaled)
           WITH ORDINALITY u(oi, bd, uw, lw, vi, i),
           LATERAL (SELECT power(10::float8, b.scale) AS p,
                           power(10::float8, b.volume_scale) AS pv) p
      WHERE b.scale IS NOT NULL) d ON true"""


_PAST = "AND (%(past)s::date IS NULL OR b.session > %(past)s::date)"


def arrays_sql(timeframe: str) -> str:
    """One row per stored session of ``%(symbol)s`` from the first session a
    cursor ``%(after)s`` can need (and after ``%(past)s``, NULL: any) to
    ``%(end)s``, oldest first, at most ``%(sessions)s`` of them: (session,
    scale, *ARRAY_COLUMNS, volume_scale, vwap_scale, packed, bars), the arrays
    and the packed numbers (``store.packed``) as stored (a NULL element stays NULL:
    replacing it in SQL would rebuild every array, a quarter of the time of
    the whole read; ``ops.arrowbars`` decodes them). Rollups have no scale
    (NULL: the floats as they are), no raw, no invalid bar and no candle."""
    if timeframe == "1m":
        return f"""SELECT b.session, b.scale, b.minutes, b.open, b.high, b.low, b.close,
                          b.volume, b.vwap, b.raw, b.trades, b.invalid, b.body,
                          b.upper_wick, b.lower_wick, b.volume_scale, b.vwap_scale,
                          b.packed, cardinality(b.minutes)
                   FROM minute_bars b
                   WHERE b.symbol = %(symbol)s
                     AND b.session BETWEEN {_FIRST_SESSION} AND %(end)s {_PAST}
                   ORDER BY b.session LIMIT %(sessions)s"""
    if timeframe not in ROLLUPS:
        raise ValueError(f"{timeframe!r} is no intraday timeframe (1m, {', '.join(ROLLUPS)})")
    return f"""SELECT b.session, NULL::int2, b.starts, coalesce(b.open, d.open),
                      coalesce(b.high, d.high), coalesce(b.low, d.low),
                      coalesce(b.close, d.close), coalesce(b.volume, d.volume), b.vwap,
                      NULL::float8[], b.trades, '{{}}'::int2[],
                      NULL::int2[], NULL::int2[], NULL::int2[], NULL::int2, NULL::int2,
                      NULL::bytea, cardinality(b.starts)
               FROM rollup_bars b {_ROLLUP_FLOATS}
               WHERE b.symbol = %(symbol)s AND b.timeframe = %(tf)s
                 AND b.session BETWEEN {_FIRST_SESSION} AND %(end)s {_PAST}
               ORDER BY b.session LIMIT %(sessions)s"""


class _ArrayBytes(Loader):
    """An array in PostgreSQL's binary form, as its bytes (decoded by numpy
    in ``ops.arrowbars``, not element by element into Python objects)."""

    format = Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


#: int2[], int4[], int8[], float8[]
_ARRAY_OIDS = (1005, 1007, 1016, 1022)


#: Minute sessions read per query by ``session_arrays`` for a page (about
#: 15,000-40,000 bars); a rollup reads as many bars' worth of sessions.
SESSIONS_PER_READ = 40
#: Sessions per result of a streamed read (one result per row costs more
#: than decoding the row).
STREAM_ROWS = 32


def session_arrays(conn: Connection[Any], timeframe: str,
                   params: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """The stored sessions of one symbol's intraday ``timeframe`` bars as they
    are stored, one row per session (see ``arrays_sql``; parameters symbol,
    start, end, after, tz, limit), each array as the bytes of its binary form.
    Without a limit (the bulk answer, the export) one query streamed: the
    server reads ahead while the caller decodes, and closing the iterator
    early cancels the query. With a limit (a page) ``SESSIONS_PER_READ``
    minute sessions' worth first, then as many sessions as the bars still
    wanted need at the bars per session just read, each query streamed too
    (the caller decodes and encodes while the server sends the rest): the
    page stops after the query that completes it, whose few sessions left
    are received rather than the query cancelled."""
    sql = arrays_sql(timeframe)
    cur = conn.cursor(binary=True)
    for oid in _ARRAY_OIDS:
        cur.adapters.register_loader(oid, _ArrayBytes)
    base = {**params, "tf": timeframe, "past": None, "sessions": None}
    with cur:
        if params.get("limit") is None:
            yield from cur.stream(sql, base, size=STREAM_ROWS)
            return
        first = SESSIONS_PER_READ * ROLLUPS.get(timeframe, 1)
        per_read, left = first, params["limit"]
        while True:
            rows = []
            stream = cur.stream(sql, {**base, "sessions": per_read}, size=STREAM_ROWS)
            try:
                for row in stream:
                    rows.append(row)
                    yield row
            except GeneratorExit:
                # the page is full: the sessions left of this read are few
                # (it asks for about as many as the page needs), so they are
                # received rather than the query cancelled (a connection of
                # its own to the server)
                for _ in stream:
                    pass
                raise
            if len(rows) < per_read:
                return
            base["past"] = rows[-1][0]
            # the next read: the sessions the bars still wanted need, at this
            # read's bars per session (fewer when some are dropped: one more read)
            bars = sum(r[-1] for r in rows)
            left -= bars
            per_read = max(first, math.ceil(left * len(rows) / max(bars, 1)) + 1)


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
    sql = f"SELECT coalesce(sum(n), 0) FROM ({_per_day_sql(timeframe, include_invalid)}) c"
    return int(one_row(conn.execute(sql, p))[0])


def last_day_within(conn: Connection[Any], timeframe: str, symbols: list[str],
                    start: dt.date, end: dt.date, include_invalid: bool, limit: int, *,
                    tz: str) -> tuple[dt.date, int] | None:
    """(the last day d of start..end whose bars of start..d are at most
    ``limit``, counted as ``count_rows`` does, and their number), or None
    when the first day with bars alone has more: how a request over a limit
    can be cut (a week counts on its Sunday)."""
    p = {"symbols": symbols, "start": start, "end": end, "tf": timeframe, "tz": tz}
    sql = f"SELECT day, n FROM ({_per_day_sql(timeframe, include_invalid)}) c ORDER BY day"
    total, last = 0, None
    for day, n in conn.execute(sql, p):
        if total + n > limit:
            break
        total, last = total + n, (day, total + n)
    return last


def _per_day_sql(timeframe: str, include_invalid: bool) -> str:
    """The bars of ``count_rows`` by day (columns day and n; a week on its Sunday)."""
    if timeframe == "1m":
        bad = "" if include_invalid else " - cardinality(invalid)"
        return f"""SELECT session AS day, sum(cardinality(minutes){bad}) AS n FROM minute_bars
                   WHERE symbol = ANY(%(symbols)s) AND session BETWEEN %(start)s AND %(end)s
                   GROUP BY session"""
    if kind_of(timeframe) == "intraday":
        return """SELECT session AS day, sum(cardinality(starts)) AS n FROM rollup_bars
                  WHERE symbol = ANY(%(symbols)s) AND timeframe = %(tf)s
                    AND session BETWEEN %(start)s AND %(end)s
                  GROUP BY session"""
    valid = "" if include_invalid else "AND validated"
    day = "d" if timeframe == "1d" else "d - extract(dow FROM d)::int"
    what = "count(*)" if timeframe == "1d" else "count(DISTINCT symbol)"  # a bar a week
    return f"""SELECT w AS day, {what} AS n FROM (
                 SELECT symbol, {day} AS w FROM (
                   SELECT symbol, (ts AT TIME ZONE %(tz)s)::date AS d
                   FROM market_data
                   WHERE symbol = ANY(%(symbols)s) AND timeframe = '1d'
                     AND ts >= (%(start)s::date::timestamp AT TIME ZONE %(tz)s)
                     AND ts < ((%(end)s::date + 1)::timestamp AT TIME ZONE %(tz)s)
                     {valid}) q) q2
               GROUP BY w"""


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
