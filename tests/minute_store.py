"""Minute bars stored straight through ``intraday.write`` for console and
browser tests: realistic extended-hours minutes from ``make_minute_truth``,
optionally with sessions left out (1m ``missing`` gaps), invalid bars and a
split."""
from __future__ import annotations

import numpy as np

from appliance.ingest import minutes as intraday
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
