"""Every SQL statement about candles, symbols, splits, stats and the small
bookkeeping tables. Named functions, bound parameters only.

Functions take an open psycopg connection and do not commit unless they say
so; the caller owns the transaction.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from typing import Iterable, Sequence

import numpy as np
from psycopg.rows import dict_row

from . import db

NY = "America/New_York"
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


# --------------------------------------------------------------------------- writing candles

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


def copy_text(bars, checked, *, issues_of, direct: bool = False) -> bytes:
    """The COPY payload (text format) for one symbol's bars: staging columns
    (``_STAGE_COLS``), or with ``direct`` the columns of market_data itself
    (``_DIRECT_COLS``: bar start as a New York midnight, timeframe 1d)."""
    n = len(bars)
    if n == 0:
        return b""
    sym = bars.symbol
    sess = bars.session.astype(str).tolist()
    o, h, l, c, v, vw = (_fmt_float_col(getattr(bars, k)) for k in
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
        sess = [f"1d\t{d} 00:00 America/New_York" for d in sess]
    lines = [f"{sym}\t{sess[i]}\t{o[i]}\t{h[i]}\t{l[i]}\t{c[i]}\t{v[i]}\t{vw[i]}\t{tr[i]}\t{src}\t"
             f"{valid[i]}\t{score[i]}\t{issues[i]}\t{gap[i]}\t{kinds[i]}\t{gpct[i]}\n"
             for i in range(n)]
    return "".join(lines).encode("utf-8")


def _ensure_stage(conn) -> None:
    conn.execute("""CREATE TEMP TABLE IF NOT EXISTS md_stage (
        symbol text, session date, open double precision, high double precision,
        low double precision, close double precision, volume double precision,
        vwap double precision, trades bigint, source text, validated boolean,
        quality_score real, issues text[], gap_detected boolean, gap_kind text, gap_pct real
    ) ON COMMIT DELETE ROWS""")


def ensure_partitions_for(conn, first: dt.date, last: dt.date) -> None:
    # bar starts are 00:00 New York = 04:00/05:00 UTC of the same date
    db.ensure_partitions(conn, first.year, last.year)


def upsert_bars(conn, payload: bytes, *, symbol: str, first: dt.date, last: dt.date,
                run_id: int | None = None, timeframe: str = TIMEFRAME) -> dict:
    """COPY ``payload`` (from ``copy_text``, one symbol's bars) into staging,
    then one upsert.

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
        n_stage = cur.execute("SELECT count(*) FROM md_stage").fetchone()[0]
        # one join finds both the bars that exist already and those the vendor revised
        existing, revised = cur.execute(
            """WITH j AS (
                 SELECT m.symbol, m.timeframe, m.ts, s.open AS s_open, s.high AS s_high,
                        s.low AS s_low, s.close AS s_close, s.volume AS s_volume,
                        s.vwap AS s_vwap, s.trades AS s_trades, s.source AS s_source,
                        m.open, m.high, m.low, m.close, m.volume, m.vwap, m.trades, m.source
                 FROM md_stage s
                 JOIN market_data m ON m.symbol = s.symbol AND m.timeframe = %(tf)s
                      AND m.ts = (s.session::timestamp AT TIME ZONE 'America/New_York')
                 WHERE m.symbol = %(symbol)s
                   AND m.ts >= (%(first)s::date::timestamp AT TIME ZONE 'America/New_York')
                   AND m.ts < ((%(last)s::date + 1)::timestamp AT TIME ZONE 'America/New_York')),
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
             "symbol": symbol}).fetchone()
        cur.execute(
            f"""INSERT INTO market_data (symbol, timeframe, ts, {', '.join(_VALUE_COLS)})
               SELECT symbol, %(tf)s, (session::timestamp AT TIME ZONE 'America/New_York'),
                      {', '.join(_VALUE_COLS)}
               FROM md_stage
               ON CONFLICT (symbol, timeframe, ts) DO UPDATE SET
                 {', '.join(f'{c} = EXCLUDED.{c}' for c in _VALUE_COLS)},
                 ingested_at = now()
               WHERE ({', '.join('market_data.' + c for c in _VALUE_COLS)})
                     IS DISTINCT FROM ({', '.join('EXCLUDED.' + c for c in _VALUE_COLS)})""",
            {"tf": timeframe})
        affected = cur.rowcount
    inserted = n_stage - existing
    return {"inserted": inserted, "updated": affected - inserted, "revised": revised}


def write_bars(conn, bars, checked, *, issues_of, run_id: int | None = None) -> dict:
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
    overlap = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM market_data WHERE symbol = %s AND timeframe = %s
             AND ts >= (%s::date::timestamp AT TIME ZONE 'America/New_York')
             AND ts < ((%s::date + 1)::timestamp AT TIME ZONE 'America/New_York'))""",
        (bars.symbol, TIMEFRAME, first, last)).fetchone()[0]
    if not overlap:
        payload = copy_text(bars, checked, issues_of=issues_of, direct=True)
        try:
            with conn.transaction():  # a savepoint: a race falls back to the upsert
                with conn.cursor() as cur:
                    with cur.copy(f"COPY market_data ({', '.join(_DIRECT_COLS)}) FROM STDIN") as cp:
                        cp.write(payload)
            return {"inserted": len(bars), "updated": 0, "revised": 0}
        except Exception as e:  # noqa: BLE001
            import psycopg
            if not isinstance(e, psycopg.errors.UniqueViolation):
                raise
    payload = copy_text(bars, checked, issues_of=issues_of)
    return upsert_bars(conn, payload, symbol=bars.symbol, first=first, last=last, run_id=run_id)


def last_close_before(conn, symbol: str, session: dt.date, timeframe: str = TIMEFRAME):
    row = conn.execute(
        """SELECT close FROM market_data WHERE symbol = %s AND timeframe = %s
           AND ts < (%s::date::timestamp AT TIME ZONE 'America/New_York')
           AND validated ORDER BY ts DESC LIMIT 1""", (symbol, timeframe, session)).fetchone()
    return None if row is None else row[0]


def stored_sessions(conn, symbol: str, timeframe: str = TIMEFRAME) -> np.ndarray:
    rows = conn.execute(
        """SELECT (ts AT TIME ZONE 'America/New_York')::date FROM market_data
           WHERE symbol = %s AND timeframe = %s ORDER BY ts""", (symbol, timeframe)).fetchall()
    return np.array([r[0] for r in rows], dtype="datetime64[D]")


def last_stored_session(conn, symbol: str) -> dt.date | None:
    row = conn.execute("SELECT last_session FROM symbol_stats WHERE symbol = %s",
                       (symbol,)).fetchone()
    if row and row[0]:
        return row[0]
    row = conn.execute(
        """SELECT (max(ts) AT TIME ZONE 'America/New_York')::date FROM market_data
           WHERE symbol = %s AND timeframe = %s""", (symbol, TIMEFRAME)).fetchone()
    return row[0] if row else None


# --------------------------------------------------------------------------- splits

def save_splits(conn, splits: Iterable, source: str) -> int:
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


def splits_for(conn, symbol: str):
    from .candles import Split
    rows = conn.execute("""SELECT symbol, execution_date, split_from, split_to FROM splits
                           WHERE symbol = %s ORDER BY execution_date""", (symbol,)).fetchall()
    return [Split(*r) for r in rows]


# --------------------------------------------------------------------------- symbol stats

def refresh_symbol_stats(conn, symbol: str, *, cal_sessions_fn, score_fn,
                         timeframe: str = TIMEFRAME,
                         expected_from: dt.date | None = None) -> dict | None:
    """Recompute one symbol's running aggregates (and its missing sessions).

    ``cal_sessions_fn(first, last)`` returns the calendar's sessions;
    ``score_fn(n_valid, n_total, n_present, n_expected, mean_score)`` the symbol score.
    ``expected_from``: the first session the symbol should have (its configured
    start, when the vendor has not yet been asked from there); None means the
    first stored bar (the vendor had nothing earlier: the listing date).
    """
    row = conn.execute(
        """SELECT (min(ts) AT TIME ZONE 'America/New_York')::date,
                  (max(ts) AT TIME ZONE 'America/New_York')::date,
                  count(*), count(*) FILTER (WHERE validated),
                  count(*) FILTER (WHERE gap_detected),
                  count(*) FILTER (WHERE gap_kind = 'split'),
                  count(*) FILTER (WHERE gap_kind = 'jump'),
                  avg(quality_score), max(source)
           FROM market_data WHERE symbol = %s AND timeframe = %s""",
        (symbol, timeframe)).fetchone()
    first, last, n, n_valid, gaps, g_split, g_jump, mean_score, source = row
    if n == 0:
        conn.execute("DELETE FROM symbol_stats WHERE symbol = %s", (symbol,))
        conn.execute("DELETE FROM missing_sessions WHERE symbol = %s", (symbol,))
        return None
    expected = cal_sessions_fn(min(first, expected_from) if expected_from else first, last)
    present = stored_sessions(conn, symbol, timeframe)
    missing = np.setdiff1d(expected, present)
    n_present = len(expected) - len(missing)
    completeness = n_present / len(expected) if len(expected) else 1.0
    score = score_fn(n_valid, n, n_present, len(expected), float(mean_score or 0))
    conn.execute("DELETE FROM missing_sessions WHERE symbol = %s", (symbol,))
    if len(missing):
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO missing_sessions (symbol, session) VALUES (%s, %s)",
                            [(symbol, d) for d in missing.astype(object).tolist()])
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


