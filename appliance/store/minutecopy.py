"""Minute sessions and their rollups as binary COPY rows (``pgcopy``), many
sessions at a time: the rows of ``minute_stage`` (``minute_bars``' columns)
and of ``rollup_bars``. The layout and its exactness rule (integers times
10^-scale, or float8 ``raw``) are described in ``migrations/0003_intraday.sql``,
the candle's body and wicks and the volume's own scale in ``0013_minute_offsets.sql``.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from appliance.core.rollups import Buckets, rollups
from appliance.store import pgcopy

#: Fewest decimals tried before a day is stored as float8 (``raw``).
MAX_SCALE = 9
_INT_LIMIT = 2.0 ** 62
_INT4_MAX = 2 ** 31 - 1
#: minute_bars' columns in the order ``session_rows`` writes them.
COLUMNS = ("symbol", "session", "minutes", "scale", "open", "high", "low", "close", "volume",
           "vwap", "raw", "trades", "invalid", "source", "body", "upper_wick", "lower_wick",
           "volume_scale", "vwap_scale")
ROLLUP_COLUMNS = ("symbol", "timeframe", "session", "starts", "open", "high", "low", "close",
                  "volume", "vwap", "trades", "scale", "volume_scale", "open_scaled",
                  "volume_scaled", "body", "upper_wick", "lower_wick")


@dataclass(frozen=True)
class MinuteSession:
    """One symbol-session of minute bars, as ``store.minutes.write_days`` stores it.

    ``minute``: minute of the exchange day each bar starts; the price arrays
    are float (NaN: none); ``trades`` is -1 where the vendor sent none;
    ``invalid``: 0-based positions of the bars failing validation."""
    symbol: str
    session: dt.date
    minute: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    vwap: np.ndarray
    trades: np.ndarray
    invalid: Sequence[int]
    source: str


def _scale_of(values: np.ndarray) -> int | None:
    """The fewest decimals ``k`` with ``round(x * 10^k) / 10^k == x`` for every
    finite value, or None when no ``k <= MAX_SCALE`` gives every value back."""
    x = np.asarray(values, dtype=np.float64).reshape(1, -1)
    k = scales(x, np.array([0, x.shape[1]]))[0]
    return None if k < 0 else int(k)


def scales(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per group of columns of ``x`` (rows: values; ``offsets``: where each
    group starts): ``_scale_of`` of its values, -1 for None."""
    n = len(offsets) - 1
    out = np.full(n, -1, dtype=np.int64)
    group = np.arange(n)
    sizes = np.diff(offsets)
    with np.errstate(invalid="ignore", over="ignore"):
        xs = np.where(np.isfinite(x), x, 0.0)
        for k in range(MAX_SCALE + 1):
            p = 10.0 ** k
            r = np.rint(xs * p)
            bad = ((np.abs(r) >= _INT_LIMIT) | (r / p != xs)).any(axis=0)
            cum = np.concatenate(([0], np.cumsum(bad)))
            bounds = np.concatenate(([0], np.cumsum(sizes)))
            ok = cum[bounds[1:]] == cum[bounds[:-1]]
            out[group[ok]] = k
            if ok.all():
                break
            # only the groups left go on to the next scale
            left = np.repeat(~ok, sizes)
            xs, group, sizes = xs[:, left], group[~ok], sizes[~ok]
    return out


def _columns(chunk: Sequence[MinuteSession]) -> np.ndarray:
    """Open, high, low, close, volume and vwap of every session, one session
    after another: six rows."""
    x = np.empty((6, sum(len(s.minute) for s in chunk)))
    for j, name in enumerate(("open", "high", "low", "close", "volume", "vwap")):
        if chunk:
            np.concatenate([getattr(s, name) for s in chunk], out=x[j])
    return x


def _ints(x: np.ndarray, null: np.ndarray, off: np.ndarray) -> pgcopy.Arrays:
    if null.all():  # a column the vendor never sends (flat files' vwap)
        return pgcopy.Arrays("int8", np.zeros(len(x), dtype=np.int64), off, null)
    return pgcopy.Arrays("int8", x, off, null if null.any() else None)


_INT2 = 2 ** 15
#: Integers a float8 holds exactly.
_EXACT = 2 ** 53


