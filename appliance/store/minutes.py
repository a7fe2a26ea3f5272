"""Intraday bars in and out: one-minute bars one row per symbol-session
(``minute_bars``), their 5m..4h rollups (``rollup_bars``), per-symbol minute
stats and checkpoints. The layout and its exactness rule are described in
``migrations/0003_intraday.sql``, its candles in ``0013_minute_offsets.sql``,
the yearly partitions of minute_bars (and why) in
``0012_minute_partitions.sql``; the labelling rules in ``timeframes``.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from psycopg import Connection, Cursor, sql
from psycopg.rows import dict_row

from appliance.core.timeframes import ROLLUPS
from appliance.store import adjustment as adj
from appliance.store import maintenance as mnt
from appliance.store import minutecopy, packed
from appliance.store import pool as db
from appliance.store.minutecopy import COLUMNS as _STAGE
from appliance.store.minutecopy import MinuteSession
from appliance.store.pool import one_row


def ensure_partitions_for(conn: Connection[Any], first: dt.date, last: dt.date) -> None:
    """The yearly partitions of minute_bars for the sessions ``first``..``last``:
    called before a write reads or writes minute_bars in its transaction
    (creating a partition locks the table to the end of the transaction)."""
    db.ensure_partitions(conn, first.year, last.year, "minute_bars")


def write_days(conn: Connection[Any], sessions: Iterable[MinuteSession], *, revisions: bool = False,
               run_id: int | None = None, stats: dict[str, Any] | None = None,
               tz: str | None = None, rollups: bool = False,
               new: Callable[[MinuteSession], bool] | None = None) -> int:
    """Upsert whole sessions; a stored session is replaced by the new one.
    With ``revisions``, every bar whose prices or volume the new session
    changes (or adds, or drops) is first recorded in ``revisions``
    (``_record_revisions``, at the exchange time zone ``tz``; their number
    goes to ``stats["revised"]``). With ``rollups``, the sessions' 5m..4h
    rollups are replaced by those computed from the sessions' arrays
    (``core.rollups``: the bars ``refresh_rollups_of`` would give).
    Sessions are encoded ``minutecopy.CHUNK`` at a time into one binary COPY
    (``minutecopy.copy_sessions``), their rollups computed during their own
    (``minutecopy.copy_rollups``).

    ``new`` (without ``revisions``): the sessions it says are not stored
    are copied straight into minute_bars, the others through the stage's
    upsert; their partitions must exist (``ensure_partitions_for``). A
    session it wrongly calls new fails the write (a unique violation) and
    nothing of it is stored. Returns sessions written."""
    if new is not None and revisions:
        raise ValueError("write_days: sessions copied straight in have no revisions")
    # the stage compresses like minute_bars: INSERT ... SELECT moves the
    # compressed values as they are
    conn.execute("""CREATE TEMP TABLE IF NOT EXISTS minute_stage
                    (LIKE minute_bars INCLUDING DEFAULTS INCLUDING COMPRESSION)
                    ON COMMIT DELETE ROWS""")
    conn.execute("TRUNCATE minute_stage")
    cols = sql.SQL(", ").join(map(sql.Identifier, _STAGE))
    updates = sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
                                 for c in _STAGE[2:])
    spool = minutecopy.RollupSpool() if rollups else None
    try:
        with conn.cursor() as cur:
            direct = minutecopy.copy_sessions(cur, sessions, new=new, spool=spool)
            # the callers ensure their sessions' partitions before this;
            # whatever they missed is created here rather than failing the write
            first, last = one_row(cur.execute(
                "SELECT min(session), max(session) FROM minute_stage"))
            if first is not None:
                ensure_partitions_for(conn, first, last)
            kept = _keep_richer(cur) if first is not None else []
            if spool is not None:
                minutecopy.copy_rollups(cur, spool)
                for sym in {k[0] for k in kept}:  # theirs, from their stored minutes
                    refresh_rollups_of(conn, [sym], [k[1] for k in kept if k[0] == sym])
            if revisions:
                if tz is None:
                    raise ValueError("write_days: revisions need the exchange time zone (tz)")
                n = _record_revisions(cur, run_id, tz)
                if stats is not None:
                    stats["revised"] = n
            if first is None:
                return direct
            cur.execute(sql.SQL("""INSERT INTO minute_bars ({cols})
                                   SELECT {cols} FROM minute_stage
                                   ON CONFLICT (symbol, session) DO UPDATE SET
                                     {updates}, ingested_at = now()""").format(
                cols=cols, updates=updates))
            return direct + cur.rowcount
    finally:
        if spool is not None:
            spool.close()


def _keep_richer(cur: Cursor[Any]) -> list[tuple[str, dt.date]]:
    """Drop from the stage the sessions that say less than the stored ones
    (``writes._SAYS_LESS`` for minutes: a flat file's session, without vwap,
    of a session stored from the REST API with it): every bar's open, high,
    low, close and volume the same, and a vwap or trade count only the stored
    one has. Returns their (symbol, session): they stay as stored."""
    return cur.execute(f"""
        WITH k AS (SELECT b.symbol, b.session FROM minute_bars b
                   JOIN minute_stage s ON s.symbol = b.symbol AND s.session = b.session),
        o AS (SELECT b.symbol, b.session, u.m, {_decoded()} FROM minute_bars b
              JOIN k ON k.symbol = b.symbol AND k.session = b.session {_UNNEST}),
        n AS (SELECT b.symbol, b.session, u.m, {_decoded()} FROM minute_stage b
              JOIN k ON k.symbol = b.symbol AND k.session = b.session {_UNNEST}),
        j AS (SELECT coalesce(o.symbol, n.symbol) AS symbol,
                     coalesce(o.session, n.session) AS session,
                     (o.open, o.high, o.low, o.close, o.volume)
                       IS DISTINCT FROM (n.open, n.high, n.low, n.close, n.volume) AS differs,
                     o.vwap IS NOT NULL AS ov, n.vwap IS NOT NULL AS nv,
                     o.trades IS NOT NULL AS ot, n.trades IS NOT NULL AS nt
              FROM o FULL JOIN n ON o.symbol = n.symbol AND o.session = n.session
                                AND o.m = n.m),
        keep AS (SELECT symbol, session FROM j GROUP BY 1, 2
                 HAVING NOT bool_or(differs) AND ((bool_or(ov) AND NOT bool_or(nv))
                                                  OR (bool_or(ot) AND NOT bool_or(nt))))
        DELETE FROM minute_stage s USING keep
        WHERE s.symbol = keep.symbol AND s.session = keep.session
        RETURNING s.symbol, s.session""").fetchall()


def _record_revisions(cur: Cursor[Any], run_id: int | None, tz: str) -> int:
    """Bars of the staged sessions (``minute_stage``) that differ from the
    stored ones, in open, high, low, close or volume, recorded in
    ``revisions`` (a bar only on one side has ``{}`` on the other)."""
    def obj(a: str) -> str:
        return (f"CASE WHEN {a}.symbol IS NULL THEN '{{}}'::jsonb ELSE jsonb_build_object("
                f"'open', {a}.open, 'high', {a}.high, 'low', {a}.low, 'close', {a}.close, "
                f"'volume', {a}.volume, 'vwap', {a}.vwap, 'trades', {a}.trades) END")
    cur.execute(f"""
        WITH k AS (SELECT DISTINCT symbol, session FROM minute_stage),
        o AS (SELECT b.symbol, b.session, u.m, {_decoded()}
              FROM minute_bars b JOIN k ON k.symbol = b.symbol AND k.session = b.session
              {_UNNEST}),
        n AS (SELECT b.symbol, b.session, u.m, {_decoded()} FROM minute_stage b {_UNNEST})
        INSERT INTO revisions (symbol, timeframe, ts, old, new, run_id)
        SELECT coalesce(o.symbol, n.symbol), '1m',
               ((coalesce(o.session, n.session) + make_interval(mins => coalesce(o.m, n.m)::int))
                 ::timestamp AT TIME ZONE %s), {obj('o')}, {obj('n')}, %s
        FROM o FULL JOIN n ON o.symbol = n.symbol AND o.session = n.session AND o.m = n.m
        WHERE (o.open, o.high, o.low, o.close, o.volume)
              IS DISTINCT FROM (n.open, n.high, n.low, n.close, n.volume)""", (tz, run_id))
    return cur.rowcount


def candle_sql(open_: str, body: str, upper: str, lower: str) -> dict[str, str]:
    """SQL of a stored candle's close, high and low (integers, 0013 and 0014)
    from its open, body and wicks: the one place the layout is undone in SQL."""
    close = f"({open_} + {body})"
    return {"close": close, "high": f"(greatest({open_}, {close}) + {upper})",
            "low": f"(least({open_}, {close}) - {lower})"}


def _decoded(alias: str = "b") -> str:
    """Per-bar decoded columns of ``unnest(...) WITH ORDINALITY u`` (``_UNNEST``):
    a scaled session's integers over 10^scale (close, high and low rebuilt
    from the candle's body and wicks where the session has them; the volume
    and vwap over 10^volume_scale and 10^vwap_scale, NULL: the prices' scale;
    ``0013_minute_offsets.sql``), or a raw session's floats."""
    b = alias
    p = f"power(10::float8, {b}.scale)"
    pv = f"power(10::float8, coalesce({b}.volume_scale, {b}.scale))"
    pw = f"power(10::float8, coalesce({b}.vwap_scale, {b}.scale))"
    candle = candle_sql("u.o", "u.bd", "u.uw", "u.lw")
    ints = {"o": "u.o", "c": f"coalesce(u.c, {candle['close']})",
            "h": f"coalesce(u.h, {candle['high']})",
            "lo": f"coalesce(u.lo, {candle['low']})", "vw": "u.vw"}

    def col(name: str, row: int) -> str:
        return (f"CASE WHEN {b}.scale IS NULL THEN {b}.raw[{row}][u.i] "
                f"ELSE {ints[name]}::float8 / {pw if name == 'vw' else p} END")

    volume = f"CASE WHEN {b}.scale IS NULL THEN {b}.raw[5][u.i] ELSE u.v::float8 / {pv} END"
    return (f"{col('o', 1)} AS open, {col('h', 2)} AS high, {col('lo', 3)} AS low, "
            f"{col('c', 4)} AS close, {volume} AS volume, {col('vw', 6)} AS vwap, "
            f"u.n AS trades, NOT ((u.i - 1)::smallint = ANY({b}.invalid)) AS validated")