def summary(conn) -> dict:
    """The database part of /api/v1/status, from the running aggregates."""
    row = conn.execute(
        """SELECT count(*), coalesce(sum(records), 0), coalesce(sum(validated), 0),
                  coalesce(sum(gaps), 0), max(last_session), coalesce(sum(missing_sessions), 0),
                  max(last_update)
           FROM symbol_stats""").fetchone()
    n_sym, total, valid, gaps, latest, missing, last_update = row
    size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
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


def symbol_rows(conn) -> list[dict]:
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


def symbol_row(conn, symbol: str) -> dict | None:
    for r in symbol_rows_for(conn, [symbol]):
        return r
    return None


def symbol_rows_for(conn, symbols: Sequence[str]) -> list[dict]:
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


def sync_symbols(conn, specs) -> dict:
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


# --------------------------------------------------------------------------- reading candles

def _historical_select(adjusted: bool, include_invalid: bool) -> str:
    """Candles of one symbol between two session dates (both inclusive).

    Unadjusted prices are the stored values, untouched. Adjusted prices are
    ``price * k`` and volume ``volume / k``, where ``k`` is the product of
    ``split_from / split_to`` of every stored split executed after the bar, the
    product taken from the latest split backwards (one multiplication per
    split, no logarithms, so that a single 4-for-1 split gives exactly
    ``price * 0.25``). Parameters: symbol, tf, start, end, limit.
    """
    if adjusted:
        with_ = """WITH RECURSIVE sp AS (
              SELECT execution_date, split_from / split_to AS r,
                     row_number() OVER (ORDER BY execution_date DESC) AS n
              FROM splits WHERE symbol = %(symbol)s AND split_from > 0 AND split_to > 0),
            cum AS (SELECT n, execution_date, r AS k FROM sp WHERE n = 1
                    UNION ALL
                    SELECT sp.n, sp.execution_date, cum.k * sp.r
                    FROM cum JOIN sp ON sp.n = cum.n + 1)"""
        factor = """CROSS JOIN LATERAL (SELECT coalesce(
              (SELECT c.k FROM cum c
               WHERE c.execution_date > (m.ts AT TIME ZONE 'America/New_York')::date
               ORDER BY c.execution_date LIMIT 1), 1.0) AS k) f"""
        cols = """m.open * f.k AS open, m.high * f.k AS high, m.low * f.k AS low,
               m.close * f.k AS close, m.volume / f.k AS volume, m.vwap * f.k AS vwap"""
    else:
        with_, factor = "", ""
        cols = "m.open, m.high, m.low, m.close, m.volume, m.vwap"
    valid = "" if include_invalid else "AND m.validated"
    return f"""{with_}
        SELECT (m.ts AT TIME ZONE 'America/New_York')::date AS time,
               {cols},
               m.trades, m.validated, m.quality_score, m.gap_detected, m.gap_kind, m.source,
               m.issues
        FROM market_data m {factor}
        WHERE m.symbol = %(symbol)s AND m.timeframe = %(tf)s
          AND m.ts >= (%(start)s::date::timestamp AT TIME ZONE 'America/New_York')
          AND m.ts < ((%(end)s::date + 1)::timestamp AT TIME ZONE 'America/New_York')
          {valid}
        ORDER BY m.ts
        LIMIT %(limit)s"""


