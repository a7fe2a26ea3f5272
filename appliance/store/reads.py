"""Reading candles: the historical endpoint's SQL (adjusted on read), gaps,
invalid candles and the chart series."""
from __future__ import annotations

import datetime as dt
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from appliance.store import adjustment as adj
from appliance.store.writes import TIMEFRAME


def _historical_select(adjust: str | bool | None, include_invalid: bool, limited: bool = True) -> str:
    """Candles of one symbol between two session dates (both inclusive).

    ``adjust``: a mode of ``core.adjustment`` (or the older bool: True is
    ``splits``). Unadjusted prices (``none``) are the stored values,
    untouched. Adjusted prices are ``price * kp`` and volume ``volume / kv``,
    the factors of the bar's session from ``adjustment_steps`` (see
    ``store.adjustment``). Parameters: symbol, tf, start, end, limit, tz (the
    exchange time zone, ``calendar.exchange_tz``).
    """
    session = "(m.ts AT TIME ZONE %(tz)s)::date"
    if adj.adjusted(adjust):
        with_ = f"WITH {adj.steps_cte(adjust)}"
        factor = adj.factor_join(adjust, session)
        cols = """m.open * f.kp AS open, m.high * f.kp AS high, m.low * f.kp AS low,
               m.close * f.kp AS close, m.volume / f.kv AS volume, m.vwap * f.kp AS vwap"""
    else:
        with_, factor = "", ""
        cols = "m.open, m.high, m.low, m.close, m.volume, m.vwap"
    valid = "" if include_invalid else "AND m.validated"
    return f"""{with_}
        SELECT {session} AS time,
               {cols},
               m.trades, m.validated, m.quality_score, m.gap_detected, m.gap_kind, m.source,
               m.issues
        FROM market_data m {factor}
        WHERE m.symbol = %(symbol)s AND m.timeframe = %(tf)s
          AND m.ts >= (%(start)s::date::timestamp AT TIME ZONE %(tz)s)
          AND m.ts < ((%(end)s::date + 1)::timestamp AT TIME ZONE %(tz)s)
          {valid}
        ORDER BY m.ts
        {"LIMIT %(limit)s" if limited else ""}"""


def _finite(col: str) -> str:
    """NULL for NaN/Infinity: JSON has no such numbers."""
    return f"CASE WHEN {col} IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE {col} END"


#: The answer's fields in order, with how each is written as JSON text.
_JSON_FIELDS = (("time", "text"), ("open", "num"), ("high", "num"), ("low", "num"),
                ("close", "num"), ("volume", "num"), ("vwap", "num"), ("validated", "bool"),
                ("quality_score", "num"), ("gap_detected", "bool"), ("gap_kind", "text"),
                ("source", "text"))


def _json_value(col: str, kind: str) -> str:
    """SQL giving ``col`` as JSON text (never NULL: JSON ``null`` instead)."""
    if kind == "num":
        return f"coalesce(({_finite(col)})::text, 'null')"
    if kind == "bool":
        return f"CASE WHEN {col} THEN 'true' WHEN NOT {col} THEN 'false' ELSE 'null' END"
    return f"coalesce(to_json({col})::text, 'null')"


def historical_json_sql(adjust: str | bool | None, include_invalid: bool) -> str:
    """SQL returning one JSON text per candle, in the API's field order, and
    the symbol's ticker history (``TICKERS_SQL``) beside it.

    PostgreSQL prints float8 with the shortest text that reads back as the
    same double, so a price comes back exactly as the vendor sent it. The
    text is put together by concatenation, byte for byte what
    ``json_build_object(...)::text`` gives (``{"time" : "2024-01-02", ...}``;
    tests/integration/test_historical_json.py holds the two side by side),
    at about half its cost in the server: this is the hot path of
    ``/api/v1/historical``, measured in bench/README.md ("The tail").
    """
    inner = _historical_select(adjust, include_invalid)
    text, sep = [], "{"
    for name, kind in _JSON_FIELDS:
        text.append(f"""'{sep}"{name}" : ' || {_json_value(name, kind)}""")
        sep = ", "
    return f"""SELECT {" || ".join(text)} || '}}', {TICKERS_SQL}
               FROM ({inner}) q"""