_UNNEST = packed.UNNEST  # each bar of the sessions b as u (for _decoded)
_ROLLUP_UNNEST = ("CROSS JOIN LATERAL unnest(b.starts, b.open, b.high, b.low, b.close, "
                  "b.volume, b.vwap, b.trades, b.open_scaled, b.volume_scaled, b.body, "
                  "b.upper_wick, b.lower_wick) u(m, o, h, lo, c, v, vw, n, oi, vi, bd, uw, lw)")


def _rollup_decoded() -> str:
    """Per-bar prices of ``_ROLLUP_UNNEST``: a float row's as they are, a
    candle row's rebuilt from its integers (``0014_rollup_candles.sql``)."""
    p = "power(10::float8, b.scale)"
    ints = {"open": "u.oi", **candle_sql("u.oi", "u.bd", "u.uw", "u.lw")}
    cols = [f"CASE WHEN b.scale IS NULL THEN u.{f} ELSE ({ints[name]})::float8 / {p} END "
            f"AS {name}" for name, f in (("open", "o"), ("high", "h"), ("low", "lo"),
                                         ("close", "c"))]
    cols.append("CASE WHEN b.scale IS NULL THEN u.v "
                "ELSE u.vi::float8 / power(10::float8, b.volume_scale) END AS volume")
    return ", ".join(cols) + ", u.vw AS vwap"