def _finite(col: str) -> str:
    """NULL for NaN/Infinity: JSON has no such numbers."""
    return f"CASE WHEN {col} IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE {col} END"


def historical_json_sql(adjusted: bool, include_invalid: bool) -> str:
    """SQL returning one JSON text per candle, in the API's field order.

    PostgreSQL prints float8 with the shortest text that reads back as the
    same double, so a price comes back exactly as the vendor sent it.
    """
    inner = _historical_select(adjusted, include_invalid)
    f = _finite
    return f"""SELECT json_build_object('time', time, 'open', {f('open')}, 'high', {f('high')},
                   'low', {f('low')}, 'close', {f('close')}, 'volume', {f('volume')},
                   'vwap', {f('vwap')}, 'validated', validated,
                   'quality_score', {f('quality_score')}, 'gap_detected', gap_detected,
                   'gap_kind', gap_kind, 'source', source)::text
               FROM ({inner}) q"""


def _csv_text(col: str) -> str:
    """A text column as a CSV field: quoted only when it needs to be."""
    return (f"""CASE WHEN {col} ~ E'[",\\r\\n]' THEN '"' || replace({col}, '"', '""') || '"' """
            f"ELSE {col} END")


def historical_csv_sql(adjusted: bool, include_invalid: bool) -> str:
    """SQL returning one CSV line (with its newline) per candle, columns as in
    ``HISTORICAL_CSV_HEADER``; booleans ``true``/``false``, NULL as empty."""
    inner = _historical_select(adjusted, include_invalid)
    b = "CASE WHEN {0} THEN 'true' ELSE 'false' END".format
    return f"""SELECT format(E'%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s,%%s\\n',
                      time, open, high, low, close, volume, vwap, {b('validated')},
                      quality_score, {b('gap_detected')}, {_csv_text('gap_kind')},
                      {_csv_text('source')})
               FROM ({inner}) q"""