#: The tickers a renamed symbol's security had, as JSON text
#: (``[{"ticker", "from", "to"}, ...]``, oldest first), or NULL for a symbol
#: with one ticker or none: the second column of ``historical_json_sql``'s
#: rows (a subquery on the parameter alone, so the server computes it once
#: per query), which saves the answer a round trip of its own.
TICKERS_SQL = """(SELECT json_agg(json_build_object('ticker', ticker, 'from', valid_from,
                                                  'to', valid_to) ORDER BY valid_from)::text
                  FROM security_tickers WHERE symbol = %(symbol)s HAVING count(*) > 1)"""


def _csv_text(col: str) -> str:
    """A text column as a CSV field: quoted only when it needs to be."""
    return (f"""CASE WHEN {col} ~ E'[",\\r\\n]' THEN '"' || replace({col}, '"', '""') || '"' """
            f"ELSE {col} END")


def historical_csv_sql(adjust: str | bool | None, include_invalid: bool) -> str:
    """SQL returning one CSV line (with its newline) per candle, columns as in
    ``HISTORICAL_CSV_HEADER``; booleans ``true``/``false``, NULL as empty."""
    inner = _historical_select(adjust, include_invalid)
    b = "CASE WHEN {0} THEN 'true' ELSE 'false' END".format
    return f"""SELECT format(E'%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s\\n',
                      time, open, high, low, close, volume, vwap, {b('validated')},
                      quality_score, {b('gap_detected')}, {_csv_text('gap_kind')},
                      {_csv_text('source')})
               FROM ({inner}) q"""


HISTORICAL_CSV_HEADER = ("time", "open", "high", "low", "close", "volume", "vwap", "validated",
                         "quality_score", "gap_detected", "gap_kind", "source")


def invalid_candles(conn: Connection[Any], symbol: str, limit: int = 500, *, tz: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT (ts AT TIME ZONE %(tz)s)::date AS time, open, high, low, close,
                      volume, issues, quality_score
               FROM market_data WHERE symbol = %(symbol)s AND NOT validated
               ORDER BY ts DESC LIMIT %(limit)s""",
            {"symbol": symbol, "limit": limit, "tz": tz})
        return cur.fetchall()


def gaps(conn: Connection[Any], *, symbol: str | None = None, kind: str | None = None,
         since: dt.date | None = None, until: dt.date | None = None, limit: int = 500,
         tz: str) -> list[dict[str, Any]]:
    """Flagged candles (split / jump) and missing sessions, newest first, with
    the vendor split that explains a split gap."""
    params = {"symbol": symbol, "kind": kind, "since": since, "until": until, "limit": limit,
              "tz": tz}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT * FROM (
                 SELECT m.symbol, (m.ts AT TIME ZONE %(tz)s)::date AS session,
                        m.gap_kind AS kind, '1d' AS timeframe, m.gap_pct AS jump_pct,
                        m.close, m.open,
                        sp.split_from, sp.split_to
                 FROM market_data m
                 LEFT JOIN splits sp ON sp.symbol = m.symbol
                      AND sp.execution_date = (m.ts AT TIME ZONE %(tz)s)::date
                 WHERE m.gap_detected
                   AND (%(symbol)s::text IS NULL OR m.symbol = %(symbol)s)
                   AND (%(kind)s::text IS NULL OR m.gap_kind = %(kind)s)
                   AND (%(since)s::date IS NULL
                        OR m.ts >= (%(since)s::date::timestamp AT TIME ZONE %(tz)s))
                   AND (%(until)s::date IS NULL
                        OR m.ts < ((%(until)s::date + 1)::timestamp AT TIME ZONE %(tz)s))
                 UNION ALL
                 SELECT ms.symbol, ms.session, 'missing', ms.timeframe, NULL, NULL, NULL, NULL,
                        NULL
                 FROM missing_sessions ms
                 WHERE (%(kind)s::text IS NULL OR %(kind)s = 'missing')
                   AND (%(symbol)s::text IS NULL OR ms.symbol = %(symbol)s)
                   AND (%(since)s::date IS NULL OR ms.session >= %(since)s)
                   AND (%(until)s::date IS NULL OR ms.session <= %(until)s)
               ) g ORDER BY session DESC, symbol LIMIT %(limit)s""", params)
        return cur.fetchall()


