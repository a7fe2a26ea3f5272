"""The 5m..4h rollups of minute bars, computed in numpy: the same bars as
the SQL refresh (``store.minutes.refresh_rollups_of``) gives, for many
sessions at once.

The rules, the SQL's: only valid minutes count; a bucket starts at a
multiple of its width in minutes past New York midnight (``timeframes``)
and holds the minutes of one session; open and close are those of its first
and last minute, high and low the max and min, volume and trades the sums;
vwap is the volume-weighted mean of the minutes' vwaps over the minutes that
have one (NULL when none has, or their volume is 0). A NULL value (NaN here;
trades: a negative count) is left out of every max, min and sum, and a
bucket whose values are all NULL gets NULL; an open or close is taken from
the first or last minute as it is. The wider widths are grouped from the 5m
buckets, carrying the price-volume sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.core.timeframes import ROLLUPS


@dataclass(frozen=True)
class Buckets:
    """One width's bars of many sessions, ordered by session then start:
    ``session`` is the index of the session each bar is of; NaN is NULL;
    ``trades`` is -1 where NULL."""
    session: np.ndarray
    start: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    pv: np.ndarray
    vv: np.ndarray
    trades: np.ndarray

    @property
    def vwap(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.vv != 0, self.pv / np.where(self.vv != 0, self.vv, 1.0), np.nan)


def _sum(x: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Sums of the groups starting at ``first``, NaN left out; NaN when all are."""
    nan = np.isnan(x)
    s = np.add.reduceat(np.where(nan, 0.0, x), first)
    n = np.add.reduceat((~nan).astype(np.int32), first)
    return np.where(n > 0, s, np.nan)


def _trades(t: np.ndarray, first: np.ndarray) -> np.ndarray:
    null = t < 0
    s = np.add.reduceat(np.where(null, 0, t).astype(np.int64), first)
    n = np.add.reduceat((~null).astype(np.int32), first)
    return np.where(n > 0, s, -1)


def _group(b: Buckets, width: int) -> Buckets:
    """``b`` grouped into buckets of ``width`` minutes (a multiple of b's)."""
    start = (b.start // width) * width
    key = b.session.astype(np.int64) * 1440 + start
    first = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    last = np.concatenate((first[1:], [len(key)])) - 1
    return Buckets(session=b.session[first], start=start[first], open=b.open[first],
                   high=np.fmax.reduceat(b.high, first), low=np.fmin.reduceat(b.low, first),
                   close=b.close[last], volume=_sum(b.volume, first), pv=_sum(b.pv, first),
                   vv=_sum(b.vv, first), trades=_trades(b.trades, first))


def rollups(session: np.ndarray, minute: np.ndarray, o: np.ndarray, h: np.ndarray,
            lo: np.ndarray, c: np.ndarray, v: np.ndarray, vw: np.ndarray,
            trades: np.ndarray) -> dict[str, Buckets]:
    """{timeframe: Buckets} of the valid minute bars given, ordered by
    ``session`` (an index) and by minute within it."""
    base, *wider = ROLLUPS.items()
    if len(minute) == 0:
        e, i = np.zeros(0), np.zeros(0, dtype=np.int64)
        none = Buckets(i, i, e, e, e, e, e, e, e, i)
        return {tf: none for tf in ROLLUPS}
    with np.errstate(invalid="ignore"):
        priced = ~np.isnan(vw) & ~np.isnan(v)
        ones = Buckets(session=np.asarray(session, dtype=np.int64),
                       start=np.asarray(minute, dtype=np.int64), open=o, high=h, low=lo,
                       close=c, volume=v, pv=np.where(priced, vw * v, np.nan),
                       vv=np.where(priced, v, np.nan), trades=np.asarray(trades))
    out = {base[0]: _group(ones, base[1])}
    for tf, width in wider:
        assert width % base[1] == 0, "every rollup must be a multiple of the first"
        out[tf] = _group(out[base[0]], width)
    return out