_ROLLUP_DECODED = _rollup_decoded()


def refresh_rollups(conn: Connection[Any], symbol: str, sessions: Sequence[dt.date]) -> int:
    """Recompute the 5m..4h rollups of ``symbol`` for ``sessions`` (see
    ``refresh_rollups_of``). Returns rollup rows written."""
    return refresh_rollups_of(conn, [symbol], sessions)


def refresh_rollups_of(conn: Connection[Any], symbols: Sequence[str], sessions: Sequence[dt.date]) -> int:
    """Recompute the 5m..4h rollups of ``symbols`` for ``sessions`` from their
    valid minute bars (a session without minutes loses its rollups). Minutes
    are grouped once, into 5m bars; the wider bars are grouped from those (a
    fifth of the rows), carrying the volume-weighted price sums so that every
    width's vwap is that of its minutes. A bucket's open and close are those of
    its first and last minute, taken as ``min(ARRAY[minute, open])`` rather
    than an ordered aggregate: no sort per bucket, a third less time.
    Returns rollup rows written."""
    if not sessions or not symbols:
        return 0
    base, *wider = ROLLUPS.items()
    assert all(w % base[1] == 0 for _, w in wider), "every rollup must be a multiple of the first"
    widths = sql.SQL(", ").join(sql.SQL("({}, {})").format(sql.Literal(tf), sql.Literal(w))
                                for tf, w in wider)
    params = {"symbols": list(symbols), "sessions": list(sessions)}
    conn.execute("""DELETE FROM rollup_bars WHERE symbol = ANY(%(symbols)s::text[])
                    AND session = ANY(%(sessions)s::date[])""", params)
    cur = conn.execute(sql.SQL("""
        WITH m AS (
          SELECT b.symbol, b.session, u.m, {decoded}
          FROM minute_bars b {unnest}
          WHERE b.symbol = ANY(%(symbols)s::text[]) AND b.session = ANY(%(sessions)s::date[])),
        f AS (
          SELECT m.symbol, m.session, (m.m / {width}) * {width} AS start,
                 (min(ARRAY[m.m::float8, m.open]))[2] AS open, max(m.high) AS high,
                 min(m.low) AS low, (max(ARRAY[m.m::float8, m.close]))[2] AS close,
                 sum(m.volume) AS volume,
                 sum(m.vwap * m.volume) FILTER (WHERE m.vwap IS NOT NULL) AS pv,
                 sum(m.volume) FILTER (WHERE m.vwap IS NOT NULL) AS vv,
                 sum(m.trades) AS trades
          FROM m WHERE m.validated
          GROUP BY m.symbol, m.session, (m.m / {width}) * {width}),
        k AS (
          SELECT {name}::text AS name, * FROM f
          UNION ALL
          SELECT tf.name, f.symbol, f.session, (f.start / tf.width) * tf.width,
                 (min(ARRAY[f.start::float8, f.open]))[2], max(f.high), min(f.low),
                 (max(ARRAY[f.start::float8, f.close]))[2], sum(f.volume), sum(f.pv),
                 sum(f.vv), sum(f.trades)
          FROM f CROSS JOIN (VALUES {widths}) tf(name, width)
          GROUP BY tf.name, f.symbol, f.session, (f.start / tf.width) * tf.width)
        INSERT INTO rollup_bars (symbol, timeframe, session, starts, open, high, low, close,
                                 volume, vwap, trades)
        SELECT symbol, name, session, array_agg(start::smallint ORDER BY start),
               array_agg(open ORDER BY start), array_agg(high ORDER BY start),
               array_agg(low ORDER BY start), array_agg(close ORDER BY start),
               array_agg(volume ORDER BY start), array_agg(pv / nullif(vv, 0) ORDER BY start),
               array_agg(trades ORDER BY start)
        FROM k GROUP BY symbol, name, session""").format(
        decoded=sql.SQL(_decoded()), unnest=sql.SQL(_UNNEST), width=sql.Literal(base[1]),
        name=sql.Literal(base[0]), widths=widths), params)
    return cur.rowcount


