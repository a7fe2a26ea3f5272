"""Minute sessions and their rollups as binary COPY rows (``pgcopy``), many
sessions at a time, and their COPYs: the rows of ``minute_bars`` (or of its
stage, ``minute_stage``) and of ``rollup_bars``. The layout and its exactness rule (integers times
10^-scale, or float8 ``raw``) are described in ``migrations/0003_intraday.sql``,
the candle's body and wicks and the volume's own scale in ``0013_minute_offsets.sql``.
"""
from __future__ import annotations

import datetime as dt
import functools
import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from psycopg import Cursor, sql

from appliance.core.rollups import Buckets, rollups
from appliance.core.timeframes import ROLLUPS
from appliance.store import packed, pgcopy

#: Fewest decimals tried before a day is stored as float8 (``raw``).
MAX_SCALE = 9
_INT_LIMIT = 2.0 ** 62
_INT4_MAX = 2 ** 31 - 1
#: minute_bars' columns in the order ``session_rows`` writes them.
COLUMNS = ("symbol", "session", "minutes", "scale", "open", "high", "low", "close", "volume",
           "vwap", "raw", "trades", "invalid", "source", "body", "upper_wick", "lower_wick",
           "volume_scale", "vwap_scale", "packed")
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


#: Values of each group whose fewest decimals are found first (``scales``).
SAMPLE = 8


def _bad(xs: np.ndarray, p: float | np.ndarray, top: float, pmax: float) -> np.ndarray:
    """Per column of ``xs``: some value not given back at the scale ``p``
    (a number, or one per column), or too big for it (``top``, ``pmax``:
    the largest value and scale, the bound checked only when reachable)."""
    r = np.multiply(xs, p)
    np.rint(r, out=r)
    bad = np.not_equal(np.divide(r, p), xs)
    if top * pmax >= _INT_LIMIT:
        bad |= np.abs(r) >= _INT_LIMIT
    # row by row: numpy's any(axis=0) over a few long rows is slow
    return functools.reduce(np.logical_or, bad)