HISTORICAL_CSV_HEADER = ("time", "open", "high", "low", "close", "volume", "vwap", "validated",
                         "quality_score", "gap_detected", "gap_kind", "source")


def invalid_candles(conn, symbol: str, limit: int = 500) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT (ts AT TIME ZONE 'America/New_York')::date AS time, open, high, low, close,
                      volume, issues, quality_score
               FROM market_data WHERE symbol = %s AND NOT validated ORDER BY ts DESC LIMIT %s""",
            (symbol, limit))
        return cur.fetchall()


def gaps(conn, *, symbol: str | None = None, kind: str | None = None,
         since: dt.date | None = None, until: dt.date | None = None, limit: int = 500) -> list[dict]:
    """Flagged candles (split / jump) and missing sessions, newest first, with
    the vendor split that explains a split gap."""
    params = {"symbol": symbol, "kind": kind, "since": since, "until": until, "limit": limit}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT * FROM (
                 SELECT m.symbol, (m.ts AT TIME ZONE 'America/New_York')::date AS session,
                        m.gap_kind AS kind, m.gap_pct AS jump_pct, m.close, m.open,
                        sp.split_from, sp.split_to
                 FROM market_data m
                 LEFT JOIN splits sp ON sp.symbol = m.symbol
                      AND sp.execution_date = (m.ts AT TIME ZONE 'America/New_York')::date
                 WHERE m.gap_detected
                   AND (%(symbol)s::text IS NULL OR m.symbol = %(symbol)s)
                   AND (%(kind)s::text IS NULL OR m.gap_kind = %(kind)s)
                   AND (%(since)s::date IS NULL
                        OR m.ts >= (%(since)s::date::timestamp AT TIME ZONE 'America/New_York'))
                   AND (%(until)s::date IS NULL
                        OR m.ts < ((%(until)s::date + 1)::timestamp AT TIME ZONE 'America/New_York'))
                 UNION ALL
                 SELECT ms.symbol, ms.session, 'missing', NULL, NULL, NULL, NULL, NULL
                 FROM missing_sessions ms
                 WHERE (%(kind)s::text IS NULL OR %(kind)s = 'missing')
                   AND (%(symbol)s::text IS NULL OR ms.symbol = %(symbol)s)
                   AND (%(since)s::date IS NULL OR ms.session >= %(since)s)
                   AND (%(until)s::date IS NULL OR ms.session <= %(until)s)
               ) g ORDER BY session DESC, symbol LIMIT %(limit)s""", params)
        return cur.fetchall()


