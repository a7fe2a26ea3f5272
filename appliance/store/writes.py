"""Writing candles (COPY straight in for new ranges, else staging and one
upsert that records revisions) and splits."""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import psycopg
from psycopg import Connection

from appliance.core.candles import Bars, Split
from appliance.store import pool as db
from appliance.store.pool import one_row

TIMEFRAME = "1d"

#: Columns of market_data, in the order of the staging COPY.
_STAGE_COLS = ("symbol", "session", "open", "high", "low", "close", "volume", "vwap", "trades",
               "source", "validated", "quality_score", "issues", "gap_detected", "gap_kind",
               "gap_pct")
_DIRECT_COLS = ("symbol", "timeframe", "ts", "open", "high", "low", "close", "volume", "vwap",
                "trades", "source", "validated", "quality_score", "issues", "gap_detected",
                "gap_kind", "gap_pct")
_VALUE_COLS = ("open", "high", "low", "close", "volume", "vwap", "trades", "source", "validated",
               "quality_score", "issues", "gap_detected", "gap_kind", "gap_pct")
_PRICE_COLS = ("open", "high", "low", "close", "volume", "vwap", "trades")
#: A new row that says less of the same bar than the stored one (a vendor's
#: flat file has no vwap; the REST bar stored before has it): the same open,
#: high, low, close and volume, without a vwap or trade count the stored row
#: has. It is not written: the stored row stays, and nothing was revised.
_SAYS_LESS = ("((market_data.open, market_data.high, market_data.low, market_data.close, "
              "market_data.volume) IS NOT DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, "
              "EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume) "
              "AND ((EXCLUDED.vwap IS NULL AND market_data.vwap IS NOT NULL) "
              "OR (EXCLUDED.trades IS NULL AND market_data.trades IS NOT NULL)))")




def _fmt_float_col(a: np.ndarray) -> list[str]:
    vals = a.tolist()
    res = []
    for x in vals:
        if x != x:
            res.append("\\N")
        elif x == math.inf:
            res.append("Infinity")
        elif x == -math.inf:
            res.append("-Infinity")
        else:
            res.append(repr(x))
    return res


def copy_text(bars: Bars, checked: Any, *, issues_of: Callable[..., Any], direct: bool = False,
              tz: str | None = None) -> bytes:
    """The COPY payload (text format) for one symbol's bars: staging columns
    (``_STAGE_COLS``), or with ``direct`` the columns of market_data itself
    (``_DIRECT_COLS``: bar start as a midnight of the exchange time zone
    ``tz``, timeframe 1d)."""
    if direct and not tz:
        raise ValueError("copy_text(direct=True) needs the exchange time zone")
    n = len(bars)
    if n == 0:
        return b""
    sym = bars.symbol
    sess = bars.session.astype(str).tolist()
    o, h, l, c, v, vw = (_fmt_float_col(getattr(bars, k)) for k in  # noqa: E741
                         ("open", "high", "low", "close", "volume", "vwap"))
    tr = ["\\N" if t < 0 else str(t) for t in bars.trades.tolist()]
    valid = ["t" if x else "f" for x in checked.valid.tolist()]
    score = [repr(x) for x in checked.score.astype(np.float64).tolist()]
    masks = checked.issue_mask.tolist()
    issues = ["{}" if m == 0 else "{" + ",".join(issues_of(m)) + "}" for m in masks]
    gap = ["t" if x else "f" for x in checked.gap_detected.tolist()]
    kinds = ["\\N" if k is None else str(k) for k in checked.gap_kind.tolist()]
    gpct = _fmt_float_col(np.asarray(checked.gap_pct, dtype=np.float64))
    src = bars.source
    if direct:
        sess = [f"1d\t{d} 00:00 {tz}" for d in sess]
    lines = [f"{sym}\t{sess[i]}\t{o[i]}\t{h[i]}\t{l[i]}\t{c[i]}\t{v[i]}\t{vw[i]}\t{tr[i]}\t{src}\t"
             f"{valid[i]}\t{score[i]}\t{issues[i]}\t{gap[i]}\t{kinds[i]}\t{gpct[i]}\n"
             for i in range(n)]
    return "".join(lines).encode("utf-8")


def _ensure_stage(conn: Connection[Any]) -> None:
    conn.execute("""CREATE TEMP TABLE IF NOT EXISTS md_stage (
        symbol text, session date, open double precision, high double precision,
        low double precision, close double precision, volume double precision,
        vwap double precision, trades bigint, source text, validated boolean,
        quality_score real, issues text[], gap_detected boolean, gap_kind text, gap_pct real
    ) ON COMMIT DELETE ROWS""")


def ensure_partitions_for(conn: Connection[Any], first: dt.date, last: dt.date) -> None:
    # bar starts are 00:00 New York = 04:00/05:00 UTC of the same date
    db.ensure_partitions(conn, first.year, last.year)