# -- reads ----------------------------------------------------------------------

# The first session to read: ``start``, or with a cursor the New York date of
# the cursor's time if later (a bar's time falls on its session's date), so a
# late cursor reads its sessions only, not every one from ``start`` on.
_FIRST_SESSION = """greatest(%(start)s::date, coalesce(
      (%(after)s::timestamptz AT TIME ZONE %(tz)s)::date, %(start)s::date))"""


def _source(timeframe: str, adjust: str | bool | None, include_invalid: bool) -> str:
    """Bars of one symbol (session, minute, ts, prices, trades, validated),
    parameters symbol, start, end (sessions), after (timestamptz or NULL),
    tz (the exchange time zone, ``calendar.exchange_tz``); ``adjust`` a mode of
    ``core.adjustment`` (or the older bool)."""
    if timeframe != "1m" and timeframe not in ROLLUPS:
        raise ValueError(f"{timeframe!r} is no intraday timeframe (1m, {', '.join(ROLLUPS)})")
    factor = adj.factor_join(adjust, "b.session")
    tf = sql.Literal(timeframe).as_string(None)  # quoted by psycopg, not by hand
    if timeframe == "1m":
        inner = f"""SELECT b.session, u.m, f.kp, f.kv, {_decoded()}
                    FROM minute_bars b {factor} {_UNNEST}
                    WHERE b.symbol = %(symbol)s
                      AND b.session BETWEEN {_FIRST_SESSION} AND %(end)s"""
    else:
        inner = f"""SELECT b.session, u.m, f.kp, f.kv, {_ROLLUP_DECODED}, u.n AS trades,
                           true AS validated
                    FROM rollup_bars b {factor} {_ROLLUP_UNNEST}
                    WHERE b.symbol = %(symbol)s AND b.timeframe = {tf}
                      AND b.session BETWEEN {_FIRST_SESSION} AND %(end)s"""
    valid = "" if include_invalid else "WHERE q.validated"
    with_ = f"WITH {adj.steps_cte(adjust)}" if adj.adjusted(adjust) else ""
    return f"""{with_}
        SELECT * FROM (
          SELECT q.session, q.m,
                 ((q.session + make_interval(mins => q.m::int))::timestamp
                   AT TIME ZONE %(tz)s) AS ts,
                 q.open * q.kp AS open, q.high * q.kp AS high, q.low * q.kp AS low,
                 q.close * q.kp AS close, q.volume / q.kv AS volume, q.vwap * q.kp AS vwap,
                 q.trades, q.validated
          FROM ({inner}) q {valid}) z
        WHERE (%(after)s::timestamptz IS NULL OR z.ts > %(after)s::timestamptz)
        ORDER BY z.ts
        LIMIT %(limit)s"""