def chart_series(conn, symbol: str, *, adjusted: bool, limit: int = 5000) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_historical_select(adjusted, True),
                    {"symbol": symbol, "tf": TIMEFRAME, "start": dt.date(1900, 1, 1),
                     "end": dt.date(2999, 12, 31), "limit": None})
        rows = cur.fetchall()
    return rows[-limit:]


# --------------------------------------------------------------------------- events, counters

def add_event(conn, level: str, kind: str, message: str, details: dict | None = None) -> None:
    """Events can be read without a login: known secrets are redacted first."""
    from .redaction import redact, redact_obj
    details = json.loads(json.dumps(details or {}, default=str))
    conn.execute("INSERT INTO events (level, kind, message, details) VALUES (%s, %s, %s, %s)",
                 (level, kind, redact(message), json.dumps(redact_obj(details))))


def recent_events(conn, *, level: str | None = None, kind: str | None = None,
                  limit: int = 200, q: str | None = None) -> list[dict]:
    levels = {"debug": 0, "info": 1, "warning": 2, "error": 3}
    min_level = [k for k, v in levels.items() if v >= levels.get(level or "debug", 0)]
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT id, ts, level, kind, message, details FROM events
               WHERE level = ANY(%s) AND (%s::text IS NULL OR kind = %s)
                 AND (%s::text IS NULL OR message ILIKE '%%' || %s || '%%')
               ORDER BY ts DESC, id DESC LIMIT %s""",
            (min_level, kind, kind, q, q, limit))
        return cur.fetchall()


def event_kinds(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT kind FROM events ORDER BY 1")]


def add_vendor_counts(conn, counts: dict) -> None:
    """counts: {(provider, kind, label): n}."""
    with conn.cursor() as cur:
        for (prov, kind, label), n in counts.items():
            if n:
                cur.execute(
                    """INSERT INTO vendor_requests (provider, kind, label, count)
                       VALUES (%s, %s, %s, %s) ON CONFLICT (provider, kind, label)
                       DO UPDATE SET count = vendor_requests.count + EXCLUDED.count""",
                    (prov, kind, str(label), n))


def vendor_counts(conn) -> list[tuple]:
    return conn.execute("SELECT provider, kind, label, count FROM vendor_requests "
                        "ORDER BY 1, 2, 3").fetchall()


def history_coverage(conn, symbol: str) -> tuple[dt.date | None, dt.date | None]:
    """(first stored session, earliest session the vendor was asked for)."""
    row = conn.execute(
        """SELECT st.first_session, sy.history_from FROM symbols sy
             LEFT JOIN symbol_stats st USING (symbol) WHERE sy.symbol = %s""",
        (symbol,)).fetchone()
    return (row[0], row[1]) if row else (None, None)


def mark_history_from(conn, symbol: str, session: dt.date) -> None:
    """A whole-history fetch from ``session`` completed for ``symbol``."""
    conn.execute("""UPDATE symbols SET history_from = least(coalesce(history_from, %s), %s)
                     WHERE symbol = %s""", (session, session, symbol))


def checkpoint(conn, symbol: str, session: dt.date, run_id: int | None) -> None:
    conn.execute(
        """INSERT INTO backfill_checkpoints (symbol, last_session, run_id) VALUES (%s, %s, %s)
           ON CONFLICT (symbol) DO UPDATE SET last_session = EXCLUDED.last_session,
             run_id = EXCLUDED.run_id, updated_at = now()""", (symbol, session, run_id))


# --------------------------------------------------------------------------- status helpers

def open_alerts(conn) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT id, key, severity, status, message, details, opened_at,
                              acknowledged_at, acknowledged_by
                       FROM alerts WHERE status = 'open'
                       ORDER BY severity = 'critical' DESC, opened_at DESC""")
        return cur.fetchall()