def upsert_bars(conn: Connection[Any], payload: bytes, *, symbol: str | None, first: dt.date, last: dt.date,
                tz: str, run_id: int | None = None, timeframe: str = TIMEFRAME) -> dict[str, Any]:
    """COPY ``payload`` (from ``copy_text``, one symbol's bars; with ``symbol``
    None, the bars of any number of symbols, e.g. a whole-market day) into
    staging, then one upsert.

    Idempotent: an unchanged bar is not rewritten. A changed price or volume is
    recorded in ``revisions`` with the old and new values. Returns counts
    ``{"inserted", "updated", "revised"}``. Runs inside the caller's transaction.
    """
    if not payload:
        return {"inserted": 0, "updated": 0, "revised": 0}
    if conn.autocommit:  # the staging table empties itself at every commit
        raise RuntimeError("upsert_bars needs a connection inside a transaction")
    ensure_partitions_for(conn, first, last)
    _ensure_stage(conn)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE md_stage")
        with cur.copy(f"COPY md_stage ({', '.join(_STAGE_COLS)}) FROM STDIN") as cp:
            cp.write(payload)
        # the planner knows nothing of a fresh temp table: without this it may scan
        # all of market_data instead of probing its primary key
        cur.execute("ANALYZE md_stage")
        n_stage = one_row(cur.execute("SELECT count(*) FROM md_stage"))[0]
        one_symbol = "m.symbol = %(symbol)s AND" if symbol is not None else ""
        # one join finds both the bars that exist already and those the vendor revised
        existing, revised = one_row(cur.execute(
            f"""WITH j AS (
                 SELECT m.symbol, m.timeframe, m.ts, s.open AS s_open, s.high AS s_high,
                        s.low AS s_low, s.close AS s_close, s.volume AS s_volume,
                        s.vwap AS s_vwap, s.trades AS s_trades, s.source AS s_source,
                        m.open, m.high, m.low, m.close, m.volume, m.vwap, m.trades, m.source
                 FROM md_stage s
                 JOIN market_data m ON m.symbol = s.symbol AND m.timeframe = %(tf)s
                      AND m.ts = (s.session::timestamp AT TIME ZONE %(tz)s)
                 WHERE {one_symbol}
                   m.ts >= (%(first)s::date::timestamp AT TIME ZONE %(tz)s)
                   AND m.ts < ((%(last)s::date + 1)::timestamp AT TIME ZONE %(tz)s)),
               rev AS (
                 INSERT INTO revisions (symbol, timeframe, ts, old, new, run_id)
                 SELECT symbol, timeframe, ts,
                        jsonb_build_object('open', open, 'high', high, 'low', low,
                                           'close', close, 'volume', volume, 'vwap', vwap,
                                           'trades', trades, 'source', source),
                        jsonb_build_object('open', s_open, 'high', s_high, 'low', s_low,
                                           'close', s_close, 'volume', s_volume, 'vwap', s_vwap,
                                           'trades', s_trades, 'source', s_source),
                        %(run)s
                 FROM j
                 WHERE (open, high, low, close, volume)
                       IS DISTINCT FROM (s_open, s_high, s_low, s_close, s_volume)
                 RETURNING 1)
               SELECT (SELECT count(*) FROM j), (SELECT count(*) FROM rev)""",
            {"run": run_id, "tf": timeframe, "first": first, "last": last,
             "symbol": symbol, "tz": tz}))
        cur.execute(
            f"""INSERT INTO market_data (symbol, timeframe, ts, {', '.join(_VALUE_COLS)})
               SELECT symbol, %(tf)s, (session::timestamp AT TIME ZONE %(tz)s),
                      {', '.join(_VALUE_COLS)}
               FROM md_stage
               ON CONFLICT (symbol, timeframe, ts) DO UPDATE SET
                 {', '.join(f'{c} = EXCLUDED.{c}' for c in _VALUE_COLS)},
                 ingested_at = now()
               WHERE ({', '.join('market_data.' + c for c in _VALUE_COLS)})
                     IS DISTINCT FROM ({', '.join('EXCLUDED.' + c for c in _VALUE_COLS)})
                 AND NOT {_SAYS_LESS}""",
            {"tf": timeframe, "tz": tz})
        affected = cur.rowcount
    inserted = n_stage - existing
    return {"inserted": inserted, "updated": affected - inserted, "revised": revised}