def _local_iso(alias: str = "z") -> str:
    """ISO 8601 New York wall time with its offset, e.g. 2024-03-01T09:30:00-05:00."""
    lt = f"({alias}.session + make_interval(mins => {alias}.m::int))::timestamp"
    return (f"to_char({lt}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || "
            f"to_char({lt} - ({alias}.ts AT TIME ZONE 'UTC'), 'HH24:MI')")


def _finite(col: str) -> str:
    return f"CASE WHEN {col} IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE {col} END"


INTRADAY_CSV_HEADER = ("time", "session", "open", "high", "low", "close", "volume", "vwap",
                       "trades", "validated")


def intraday_sql(timeframe: str, *, adjust: str | bool | None, include_invalid: bool, fmt: str) -> str:
    """SQL returning (epoch_ms, text) per bar: a JSON object or a CSV line."""
    src = _source(timeframe, adjust, include_invalid)
    t = _local_iso()
    ms = "(extract(epoch FROM z.ts) * 1000)::bigint"
    f = _finite
    if fmt == "csv":
        text = (f"""format(E'%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s\\n', {t}, z.session,
                    z.open, z.high, z.low, z.close, z.volume, z.vwap, z.trades,
                    CASE WHEN z.validated THEN 'true' ELSE 'false' END)""")
    else:
        text = (f"""json_build_object('time', {t}, 'session', z.session,
                    'open', {f('z.open')}, 'high', {f('z.high')}, 'low', {f('z.low')},
                    'close', {f('z.close')}, 'volume', {f('z.volume')},
                    'vwap', {f('z.vwap')}, 'trades', z.trades,
                    'validated', z.validated)::text""")
    return f"SELECT {ms}, {text} FROM ({src}) z"


# -- stats, coverage, checkpoints, retention -------------------------------------

def stored_minute_sessions(conn: Connection[Any], symbol: str) -> np.ndarray:
    rows = conn.execute("SELECT session FROM minute_bars WHERE symbol = %s ORDER BY session",
                        (symbol,)).fetchall()
    return np.array([r[0] for r in rows], dtype="datetime64[D]")