def scales(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per group of columns of ``x`` (rows: values; ``offsets``: where each
    group starts): ``_scale_of`` of its values, -1 for None.

    The first ``SAMPLE`` values of each group are tried at 0, 1, 2, ...
    decimals; the fewest that give them back are the group's whenever every
    value of it is given back at them (fewer fail on the sample, so on the
    group), which one pass over the whole of ``x`` checks. The rare group
    whose later values need more decimals than its first is tried again
    scale by scale (``_scales_by_pass``)."""
    n = len(offsets) - 1
    out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out
    rows = x.shape[0]
    sizes = np.diff(offsets)
    with np.errstate(invalid="ignore", over="ignore"):
        xs = np.where(np.isfinite(x), x, 0.0)
        top = float(np.abs(xs).max()) if xs.size else 0.0
        m = np.minimum(sizes, SAMPLE)
        take = offsets[:-1, None] + np.minimum(np.arange(SAMPLE), np.maximum(m - 1, 0)[:, None])
        sample = (xs[:, np.minimum(take, max(xs.shape[1] - 1, 0)).ravel()] if xs.shape[1]
                  else np.zeros((rows, n * SAMPLE)))
        sample[:, np.repeat(m == 0, SAMPLE)] = 0.0  # an empty group: any scale
        sample = sample.reshape(rows, n, SAMPLE)
        first = np.full(n, -1, dtype=np.int64)
        todo = np.arange(n)
        for k in range(MAX_SCALE + 1):
            p = 10.0 ** k
            part = sample[:, todo, :].reshape(rows, -1)
            ok = ~_bad(part, p, top, p).reshape(len(todo), SAMPLE).any(axis=1)
            first[todo[ok]] = k
            todo = todo[~ok]
            if not len(todo):
                break
        has = first >= 0
        each = np.repeat(10.0 ** np.where(has, first, 0), sizes)
        bad = _bad(xs, each, top, 10.0 ** first.max()) & np.repeat(has, sizes)
        cum = np.concatenate(([0], np.cumsum(bad)))
        ok = has & (cum[offsets[1:]] == cum[offsets[:-1]])
        out[ok] = first[ok]
    again = np.nonzero(has & ~ok)[0]
    if len(again):
        cols = np.concatenate([np.arange(offsets[g], offsets[g + 1]) for g in again])
        out[again] = _scales_by_pass(x[:, cols], pgcopy.offsets_of(sizes[again]))
    return out


def _scales_by_pass(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``scales`` one scale at a time over every value of the groups left."""
    n = len(offsets) - 1
    out = np.full(n, -1, dtype=np.int64)
    group = np.arange(n)
    sizes = np.diff(offsets)
    with np.errstate(invalid="ignore", over="ignore"):
        xs = np.where(np.isfinite(x), x, 0.0)
        top = float(np.abs(xs).max()) if xs.size else 0.0
        for k in range(MAX_SCALE + 1):
            p = 10.0 ** k
            bad = _bad(xs, p, top, p)
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
             off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which rows (bars at ``off``) can be stored as candles (0013, 0014):
    every bar ``good`` and its body (close - open), upper wick (high -
    greatest(open, close)) and lower wick (least(open, close) - low) each a
    smallint; and those three rows of ``int16`` (exact, being integers)."""
    parts = np.stack([c - o, h - np.maximum(o, c), np.minimum(o, c) - lo])
    fits = good & (np.abs(parts) < _INT2).all(axis=0)
    cum = np.concatenate(([0], np.cumsum(fits)))
    n = np.diff(off)
    ok = (n > 0) & (cum[off[1:]] - cum[off[:-1]] == n)
    return ok, np.where(np.repeat(ok, n), parts, 0).astype(np.int16)


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
    # the arrays only where a session is stored as arrays (a packed candle is the rule)
    cols = [_ints(ints[j], ~finite[j], off) for j in range(6)] \
        if (~candle & (k >= 0)).any() else []
    mins = pgcopy.Arrays("int2", np.concatenate([s.minute for s in chunk]) if chunk
                         else np.zeros(0), off)
    tr = np.concatenate([np.asarray(s.trades, dtype=np.int64) for s in chunk]) if chunk \
        else np.zeros(0, dtype=np.int64)
    if len(tr) and tr.max() > _INT4_MAX:  # binary int4 would wrap where text COPY refused
        raise ValueError(f"a trade count of {int(tr.max())} does not fit minute_bars.trades (int4)")
    trades = pgcopy.Arrays("int4", tr, off, tr < 0) if not candle.all() else None
    which = np.nonzero(candle)[0].tolist()
    packs = dict(zip(which, packed.pack(
        {"open": o, "body": parts[0], "upper_wick": parts[1], "lower_wick": parts[2],
         "volume": np.where(finite[4], ints[4], packed.NULL_INT8),
         "vwap": np.where(finite[5], ints[5], packed.NULL_INT8),
         "trades": np.where(tr < 0, packed.NULL_TRADES, tr)}, off, which), strict=True))
    bad = [np.asarray(s.invalid, dtype=np.int64) for s in chunk]
    invalid = pgcopy.Arrays("int2", np.concatenate(bad) if bad else np.zeros(0),
                            pgcopy.offsets_of([len(b) for b in bad]))
    rows = []
    for i, s in enumerate(chunk):
        if candle[i]:  # the numbers packed (0017), the arrays NULL
            values, tr_i = [pgcopy.int2(int(k[i])), *([pgcopy.NULL] * 7)], pgcopy.NULL
            extra = [*([pgcopy.NULL] * 3), pgcopy.int2(int(kv[i])), pgcopy.int2(int(kw[i])),
                     pgcopy.binary(packs[i])]
        elif k[i] >= 0:
            values = [pgcopy.int2(int(k[i])), *(c.field(i) for c in cols), pgcopy.NULL]
            tr_i = trades.field(i)  # type: ignore[union-attr]  # built: not every row a candle
            extra = [*([pgcopy.NULL] * 3), pgcopy.int2(int(kv[i])), pgcopy.int2(int(kw[i])),
                     pgcopy.NULL]
        else:
            raw = x[:, off[i]:off[i + 1]].ravel()
            values = [pgcopy.NULL, *([pgcopy.NULL] * 6),
                      pgcopy.Arrays("float8", raw, np.array([0, len(raw)]), np.isnan(raw))
                      .field(0, dims=(6, int(n[i])))]
            tr_i = trades.field(i)  # type: ignore[union-attr]
            extra = [pgcopy.NULL] * 6
        rows.append(pgcopy.row([pgcopy.text(s.symbol), pgcopy.date(s.session), mins.field(i),
                                *values, tr_i, invalid.field(i),
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
                                   *(pgcopy.Arrays("int2", part, off) for part in parts)]


@dataclass(frozen=True)
class RollupInputs:
    """What the rollups of a chunk of sessions are computed from: each
    session's key, its valid minutes (``minute``, ``trades`` and the six
    rows of ``stored``, one session after another; ``sess``: the session of
    each) and its volumes' scale (``session_rows``' values as stored)."""
    keys: list[tuple[str, dt.date]]
    sess: np.ndarray
    minute: np.ndarray
    trades: np.ndarray
    stored: np.ndarray
    volume_scales: np.ndarray

    @classmethod
    def of(cls, chunk: Sequence[MinuteSession], stored: np.ndarray,
           volume_scales: np.ndarray) -> RollupInputs:
        n = np.array([len(s.minute) for s in chunk], dtype=np.int64)
        sess = np.repeat(np.arange(len(chunk), dtype=np.int32), n)
        valid = np.ones(int(n.sum()), dtype=bool)
        base = pgcopy.offsets_of(n)[:-1]
        for i, s in enumerate(chunk):
            if len(s.invalid):
                valid[base[i] + np.asarray(s.invalid, dtype=np.int64)] = False
        minute = np.concatenate([s.minute for s in chunk]).astype(np.int16) if chunk \
            else np.zeros(0, dtype=np.int16)
        trades = np.concatenate([np.asarray(s.trades, dtype=np.int64) for s in chunk]) \
            if chunk else np.zeros(0, dtype=np.int64)
        if not valid.all():
            sess, minute, stored, trades = sess[valid], minute[valid], stored[:, valid], \
                trades[valid]
        return cls([(s.symbol, s.session) for s in chunk], sess, minute, trades, stored,
                   volume_scales)


def rollup_rows_of(r: RollupInputs) -> bytes:
    """The binary COPY rows (``ROLLUP_COLUMNS``) of the rollups of a chunk's
    valid minutes (``RollupInputs.of``: the values and the volumes' scales as
    ``session_rows`` stores them), as candles where they can be (0014)."""
    if not r.keys:
        return b""
    volume_scales = r.volume_scales
    o, h, lo, c, v, vw = r.stored
    got = rollups(r.sess, r.minute.astype(np.int64), o, h, lo, c, v, vw, r.trades)
    out = []
    for tf, b in got.items():
        counts = np.bincount(b.session, minlength=len(r.keys))
        off = pgcopy.offsets_of(counts)
        null = np.isnan(b.vwap)
        vwap = pgcopy.Arrays("float8", b.vwap, off, null if null.any() else None)
        starts = pgcopy.Arrays("int2", b.start, off)
        counted = pgcopy.Arrays("int8", b.trades, off, b.trades < 0)
        candle, ks, ints = _rollup_candles(b, off, volume_scales)
        # the float arrays of the rows that are no candle (most rows are)
        floats = []
        rest = ~candle & (counts > 0)
        if rest.any():
            bars = np.repeat(rest, counts)
            sub = pgcopy.offsets_of(counts[rest])
            for a in (b.open, b.high, b.low, b.close, b.volume):
                a = a[bars]
                null = np.isnan(a)
                floats.append(pgcopy.Arrays("float8", a, sub, null if null.any() else None))
        at = np.cumsum(rest) - 1  # row i's place among them
        k0, k1 = ks[0].tolist(), ks[1].tolist()
        for i in np.flatnonzero(counts).tolist():
            symbol, session = r.keys[i]
            head = [pgcopy.text(symbol), pgcopy.text(tf), pgcopy.date(session),
                    starts.field(i)]
            if candle[i]:
                out.append(pgcopy.row([*head, *_NULL5, vwap.field(i), counted.field(i),
                                       pgcopy.int2(k0[i]), pgcopy.int2(k1[i]),
                                       *(a.field(i) for a in ints)]))
            else:
                j = int(at[i])
                out.append(pgcopy.row([*head, *(a.field(j) for a in floats), vwap.field(i),
                                       counted.field(i), *_NULL7]))
    return b"".join(out)


_NULL5, _NULL7 = [pgcopy.NULL] * 5, [pgcopy.NULL] * 7


#: Sessions, and bars, per chunk encoded together: bounded memory (a
#: worker ingesting a whole-market minute day peaks near 330 MB with
#: 50,000 bars, 380-406 MB with 100,000; bench/README.md, issue 26).
CHUNK, CHUNK_BARS = 500, 50_000
SPOOL_BLOCK = 1 << 20
_COPY = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)")


def chunks(sessions: Iterable[MinuteSession]) -> Iterator[list[MinuteSession]]:
    chunk: list[MinuteSession] = []
    bars = 0
    for s in sessions:
        chunk.append(s)
        bars += len(s.minute)
        if len(chunk) >= CHUNK or bars >= CHUNK_BARS:
            yield chunk
            chunk, bars = [], 0
    if chunk:
        yield chunk


class RollupSpool:
    """The ``RollupInputs`` of every chunk copied, kept in a file (bounded
    memory: about 60 bytes a minute bar) until the minutes are copied; the
    rollups are then computed chunk by chunk while their own COPY runs, so
    that the server stores one chunk's rollups while the next are computed
    (computed during the minutes' COPY instead, they left the server alone
    with the rollups' COPY after it)."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile()
        self.keys: list[tuple[str, dt.date]] = []

    def add(self, inputs: RollupInputs) -> None:
        self.keys += inputs.keys
        pickle.dump(inputs, self.file, protocol=pickle.HIGHEST_PROTOCOL)

    def __iter__(self) -> Iterator[RollupInputs]:
        self.file.seek(0)
        while True:
            try:
                yield pickle.load(self.file)
            except EOFError:
                return

    def close(self) -> None:
        self.file.close()


@contextmanager
def _binary_copy(cur: Cursor[Any], table: str, columns: Sequence[str]) -> Iterator[Any]:
    """A binary COPY into ``table`` (its signature and trailer written
    here), its sends in a thread of their own (``pgcopy.queued``)."""
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    with cur.copy(_COPY.format(sql.SQL(table), cols), writer=pgcopy.queued(cur)) as cp:
        cp.write(pgcopy.SIGNATURE)
        yield cp
        cp.write(pgcopy.TRAILER)


def copy_sessions(cur: Cursor[Any], sessions: Iterable[MinuteSession], *,
                  new: Callable[[MinuteSession], bool] | None,
                  spool: RollupSpool | None) -> int:
    """COPY ``sessions`` into ``minute_stage``, or with ``new`` those it says
    are new straight into ``minute_bars`` and the others into the stage
    after them; the inputs of their rollups into ``spool`` (None: no
    rollups). One COPY streamed, the server storing a chunk while the next
    is encoded. Returns the sessions copied straight into minute_bars."""
    direct = 0
    with tempfile.TemporaryFile() as staged:
        with _binary_copy(cur, "minute_stage" if new is None else "minute_bars", COLUMNS) as cp:
            for chunk in chunks(sessions):
                if new is None:
                    parts = [chunk]
                else:
                    fresh = [new(s) for s in chunk]
                    parts = [[s for s, f in zip(chunk, fresh, strict=True) if f],
                             [s for s, f in zip(chunk, fresh, strict=True) if not f]]
                    direct += len(parts[0])
                for k, part in enumerate(parts):
                    if not part:
                        continue
                    rows, stored, volume_scales = session_rows(part)
                    (cp if k == 0 else staged).write(rows)
                    if spool is not None:
                        spool.add(RollupInputs.of(part, stored, volume_scales))
        if staged.tell():
            staged.seek(0)
            with _binary_copy(cur, "minute_stage", COLUMNS) as cp:
                while block := staged.read(SPOOL_BLOCK):
                    cp.write(block)
    return direct


def copy_rollups(cur: Cursor[Any], spool: RollupSpool) -> None:
    """The rollups of the sessions in ``spool`` replaced by those computed
    from its inputs (a session without a valid minute has none)."""
    keys = spool.keys
    cur.execute("""DELETE FROM rollup_bars r
                   USING unnest(%s::text[], %s::date[]) k(symbol, session),
                         unnest(%s::text[]) tf(name)
                   WHERE r.symbol = k.symbol AND r.timeframe = tf.name
                     AND r.session = k.session""",
                [[k[0] for k in keys], [k[1] for k in keys], list(ROLLUPS)])
    with _binary_copy(cur, "rollup_bars", ROLLUP_COLUMNS) as cp:
        for inputs in spool:
            cp.write(rollup_rows_of(inputs))
