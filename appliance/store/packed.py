"""A minute session's candle packed into one ``bytea`` (migration 0017): its
one home, packed by numpy for the writer, unpacked by numpy for the columnar
answers, the export and the daily/minute consistency check, and in SQL for
the rest.

``minute_bars.packed`` holds, one column after the other, each value
big-endian: open (int8), body, upper wick, lower wick (int2; the candle of
0013), volume, vwap (int8, at their own scales), trades (int4): 34 bytes a
bar. A NULL volume or vwap is the smallest int8 (no stored value is: they are
below 2**62, ``minutecopy._INT_LIMIT``), a NULL trade count -1 (counts are
never negative). ``minutes`` and ``invalid`` stay arrays (what SQL counts and
filters by).

Why: PostgreSQL sends an array element by element (``array_send``, a call of
the element type's send function and a small allocation each, about 45 ns),
and for the columnar answers and the export that was most of the server's
share (bench/README.md, issue 27); a ``bytea`` is sent as it is stored.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np

#: (field, big-endian type), in the order they are packed.
FIELDS = (("open", ">i8"), ("body", ">i2"), ("upper_wick", ">i2"), ("lower_wick", ">i2"),
          ("volume", ">i8"), ("vwap", ">i8"), ("trades", ">i4"))
_WIDTH = {name: np.dtype(t).itemsize for name, t in FIELDS}
#: Bytes a bar.
BAR_BYTES = sum(_WIDTH.values())
#: Each field's offset in a session of n bars: n times this.
_START = dict(zip([f for f, _ in FIELDS],
                  np.cumsum([0, *list(_WIDTH.values())[:-1]]).tolist(), strict=True))
#: A NULL volume or vwap (and a NULL element of an int8 array as
#: ``ops.arrowbars`` decodes it): no stored value is, they are below 2**62.
NULL_INT8 = -(2 ** 63)
#: A NULL trade count (counts are never negative).
NULL_TRADES = -1


def pack(columns: dict[str, np.ndarray], off: np.ndarray, rows: Sequence[int]) -> list[bytes]:
    """The packed bytes of the sessions ``rows`` of a chunk whose bars are
    ``off[i]``..``off[i + 1]`` of ``columns`` (every field of ``FIELDS``,
    integers; NULLs already their sentinels)."""
    blobs = [np.ascontiguousarray(columns[name], dtype=t).tobytes() for name, t in FIELDS]
    widths = [_WIDTH[name] for name, _ in FIELDS]
    return [b"".join(blob[off[i] * w:off[i + 1] * w] for blob, w in zip(blobs, widths, strict=True))
            for i in rows]


def unpack(blobs: Sequence[bytes], sizes: np.ndarray, name: str) -> np.ndarray:
    """Field ``name`` of packed sessions (``sizes`` bars each), joined, as
    native int64 numbers (NULLs their sentinels)."""
    w, start = _WIDTH[name], _START[name]
    part = b"".join([memoryview(b)[start * n:(start + w) * n]
                     for b, n in zip(blobs, sizes.tolist(), strict=True)])
    return np.frombuffer(part, dict(FIELDS)[name]).astype(np.int64)


def sql_field(name: str, blob: str, n: str, i: str) -> str:
    """SQL of field ``name`` of the ``i``-th bar (1-based) of a packed
    session ``blob`` of ``n`` bars, NULL for its NULL (and for a NULL blob).
    PostgreSQL has no function reading a number out of a ``bytea``: an int8
    or int4 goes through its hex digits and a bit string (0.2 µs an int8,
    against 0.3 for eight ``get_byte``), an int2 is two ``get_byte`` (the
    faster way for two bytes). ``blob`` should be detoasted once a row (see
    ``UNNEST``), or each call decompresses the whole value."""
    w = _WIDTH[name]
    at = f"({_START[name]} * {n} + {w} * ({i} - 1))::int"
    if w == 2:  # unsigned, then its sign: (u XOR 0x8000) - 0x8000
        value = (f"((((get_byte({blob}, {at}) << 8) | get_byte({blob}, {at} + 1)) # 32768)"
                 f" - 32768)")
    else:
        value = (f"('x' || encode(substring({blob} FROM {at} + 1 FOR {w}), 'hex'))"
                 f"::bit({8 * w})::int{w}")
    null = {"volume": NULL_INT8, "vwap": NULL_INT8, "trades": NULL_TRADES}.get(name)
    if null is None:
        return value
    return f"nullif({value}, ({null})::int{w})"


def _unnest() -> str:
    """Each bar of the minute sessions ``b`` as ``u`` (for
    ``store.minutes._decoded``): the arrays unnested, or a packed session's
    numbers (0017) read once each (the ``OFFSET 0`` keeps the planner from
    copying their expressions into every use; the numbers a query does not
    use are not read), from its bytes detoasted once a row (``pk``; read in
    an expression, each ``get_byte`` would decompress the whole value)."""
    f = {name: sql_field(name, "pk.p", "pk.n", "a.i") for name, _ in FIELDS}
    return f"""CROSS JOIN LATERAL (SELECT b.packed || ''::bytea AS p,
                                          cardinality(b.minutes) AS n OFFSET 0) pk
        CROSS JOIN LATERAL (
          SELECT * FROM unnest(b.minutes, b.open, b.high, b.low, b.close, b.volume, b.vwap,
                               b.trades, b.body, b.upper_wick, b.lower_wick)
                        WITH ORDINALITY a(m, o, h, lo, c, v, vw, n, bd, uw, lw, i)
          WHERE pk.p IS NULL
          UNION ALL
          (SELECT a.m, {f['open']}, NULL::int8, NULL::int8, NULL::int8, {f['volume']},
                  {f['vwap']}, {f['trades']}::int4, {f['body']}::int2,
                  {f['upper_wick']}::int2, {f['lower_wick']}::int2, a.i
           FROM unnest(b.minutes) WITH ORDINALITY a(m, i) WHERE pk.p IS NOT NULL
           OFFSET 0)) u"""


UNNEST = _unnest()


def regular_aggregates(conn: Any, symbol: str, start: dt.date, end: dt.date, open_min: int,
                       close_min: int, early: Sequence[dt.date], early_close_min: int
                       ) -> list[tuple[dt.date, float, float, float | None]]:
    """``store.minutes.regular_aggregates`` of the packed sessions of
    ``symbol`` in ``start``..``end``: (session, high, low, volume) of each
    one's valid regular-hours minutes, the same numbers as in SQL (the
    integers over 10^scale; a NULL volume left out of the sum), read by numpy
    (the consistency check reads every stored session of a symbol on each
    update: in SQL, each bar's numbers cost ``get_byte`` calls)."""
    rows = conn.execute("""SELECT session, scale, volume_scale, minutes, invalid, packed
                           FROM minute_bars WHERE symbol = %s AND session BETWEEN %s AND %s
                             AND packed IS NOT NULL ORDER BY session""",
                        (symbol, start, end)).fetchall()
    if not rows:
        return []
    sizes = np.array([len(r[3]) for r in rows], np.int64)
    blobs = [r[5] for r in rows]
    o = unpack(blobs, sizes, "open")
    c = o + unpack(blobs, sizes, "body")
    p = np.repeat(10.0 ** np.array([r[1] for r in rows], np.float64), sizes)
    high = (np.maximum(o, c) + unpack(blobs, sizes, "upper_wick")) / p
    low = (np.minimum(o, c) - unpack(blobs, sizes, "lower_wick")) / p
    vol = unpack(blobs, sizes, "volume")
    minute = np.concatenate([np.asarray(r[3], np.int64) for r in rows])
    first = np.cumsum(sizes) - sizes
    keep = np.ones(len(minute), bool)
    for i, r in enumerate(rows):
        if r[4]:
            keep[first[i] + np.asarray(r[4], np.int64)] = False
    short = set(early)
    closes = np.array([early_close_min if r[0] in short else close_min for r in rows])
    keep &= (minute >= open_min) & (minute < np.repeat(closes, sizes))
    out = []
    for i, r in enumerate(rows):  # a few hundred sessions a year: numpy within each
        sel = np.nonzero(keep[first[i]:first[i] + sizes[i]])[0] + first[i]
        if len(sel) == 0:
            continue
        v = vol[sel]
        v = v[v != NULL_INT8] / 10.0 ** r[2]  # each bar's volume, then their sum, as SQL
        out.append((r[0], float(high[sel].max()), float(low[sel].min()),
                    float(v.sum()) if len(v) else None))
    return out