def refresh_minute_stats(conn: Connection[Any], symbol: str, expected: np.ndarray,
                         inconsistent: int = 0, *, tz: str) -> dict[str, Any] | None:
    """Recompute ``minute_stats`` and the 1m missing sessions of ``symbol``;
    ``expected``: the calendar sessions its minute history should cover."""
    row = one_row(conn.execute(
        """SELECT min(session), max(session), count(*),
                  coalesce(sum(cardinality(minutes)), 0),
                  coalesce(sum(cardinality(invalid)), 0),
                  CASE WHEN bool_or(source = 'demo') THEN 'demo' ELSE max(source) END
           FROM minute_bars WHERE symbol = %s""", (symbol,)))
    first, last, n_sessions, n_bars, n_invalid, source = row
    conn.execute("DELETE FROM missing_sessions WHERE symbol = %s AND timeframe = '1m'",
                 (symbol,))
    if not n_sessions and not len(expected):
        conn.execute("DELETE FROM minute_stats WHERE symbol = %s", (symbol,))
        return None
    present = stored_minute_sessions(conn, symbol)
    missing = np.setdiff1d(expected, present)
    if len(missing):
        with conn.cursor() as cur:
            cur.executemany("""INSERT INTO missing_sessions (symbol, timeframe, session)
                               VALUES (%s, '1m', %s)""",
                            [(symbol, d) for d in missing.astype(object).tolist()])
    n_exp = len(expected)
    completeness = (n_exp - len(missing)) / n_exp if n_exp else 1.0
    conn.execute(
        """INSERT INTO minute_stats (symbol, first_bar, last_bar, sessions, bars, invalid,
                                     missing_sessions, expected_sessions, completeness,
                                     inconsistent_sessions, source)
           SELECT %(s)s,
                  (SELECT (session + make_interval(mins => minutes[1]))::timestamp
                          AT TIME ZONE %(tz)s
                   FROM minute_bars WHERE symbol = %(s)s AND session = %(first)s),
                  (SELECT (session + make_interval(mins => minutes[cardinality(minutes)]))
                          ::timestamp AT TIME ZONE %(tz)s
                   FROM minute_bars WHERE symbol = %(s)s AND session = %(last)s),
                  %(n)s, %(bars)s, %(inv)s, %(miss)s, %(exp)s, %(comp)s, %(incons)s, %(src)s
           ON CONFLICT (symbol) DO UPDATE SET
             first_bar = EXCLUDED.first_bar, last_bar = EXCLUDED.last_bar,
             sessions = EXCLUDED.sessions, bars = EXCLUDED.bars, invalid = EXCLUDED.invalid,
             missing_sessions = EXCLUDED.missing_sessions,
             expected_sessions = EXCLUDED.expected_sessions,
             completeness = EXCLUDED.completeness,
             inconsistent_sessions = EXCLUDED.inconsistent_sessions,
             source = EXCLUDED.source, last_update = now()""",
        {"s": symbol, "first": first, "last": last, "n": n_sessions, "bars": n_bars,
         "inv": n_invalid, "miss": len(missing), "exp": n_exp, "comp": completeness,
         "incons": inconsistent, "src": source, "tz": tz})
    return {"symbol": symbol, "sessions": n_sessions, "bars": int(n_bars),
            "invalid": int(n_invalid), "missing": len(missing), "completeness": completeness}