def write_bars(conn: Connection[Any], bars: Bars, checked: Any, *, issues_of: Callable[..., Any], tz: str,
               run_id: int | None = None) -> dict[str, Any]:
    """Store one symbol's validated bars; returns ``{"inserted", "updated", "revised"}``.

    When none of the bars' sessions is stored yet (a new symbol, a first
    backfill) the rows are COPY'd straight into market_data; otherwise they go
    through staging and one upsert that records revisions.
    """
    if len(bars) == 0:
        return {"inserted": 0, "updated": 0, "revised": 0}
    first = bars.session[0].astype(object)
    last = bars.session[-1].astype(object)
    if conn.autocommit:
        raise RuntimeError("write_bars needs a connection inside a transaction")
    ensure_partitions_for(conn, first, last)
    overlap = one_row(conn.execute(
        """SELECT EXISTS (SELECT 1 FROM market_data WHERE symbol = %(s)s AND timeframe = %(tf)s
             AND ts >= (%(first)s::date::timestamp AT TIME ZONE %(tz)s)
             AND ts < ((%(last)s::date + 1)::timestamp AT TIME ZONE %(tz)s))""",
        {"s": bars.symbol, "tf": TIMEFRAME, "first": first, "last": last,
         "tz": tz}))[0]
    if not overlap:
        payload = copy_text(bars, checked, issues_of=issues_of, direct=True, tz=tz)
        try:
            with conn.transaction():  # a savepoint: a race falls back to the upsert
                with conn.cursor() as cur:
                    with cur.copy(f"COPY market_data ({', '.join(_DIRECT_COLS)}) FROM STDIN") as cp:
                        cp.write(payload)
            return {"inserted": len(bars), "updated": 0, "revised": 0}
        except Exception as e:
            if not isinstance(e, psycopg.errors.UniqueViolation):
                raise
    payload = copy_text(bars, checked, issues_of=issues_of)
    return upsert_bars(conn, payload, symbol=bars.symbol, first=first, last=last, tz=tz,
                       run_id=run_id)


def last_close_before(conn: Connection[Any], symbol: str, session: dt.date, timeframe: str = TIMEFRAME, *,
                      tz: str) -> float | None:
    row = conn.execute(
        """SELECT close FROM market_data WHERE symbol = %s AND timeframe = %s
           AND ts < (%s::date::timestamp AT TIME ZONE %s)
           AND validated ORDER BY ts DESC LIMIT 1""", (symbol, timeframe, session, tz)).fetchone()
    return None if row is None else row[0]


def last_session_before(conn: Connection[Any], symbol: str, session: dt.date, *, tz: str) -> dt.date | None:
    """The session of the valid daily bar ``last_close_before`` reads."""
    row = conn.execute(
        """SELECT (ts AT TIME ZONE %(tz)s)::date FROM market_data
           WHERE symbol = %(symbol)s AND timeframe = '1d'
           AND ts < (%(session)s::date::timestamp AT TIME ZONE %(tz)s)
           AND validated ORDER BY ts DESC LIMIT 1""",
        {"symbol": symbol, "session": session, "tz": tz}).fetchone()
    return None if row is None else row[0]


def stored_sessions(conn: Connection[Any], symbol: str, timeframe: str = TIMEFRAME, *, tz: str) -> np.ndarray:
    rows = conn.execute(
        """SELECT (ts AT TIME ZONE %s)::date FROM market_data
           WHERE symbol = %s AND timeframe = %s ORDER BY ts""",
        (tz, symbol, timeframe)).fetchall()
    return np.array([r[0] for r in rows], dtype="datetime64[D]")


def last_stored_session(conn: Connection[Any], symbol: str, *, tz: str) -> dt.date | None:
    row = conn.execute("SELECT last_session FROM symbol_stats WHERE symbol = %s",
                       (symbol,)).fetchone()
    if row and row[0]:
        return row[0]
    row = conn.execute(
        """SELECT (max(ts) AT TIME ZONE %s)::date FROM market_data
           WHERE symbol = %s AND timeframe = %s""", (tz, symbol, TIMEFRAME)).fetchone()
    return row[0] if row else None


# --------------------------------------------------------------------------- splits

def save_splits(conn: Connection[Any], splits: Iterable[Split], source: str) -> int:
    n = 0
    with conn.cursor() as cur:
        for s in splits:
            cur.execute(
                """INSERT INTO splits (symbol, execution_date, split_from, split_to, source)
                   VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (symbol, execution_date) DO UPDATE
                   SET split_from = EXCLUDED.split_from, split_to = EXCLUDED.split_to,
                       source = EXCLUDED.source, fetched_at = now()""",
                (s.symbol, s.execution_date, s.split_from, s.split_to, source))
            n += 1
    return n


def splits_for(conn: Connection[Any], symbol: str) -> list[Split]:
    rows = conn.execute("""SELECT symbol, execution_date, split_from, split_to FROM splits
                           WHERE symbol = %s ORDER BY execution_date""", (symbol,)).fetchall()
    return [Split(*r) for r in rows]
