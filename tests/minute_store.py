"""Minute bars stored straight through ``intraday.write`` for console and
browser tests: realistic extended-hours minutes from ``make_minute_truth``,
optionally with sessions left out (1m ``missing`` gaps), invalid bars and a
split."""
from __future__ import annotations

import numpy as np

from appliance.ingest import minutes as intraday
from appliance.store import minutecopy
from appliance.store import minutes as mstore
from tests.fakes.minute_truth import make_minute_truth

CFG = {"calendar": "XNYS", "session": "extended"}


def store_minutes(runtime, symbol: str, start: str, end: str, *, drop=(), invalid: int = 0,
                  split_date: str | None = None, split_to: float = 10.0, seed: int = 5):
    """Store ``symbol``'s minutes of ``start``..``end`` except the sessions in
    ``drop``; ``invalid`` bars of the last session get a high below their
    low. Returns the stored ``MinuteBars``."""
    truth = make_minute_truth([symbol], start, end, seed=seed,
                              split_symbols=[symbol] if split_date else [],
                              split_date=split_date, split_to=split_to)
    bars = truth.minutes[symbol].to_candles("test")
    keep = ~np.isin(bars.session, np.array(list(drop), dtype="datetime64[D]"))
    bars = bars.take(np.nonzero(keep & intraday.in_session(CFG, bars))[0])
    if invalid:
        last = np.nonzero(bars.session == bars.session[-1])[0][10:10 + invalid]
        bars.high[last] = bars.low[last] - 0.5
    with runtime.conn() as conn:
        intraday.write(conn, CFG, bars)
        intraday.refresh_stats(conn, CFG, symbol)
    return bars


def store_as_before_0013(conn, s: minutecopy.MinuteSession, raw: bool = False) -> None:
    """The ``MinuteSession`` ``s`` stored as every session was before
    migration 0013: one scale for prices and volume, absolute integers (or,
    ``raw``, float8), by plain SQL (not the store's writer)."""
    x = np.stack([getattr(s, c) for c in ("open", "high", "low", "close", "volume", "vwap")])
    k = minutecopy._scale_of(x.ravel())

    def ints(a):
        return [None if np.isnan(v) else int(round(v * 10 ** k)) for v in a]

    if raw:
        rows = [[None if np.isnan(v) else float(v) for v in a] for a in x]
        conn.execute("""INSERT INTO minute_bars (symbol, session, minutes, raw, trades, invalid,
                        source) VALUES (%s, %s, %s, %s::float8[], %s, %s, 'test')""",
                     (s.symbol, s.session, s.minute.tolist(), rows,
                      [None if t < 0 else int(t) for t in s.trades], list(s.invalid)))
        return
    assert k is not None, "a session no decimal scale holds is stored raw"
    conn.execute(
        """INSERT INTO minute_bars (symbol, session, minutes, scale, open, high, low, close,
                                    volume, vwap, trades, invalid, source)
           VALUES (%s, %s, %s, %s, %s::int8[], %s::int8[], %s::int8[], %s::int8[],
                   %s::int8[], %s::int8[], %s, %s, 'test')""",
        (s.symbol, s.session, s.minute.tolist(), k, *(ints(a) for a in x),
         [None if t < 0 else int(t) for t in s.trades], list(s.invalid)))


def store_as_before_0017(conn, symbol: str | None = None, session=None) -> None:
    """The packed sessions (0017) of ``symbol`` on ``session`` (None: every
    one) stored as 0013 to 0016 stored them, their candles as arrays, from
    their numbers as SQL reads them (``store.minutes._UNNEST``)."""
    conn.execute(f"""
        UPDATE minute_bars m SET open = d.o, body = d.bd, upper_wick = d.uw,
               lower_wick = d.lw, volume = d.v, vwap = d.vw, trades = d.n, packed = NULL
        FROM (SELECT b.symbol, b.session, array_agg(u.o ORDER BY u.i) o,
                     array_agg(u.bd ORDER BY u.i) bd, array_agg(u.uw ORDER BY u.i) uw,
                     array_agg(u.lw ORDER BY u.i) lw, array_agg(u.v ORDER BY u.i) v,
                     array_agg(u.vw ORDER BY u.i) vw, array_agg(u.n ORDER BY u.i) n
              FROM minute_bars b {mstore._UNNEST}
              WHERE b.packed IS NOT NULL AND (%(s)s::text IS NULL OR b.symbol = %(s)s)
                AND (%(d)s::date IS NULL OR b.session = %(d)s)
              GROUP BY 1, 2) d
        WHERE m.symbol = d.symbol AND m.session = d.session""", {"s": symbol, "d": session})