def latest_backup(conn) -> dict | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT id, filename, created_at, size_bytes, sha256, status,
                              restore_test_status, restore_test_at
                       FROM backups WHERE status = 'ok' ORDER BY created_at DESC LIMIT 1""")
        return cur.fetchone()


def last_restore_test(conn) -> dict | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT id AS backup_id, filename, restore_test_status AS status,
                              restore_test_at AS at, restore_test_seconds AS seconds
                       FROM backups WHERE restore_test_at IS NOT NULL
                       ORDER BY restore_test_at DESC LIMIT 1""")
        return cur.fetchone()


def last_config_reload(conn) -> dict | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT id, ts, source, actor, sha256, ok, error, diff FROM config_reloads
                       ORDER BY ts DESC, id DESC LIMIT 1""")
        return cur.fetchone()


def record_config_reload(conn, *, source: str, actor: str | None, sha256: str | None, ok: bool,
                         error: str | None, diff: dict | None) -> int:
    return conn.execute(
        """INSERT INTO config_reloads (source, actor, sha256, ok, error, diff)
           VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
        (source, actor, sha256, ok, _redact(error),
         json.dumps(_redact_obj(json.loads(json.dumps(diff or {}, default=str)))))).fetchone()[0]


def _redact(text):
    from .redaction import redact
    return redact(text)


def _redact_obj(v):
    from .redaction import redact_obj
    return redact_obj(v)


def config_reloads(conn, limit: int = 20) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM config_reloads ORDER BY ts DESC, id DESC LIMIT %s", (limit,))
        return cur.fetchall()


def alerts_list(conn, *, status: str = "open", limit: int = 200) -> list[dict]:
    where = {"open": "status = 'open'", "resolved": "status = 'resolved'",
             "all": "status IN ('open', 'resolved')"}[status]
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"""SELECT id, key, severity, status, message, details, opened_at,
                               resolved_at, acknowledged_at, acknowledged_by
                        FROM alerts WHERE {where}
                        ORDER BY coalesce(resolved_at, opened_at) DESC, id DESC LIMIT %s""",
                    (limit,))
        return cur.fetchall()


def job_run_stats(conn) -> list[tuple]:
    """(job, status, count, sum of durations in seconds) over all recorded runs."""
    return conn.execute(
        """SELECT job, status, count(*),
                  coalesce(sum(extract(epoch FROM finished_at - started_at)), 0)
           FROM job_runs GROUP BY job, status ORDER BY 1, 2""").fetchall()