def minute_stats(conn: Connection[Any]) -> dict[str, dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT * FROM minute_stats").fetchall()
    return {r["symbol"]: r for r in rows}


def fetched_months(conn: Connection[Any], symbols: Sequence[str]) -> dict[tuple[str, dt.date], dt.date]:
    """{(symbol, first day of month): stored up to this date}."""
    rows = conn.execute("""SELECT symbol, month, fetched_to FROM minute_months
                           WHERE symbol = ANY(%s)""", (list(symbols),)).fetchall()
    return {(r[0], r[1]): r[2] for r in rows}


def record_month(conn: Connection[Any], symbol: str, month: dt.date, fetched_to: dt.date,
                 run_id: int | None) -> None:
    """The month is stored from its first day up to ``fetched_to``."""
    conn.execute("""INSERT INTO minute_months (symbol, month, fetched_to, run_id)
                    VALUES (%s, %s, %s, %s)
                    ON CONFLICT (symbol, month) DO UPDATE SET
                      fetched_to = greatest(minute_months.fetched_to, EXCLUDED.fetched_to),
                      run_id = EXCLUDED.run_id, fetched_at = now()""",
                 (symbol, month, fetched_to, run_id))


def minute_span(conn: Connection[Any], symbol: str) -> tuple[dt.date | None, ...]:
    """First and last stored minute session, last day asked of the vendor."""
    return tuple(one_row(conn.execute(
        """SELECT (SELECT min(session) FROM minute_bars WHERE symbol = %(s)s),
                  (SELECT max(session) FROM minute_bars WHERE symbol = %(s)s),
                  (SELECT max(fetched_to) FROM minute_months WHERE symbol = %(s)s)""",
        {"s": symbol})))


def delete_bars_before(conn: Connection[Any], timeframe: str, cutoff: dt.date) -> int:
    """Retention of one rollup (``timeframe``): its bars of sessions before
    ``cutoff`` deleted (rollup_bars is not partitioned: small rows, no
    TOAST to speak of). Returns sessions (rows) deleted."""
    cur = conn.execute("DELETE FROM rollup_bars WHERE timeframe = %s AND session < %s",
                       (timeframe, cutoff))
    return cur.rowcount


def drop_minutes_before(conn: Connection[Any], cutoff: dt.date) -> tuple[list[str], int]:
    """Retention of the 1m bars: every yearly partition of minute_bars whose
    sessions are all before ``cutoff`` is detached and dropped, table, TOAST
    and indexes at once (each in a transaction of its own on an autocommit
    connection, waiting at most a minute for its lock); the sessions before
    ``cutoff`` in the year it falls in are deleted. Returns (the partitions
    dropped, sessions removed in all)."""
    dropped, removed = [], 0
    for year in sorted(db.existing_partitions(conn, "minute_bars")):
        if dt.date(year + 1, 1, 1) > cutoff:
            continue
        name = db.partition_name("minute_bars", year)
        removed += mnt.drop_partition(conn, name, detach_from="minute_bars",
                                      lock_timeout="60s")
        dropped.append(name)
    removed += conn.execute("DELETE FROM minute_bars WHERE session < %s", (cutoff,)).rowcount
    return dropped, removed


def symbols_on(conn: Connection[Any], session: dt.date) -> set[str]:
    """The symbols with ``session`` stored (the session index of 0015)."""
    return {r[0] for r in conn.execute("SELECT symbol FROM minute_bars WHERE session = %s",
                                       (session,))}


def old_layout_keys(conn: Connection[Any], limit: int,
                    after: tuple[str, dt.date] | None = None) -> list[tuple[str, dt.date]]:
    """Up to ``limit`` scaled minute sessions stored before 0013 (no
    ``volume_scale``) or 0017 (``body``), oldest first, after ``after`` (the
    last key of ``ops.repack``'s batch before: not from the start each time)."""
    sym, day = after or (None, None)
    return [(r[0], r[1]) for r in conn.execute(
        """SELECT symbol, session FROM minute_bars
           WHERE scale IS NOT NULL AND (volume_scale IS NULL OR body IS NOT NULL)
             AND (%(d)s::date IS NULL OR (session, symbol) > (%(d)s::date, %(s)s::text))
           ORDER BY session, symbol LIMIT %(n)s""", {"d": day, "s": sym, "n": limit})]


def sessions_as_stored(conn: Connection[Any], keys: Sequence[tuple[str, dt.date]]
                       ) -> list[MinuteSession]:
    """The stored sessions ``keys`` as ``write_days`` takes them: every bar
    as decoded for the answers (``_decoded``), invalid ones included."""
    rows = conn.execute(
        f"""SELECT b.symbol, b.session, b.source, u.m, {_decoded()} FROM minute_bars b
            JOIN unnest(%s::text[], %s::date[]) k(symbol, session)
              ON k.symbol = b.symbol AND k.session = b.session {_UNNEST}
            ORDER BY b.symbol, b.session, u.i""",
        ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
    out = []
    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and rows[j][:2] == rows[i][:2]:
            j += 1
        part = rows[i:j]
        o, h, lo, c, v, vw = (np.array([np.nan if r[k] is None else r[k] for r in part],
                                       dtype=float) for k in range(4, 10))
        out.append(MinuteSession(
            part[0][0], part[0][1], np.array([r[3] for r in part], dtype=np.int64),
            o, h, lo, c, v, vw,
            np.array([-1 if r[10] is None else r[10] for r in part], dtype=np.int64),
            [k for k, r in enumerate(part) if not r[11]], part[0][2]))
        i = j
    return out


def regular_aggregates(conn: Connection[Any], symbol: str, start: dt.date, end: dt.date, open_min: int,
                       close_min: int, early: Sequence[dt.date], early_close_min: int
                       ) -> list[tuple[Any, ...]]:
    """Per session with minute bars: (session, high, low, volume) of its valid
    regular-hours minutes (``open_min`` <= minute < the close: ``early_close_min``
    on the ``early`` sessions, else ``close_min``): packed ones in numpy
    (``packed.regular_aggregates``), those stored as arrays in the database."""
    arrays = [tuple(r) for r in conn.execute(
        f"""SELECT q.session, max(q.high), min(q.low), sum(q.volume)
            FROM (SELECT b.session, u.m, {_decoded()} FROM minute_bars b {_UNNEST}
                  WHERE b.symbol = %(s)s AND b.session BETWEEN %(a)s AND %(b)s
                    AND b.packed IS NULL) q
            WHERE q.validated AND q.m >= %(open)s
              AND q.m < CASE WHEN q.session = ANY(%(early)s::date[]) THEN %(eclose)s
                             ELSE %(close)s END
            GROUP BY q.session""",
        {"s": symbol, "a": start, "b": end, "open": open_min, "close": close_min,
         "early": list(early), "eclose": early_close_min}).fetchall()]
    return sorted(arrays + packed.regular_aggregates(conn, symbol, start, end, open_min,
                                                     close_min, early, early_close_min))


def sample_days(conn: Connection[Any], n: int, seed: float | None = None) -> list[tuple[str, dt.date]]:
    """``n`` random stored (symbol, session) pairs of minute bars."""
    if seed is not None:
        conn.execute("SELECT setseed(%s)", (seed,))
    return [tuple(r) for r in conn.execute(
        "SELECT symbol, session FROM minute_bars ORDER BY random() LIMIT %s", (n,)).fetchall()]


def day_bars(conn: Connection[Any], symbol: str, timeframe: str, session: dt.date, *,
             tz: str) -> dict[int, dict[str, Any]]:
    """{start in Unix ms: bar} of one symbol-session, raw prices, valid bars."""
    rows = conn.execute(intraday_sql(timeframe, adjust="none", include_invalid=False,
                                     fmt="json"),
                        {"symbol": symbol, "start": session, "end": session, "after": None,
                         "limit": None, "tz": tz}).fetchall()
    return {int(t): json.loads(text) for t, text in rows}


# -- the console chart's reads ---------------------------------------------------

def minute_stats_of(conn: Connection[Any], symbol: str) -> dict[str, Any] | None:
    """The ``minute_stats`` row of one symbol, or None when it has no minutes."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM minute_stats WHERE symbol = %s", (symbol,)).fetchone()


def session_page(conn: Connection[Any], symbol: str, end: dt.date | None,
                 sessions: int) -> tuple[dt.date | None, dt.date | None, bool]:
    """The latest ``sessions`` stored minute sessions of ``symbol`` up to
    ``end`` (None: the latest stored): (first, last, older ones exist)."""
    rows = conn.execute("""SELECT session FROM minute_bars
                           WHERE symbol = %s AND (%s::date IS NULL OR session <= %s::date)
                           ORDER BY session DESC LIMIT %s""",
                        (symbol, end, end, sessions + 1)).fetchall()
    if not rows:
        return None, None, False
    page = rows[:sessions]
    return page[-1][0], page[0][0], len(rows) > sessions


def chart_bars(conn: Connection[Any], symbol: str, timeframe: str, start: dt.date, end: dt.date, *,
               adjust: str | bool | None, tz: str) -> list[tuple[Any, ...]]:
    """(session, minute of the New York day, open, high, low, close, validated)
    of every ``timeframe`` bar in the sessions ``start``..``end``, oldest
    first; invalid 1m bars included."""
    sql = f"""SELECT z.session, z.m, z.open, z.high, z.low, z.close, z.validated
              FROM ({_source(timeframe, adjust, True)}) z ORDER BY z.ts"""
    return conn.execute(sql, {"symbol": symbol, "start": start, "end": end, "after": None,
                              "limit": None, "tz": tz}).fetchall()


def missing_sessions_in(conn: Connection[Any], symbol: str, timeframe: str, start: dt.date | None,
                        end: dt.date | None) -> list[dt.date]:
    """The missing sessions of one stored resolution (``1d`` or ``1m``) in
    ``start``..``end`` (None: unbounded), oldest first."""
    rows = conn.execute("""SELECT session FROM missing_sessions
                           WHERE symbol = %s AND timeframe = %s
                             AND (%s::date IS NULL OR session >= %s::date)
                             AND (%s::date IS NULL OR session <= %s::date)
                           ORDER BY session""",
                        (symbol, timeframe, start, start, end, end)).fetchall()
    return [r[0] for r in rows]