def _candles(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, good: np.ndarray,
             off: np.ndarray) -> tuple[np.ndarray, list[pgcopy.Arrays]]:
    """Which rows (bars at ``off``) can be stored as candles (0013, 0014):
    every bar ``good`` and its body (close - open), upper wick (high -
    greatest(open, close)) and lower wick (least(open, close) - low) each a
    smallint; and those three ``int2`` arrays (exact, being integers)."""
    parts = np.stack([c - o, h - np.maximum(o, c), np.minimum(o, c) - lo])
    fits = good & (np.abs(parts) < _INT2).all(axis=0)
    cum = np.concatenate(([0], np.cumsum(fits)))
    n = np.diff(off)
    ok = (n > 0) & (cum[off[1:]] - cum[off[:-1]] == n)
    parts = np.where(np.repeat(ok, n), parts, 0).astype(np.int16)
    return ok, [pgcopy.Arrays("int2", part, off) for part in parts]


def session_rows(chunk: Sequence[MinuteSession]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The binary COPY rows (``COLUMNS``) of ``chunk``; also the values as
    stored (six rows, NaN: NULL) and each session's volume scale (-1: raw),
    for the rollups.
    The decimal scales of open, high, low and close, of the volume and of the
    vwap are found apart (0013: a vendor's vwap has four decimals where its
    prices have two); a session with no scale for one of them is raw."""
    n = np.array([len(s.minute) for s in chunk], dtype=np.int64)
    off = pgcopy.offsets_of(n)
    x = _columns(chunk)
    kp, kv, kw = scales(x[:4], off), scales(x[4:5], off), scales(x[5:6], off)
    k = np.where((kp >= 0) & (kv >= 0) & (kw >= 0), kp, -1)
    finite = np.isfinite(x)
    scaled = np.repeat(k >= 0, n)
    p = np.repeat(10.0 ** np.maximum(k, 0), n)[None, :].repeat(6, axis=0)
    p[4] = np.repeat(10.0 ** np.maximum(kv, 0), n)
    p[5] = np.repeat(10.0 ** np.maximum(kw, 0), n)
    with np.errstate(invalid="ignore", over="ignore"):
        ints = np.rint(np.where(finite & scaled, x, 0.0) * p).astype(np.int64)
    o, h, lo, c = ints[:4]
    candle, parts = _candles(o, h, lo, c, finite[:4].all(axis=0) & scaled, off)
    cols = [_ints(ints[j], ~finite[j], off) for j in range(6)]
    mins = pgcopy.Arrays("int2", np.concatenate([s.minute for s in chunk]) if chunk
                         else np.zeros(0), off)
    tr = np.concatenate([np.asarray(s.trades, dtype=np.int64) for s in chunk]) if chunk \
        else np.zeros(0, dtype=np.int64)
    if len(tr) and tr.max() > _INT4_MAX:  # binary int4 would wrap where text COPY refused
        raise ValueError(f"a trade count of {int(tr.max())} does not fit minute_bars.trades (int4)")
    trades = pgcopy.Arrays("int4", tr, off, tr < 0)
    bad = [np.asarray(s.invalid, dtype=np.int64) for s in chunk]
    invalid = pgcopy.Arrays("int2", np.concatenate(bad) if bad else np.zeros(0),
                            pgcopy.offsets_of([len(b) for b in bad]))
    rows = []
    for i, s in enumerate(chunk):
        if candle[i]:  # open, then high, low and close NULL for the body and wicks
            fo, _, _, _, fv, fvw = (a.field(i) for a in cols)
            values = [pgcopy.int2(int(k[i])), fo, *([pgcopy.NULL] * 3), fv, fvw, pgcopy.NULL]
            extra = [*(part.field(i) for part in parts), pgcopy.int2(int(kv[i])),
                     pgcopy.int2(int(kw[i]))]
        elif k[i] >= 0:
            values = [pgcopy.int2(int(k[i])), *(c.field(i) for c in cols), pgcopy.NULL]
            extra = [*([pgcopy.NULL] * 3), pgcopy.int2(int(kv[i])), pgcopy.int2(int(kw[i]))]
        else:
            raw = x[:, off[i]:off[i + 1]].ravel()
            values = [pgcopy.NULL, *([pgcopy.NULL] * 6),
                      pgcopy.Arrays("float8", raw, np.array([0, len(raw)]), np.isnan(raw))
                      .field(0, dims=(6, int(n[i])))]
            extra = [pgcopy.NULL] * 5
        rows.append(pgcopy.row([pgcopy.text(s.symbol), pgcopy.date(s.session), mins.field(i),
                                *values, trades.field(i), invalid.field(i),
                                pgcopy.text(s.source), *extra]))
    stored = np.where(finite | ~scaled, x, np.nan)  # a scaled day keeps no inf: NULL
    return b"".join(rows), stored, np.where(k >= 0, kv, -1)


def _rollup_candles(b: Buckets, off: np.ndarray, kv: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, list[pgcopy.Arrays]]:
    """Which of one width's rollup rows (one per session, bars at ``off``)
    are stored as candles (0014: prices present, a decimal scale for them and
    one for the volumes, every difference a smallint), their two scales, and
    their open_scaled, volume_scaled, body, upper_wick and lower_wick arrays.
    The prices' scale is the row's own (fewer decimals than its session's
    when the vwap has more: the candles fit a smallint more often); the
    volumes' is the session's (``kv``, -1: raw), their sums being exact at it
    (a float sum is not: it is rounded to the session's decimals here)."""
    prices = np.stack([b.open, b.high, b.low, b.close])
    k = scales(prices, off)
    n = np.diff(off)
    p, pv = np.repeat(10.0 ** np.maximum(k, 0), n), np.repeat(10.0 ** np.maximum(kv, 0), n)
    with np.errstate(invalid="ignore", over="ignore"):
        o, h, lo, c = np.rint(np.nan_to_num(prices) * p).astype(np.int64)
        units = np.rint(np.nan_to_num(b.volume) * pv)
        vol = units.astype(np.int64)
    good = np.isfinite(np.vstack([prices, b.volume])).all(axis=0) & (np.abs(units) < _EXACT) \
        & np.repeat((k >= 0) & (kv >= 0), n)
    ok, parts = _candles(o, h, lo, c, good, off)
    return ok, np.stack([k, kv]), [pgcopy.Arrays("int8", o, off), pgcopy.Arrays("int8", vol, off),
                                   *parts]


def rollup_rows(chunk: Sequence[MinuteSession], stored: np.ndarray,
                volume_scales: np.ndarray) -> bytes:
    """The binary COPY rows (``ROLLUP_COLUMNS``) of the chunk's rollups, from
    its valid minutes (``stored`` and ``volume_scales``: the values and the
    volumes' scales as ``session_rows`` stores them), as candles where they
    can be (0014)."""
    if not chunk:
        return b""
    n = np.array([len(s.minute) for s in chunk], dtype=np.int64)
    sess = np.repeat(np.arange(len(chunk)), n)
    valid = np.ones(int(n.sum()), dtype=bool)
    base = pgcopy.offsets_of(n)[:-1]
    for i, s in enumerate(chunk):
        if len(s.invalid):
            valid[base[i] + np.asarray(s.invalid, dtype=np.int64)] = False
    minute = np.concatenate([s.minute for s in chunk])
    trades = np.concatenate([np.asarray(s.trades, dtype=np.int64) for s in chunk])
    if not valid.all():
        sess, minute, stored, trades = sess[valid], minute[valid], stored[:, valid], trades[valid]
    o, h, lo, c, v, vw = stored
    got = rollups(sess, minute, o, h, lo, c, v, vw, trades)
    out = []
    for tf, b in got.items():
        counts = np.bincount(b.session, minlength=len(chunk))
        off = pgcopy.offsets_of(counts)
        floats = []
        for a in (b.open, b.high, b.low, b.close, b.volume):
            null = np.isnan(a)
            floats.append(pgcopy.Arrays("float8", a, off, null if null.any() else None))
        null = np.isnan(b.vwap)
        vwap = pgcopy.Arrays("float8", b.vwap, off, null if null.any() else None)
        starts = pgcopy.Arrays("int2", b.start, off)
        counted = pgcopy.Arrays("int8", b.trades, off, b.trades < 0)
        candle, ks, ints = _rollup_candles(b, off, volume_scales)
        for i in np.flatnonzero(counts).tolist():
            s = chunk[i]
            head = [pgcopy.text(s.symbol), pgcopy.text(tf), pgcopy.date(s.session),
                    starts.field(i)]
            if candle[i]:
                out.append(pgcopy.row([*head, *([pgcopy.NULL] * 5), vwap.field(i),
                                       counted.field(i), pgcopy.int2(int(ks[0][i])),
                                       pgcopy.int2(int(ks[1][i])),
                                       *(a.field(i) for a in ints)]))
            else:
                out.append(pgcopy.row([*head, *(a.field(i) for a in floats), vwap.field(i),
                                       counted.field(i), *([pgcopy.NULL] * 7)]))
    return b"".join(out)