def chart_series(conn: Connection[Any], symbol: str, *, adjust: str | bool | None, limit: int = 5000,
                 end: dt.date | None = None, tz: str) -> list[dict[str, Any]]:
    """The latest ``limit`` daily candles up to ``end`` (None: the latest),
    invalid ones included, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_historical_select(adjust, True),
                    {"symbol": symbol, "tf": TIMEFRAME, "start": dt.date(1900, 1, 1),
                     "end": end or dt.date(2999, 12, 31), "limit": None, "tz": tz})
        rows = cur.fetchall()
    return rows[-limit:]


def daily_hlv(conn: Connection[Any], symbol: str, start: dt.date, end: dt.date, *, tz: str) -> dict[str, Any]:
    """{session: (high, low, volume)} of the valid daily bars in a range."""
    rows = conn.execute(
        """SELECT (ts AT TIME ZONE %(tz)s)::date, high, low, volume
           FROM market_data
           WHERE symbol = %(symbol)s AND timeframe = '1d' AND validated
             AND ts >= (%(start)s::date::timestamp AT TIME ZONE %(tz)s)
             AND ts < ((%(end)s::date + 1)::timestamp AT TIME ZONE %(tz)s)""",
        {"symbol": symbol, "start": start, "end": end, "tz": tz}).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def weekly_sql(adjust: str | bool | None, include_invalid: bool, fmt: str) -> str:
    """Weekly bars from the daily ones (weeks start on Sunday, labelled with
    that date), SQL returning (epoch_ms, text) like ``minutes.intraday_sql``.
    Parameters: symbol, tf ('1d'), start, end, after (a week or NULL), limit."""
    inner = _historical_select(adjust, include_invalid, limited=False)
    weeks = f"""SELECT d.time - extract(dow FROM d.time)::int AS week,
                   (array_agg(d.open ORDER BY d.time))[1] AS open, max(d.high) AS high,
                   min(d.low) AS low, (array_agg(d.close ORDER BY d.time DESC))[1] AS close,
                   sum(d.volume) AS volume,
                   sum(d.vwap * d.volume) FILTER (WHERE d.vwap IS NOT NULL)
                     / nullif(sum(d.volume) FILTER (WHERE d.vwap IS NOT NULL), 0) AS vwap,
                   sum(d.trades) AS trades, count(*) AS sessions
            FROM ({inner}) d GROUP BY 1"""
    f = _finite
    if fmt == "columns":  # typed columns (store.columnar)
        text = "w.week, w.open, w.high, w.low, w.close, w.volume, w.vwap, w.trades, w.sessions"
    elif fmt == "csv":
        text = ("format(E'%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s\\n', w.week, w.open, w.high, "
                "w.low, w.close, w.volume, w.vwap, w.trades, w.sessions)")
    else:
        text = (f"""json_build_object('time', w.week, 'open', {f('w.open')},
                    'high', {f('w.high')}, 'low', {f('w.low')}, 'close', {f('w.close')},
                    'volume', {f('w.volume')}, 'vwap', {f('w.vwap')}, 'trades', w.trades,
                    'sessions', w.sessions)::text""")
    return f"""SELECT (extract(epoch FROM w.week::timestamp) * 1000)::bigint, {text}
               FROM ({weeks}) w
               WHERE (%(after)s::date IS NULL OR w.week > %(after)s::date)
               ORDER BY w.week LIMIT %(limit)s"""


WEEKLY_CSV_HEADER = ("time", "open", "high", "low", "close", "volume", "vwap", "trades",
                     "sessions")
