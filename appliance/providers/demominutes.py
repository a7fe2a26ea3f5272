"""The demo provider's one-minute bars: synthetic, deterministic, and
consistent with its daily bars, so that minute bars, their rollups and the
chart can be seen on a machine with no vendor key.

Each session's minutes are drawn from that session's daily bar (seeded by
the provider's seed, the symbol and the date): a path from the daily open to
the daily close that touches the daily high and low inside the regular
session (09:30 to the close, 13:00 on early closes), about 2 % of the minutes
without a bar (no trade that minute), the day's volume spread in the usual
U shape, and thin pre-market (from 08:00) and after-hours (to 18:00) bars
near the open and close prices, which the daily bar never includes.
"""
from __future__ import annotations

import zlib

import numpy as np

from appliance.core import calendar as tcal
from appliance.core.candles import Bars, MinuteBars

REGULAR_OPEN = 570
PRE_FROM, AFTER_TO = 480, 1080
SOURCE = "demo"


def _day(seed: int, symbol: str, bar: Bars, i: int, close_min: int):
    day = bar.session[i]
    rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(symbol.encode()),
                                 int(day.astype(np.int64)), 7])
    o, h, lo, c = (float(x[i]) for x in (bar.open, bar.high, bar.low, bar.close))
    if not (np.isfinite([o, h, lo, c]).all() and 0 < lo <= min(o, c) and h >= max(o, c)):
        return None  # the daily bar is one of the demo's bad ticks: no minutes that day
    mins = np.arange(REGULAR_OPEN, close_min)
    n = len(mins)
    walk = np.cumsum(rng.standard_normal(n))
    bridge = walk - np.linspace(0, 1, n) * walk[-1]  # 0 at both ends
    span = max(h - lo, 0.01)
    closes = np.linspace(o, c, n) + bridge / (np.abs(bridge).max() or 1) * span * 0.45
    closes = np.clip(closes, lo, h)
    closes[-1] = c
    opens = np.concatenate([[o], closes[:-1]])
    wick = np.abs(rng.standard_normal((2, n))) * span * 0.05
    highs = np.minimum(np.maximum(opens, closes) + wick[0], h)
    lows = np.maximum(np.minimum(opens, closes) - wick[1], lo)
    highs[int(rng.integers(n))] = h
    lows[int(rng.integers(n))] = lo
    r = np.round
    opens, highs, lows, closes = r(opens, 2), r(highs, 2), r(lows, 2), r(closes, 2)
    highs = np.maximum(highs, np.maximum(opens, closes))
    lows = np.minimum(lows, np.minimum(opens, closes))
    u = np.linspace(-1, 1, n)
    weights = 1 + 2.5 * u ** 2
    vol = np.maximum(1, np.round(weights / weights.sum() * max(float(bar.volume[i]), n)))
    keep = rng.random(n) > 0.02
    keep[[0, n - 1, int(np.argmax(highs)), int(np.argmin(lows))]] = True
    reg = (mins, opens, highs, lows, closes, vol)
    reg = tuple(x[keep] for x in reg)
    # thin extended hours around the regular session
    pre = np.arange(PRE_FROM, REGULAR_OPEN)
    post = np.arange(close_min, min(close_min + 120, AFTER_TO))
    ext = np.concatenate([pre[rng.random(len(pre)) < 0.15], post[rng.random(len(post)) < 0.2]])
    base = np.where(ext < REGULAR_OPEN, o, c)
    eo = r(base * (1 + rng.normal(0, 0.001, len(ext))), 2)
    ec = r(base * (1 + rng.normal(0, 0.001, len(ext))), 2)
    eh = np.maximum(eo, ec) + 0.01
    el = np.maximum(np.minimum(eo, ec) - 0.01, 0.01)
    ev = rng.integers(100, 5000, len(ext)).astype(float)
    cols = [np.concatenate([e, x]) for e, x in zip((ext, eo, eh, el, ec, ev), reg, strict=False)]
    order = np.argsort(cols[0], kind="stable")
    return day, [x[order] for x in cols]


def minute_bars(seed: int, calendar: str, bars: Bars) -> MinuteBars:
    """Minute bars of every session of ``bars`` (one symbol's daily bars)."""
    if len(bars) == 0:
        return MinuteBars.empty(bars.symbol, SOURCE)
    closes = tcal.regular_close_minutes(calendar, bars.session)
    parts = []
    for i in range(len(bars)):
        got = _day(seed, bars.symbol, bars, i, int(closes[i]))
        if got is None:
            continue
        day, (m, o, h, lo, c, v) = got
        t = tcal.local_time_epochs(np.full(len(m), day), 0) + m * 60
        vw = np.round((h + lo + c) / 3, 4)
        n = np.maximum(1, (v // 40)).astype(np.int64)
        parts.append((t.astype(np.int64), o, h, lo, c, v, vw, n))
    if not parts:
        return MinuteBars.empty(bars.symbol, SOURCE)
    cols = [np.concatenate(x) for x in zip(*parts, strict=False)]
    return MinuteBars(bars.symbol, *cols, SOURCE)
