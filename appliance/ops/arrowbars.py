"""Bars as Arrow record batches (the API's answers, the bulk endpoint, the
exported dataset; ``arrowfiles`` writes them out).

Columns, typed as a researcher expects: ``symbol`` dictionary-encoded (one
dictionary per answer: every batch shares it), ``time`` the bar's start as a
UTC timestamp (ms; the exchange time zone is ``exchange_timezone`` in the
schema metadata, and a daily or weekly bar starts at midnight New York of
its session or Sunday), prices float64 (the stored doubles, untouched),
``volume`` float64 as stored, quality flags booleans. The request (symbol,
timeframe, adjustment, source, ...) is in the file's metadata under
``appliance``.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa

from appliance.store import adjustment, packed
from appliance.store.columnar import COLUMNS, bars_sql, kind_of, session_arrays
from appliance.store.packed import NULL_INT8, NULL_TRADES

FORMATS = ("json", "csv", "parquet", "arrow")
MIMETYPES = {"parquet": "application/vnd.apache.parquet",
             "arrow": "application/vnd.apache.arrow.stream", "csv": "text/csv"}
SUFFIX = {"parquet": "parquet", "arrow": "arrows", "csv": "csv"}

_TYPES = {"session": pa.date32(), "trades": pa.int64(), "validated": pa.bool_(),
          "quality_score": pa.float32(), "gap_detected": pa.bool_(), "gap_kind": pa.string(),
          "source": pa.string(), "sessions": pa.int64()}
SYMBOL_TYPE = pa.dictionary(pa.int32(), pa.string())
TIME_TYPE = pa.timestamp("ms", tz="UTC")


def schema(timeframe: str, request: dict | None = None, *, tz: str) -> pa.Schema:
    """The schema of ``timeframe``'s bars, with the request in its metadata."""
    fields = [pa.field("symbol", SYMBOL_TYPE, nullable=False),
              pa.field("time", TIME_TYPE, nullable=False)]
    for c in COLUMNS[kind_of(timeframe)]:
        fields.append(pa.field(c, _TYPES.get(c, pa.float64())))
    meta = {"exchange_timezone": tz, "timeframe": timeframe}
    if request is not None:
        meta["appliance"] = json.dumps(request, default=str)
    return pa.schema(fields, metadata=meta)


class Batches:
    """Turns fetched rows ``(ms, *COLUMNS[kind])`` of one symbol at a time
    into record batches of ``schema``; ``symbols`` is the dictionary (every
    symbol of the answer, in order)."""

    def __init__(self, sch: pa.Schema, symbols: Sequence[str]):
        self.schema = sch
        self.dictionary = pa.array(list(symbols), pa.string())
        self.index = {s: i for i, s in enumerate(symbols)}
        self.fields = list(sch)[2:]

    def batch(self, symbol: str, rows: Sequence[tuple]) -> pa.RecordBatch:
        cols = list(zip(*rows, strict=False)) if rows else [()] * (len(self.fields) + 1)
        sym = pa.DictionaryArray.from_arrays(
            pa.array([self.index[symbol]] * len(rows), pa.int32()), self.dictionary)
        arrays = [sym, pa.array(cols[0], pa.int64()).cast(TIME_TYPE)]
        for f, values in zip(self.fields, cols[1:], strict=False):
            arrays.append(pa.array(values, f.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def session_batches(self, symbol: str, rows: Iterable[tuple], *, steps: Sequence[tuple],
                        tz: str, include_invalid: bool, after: dt.datetime | None = None,
                        limit: int | None = None,
                        rows_per_batch: int = 65536) -> Iterator[pa.RecordBatch]:
        """Record batches of intraday bars from stored sessions as
        ``store.columnar.session_arrays`` reads them, decoded by numpy
        (``decode_sessions``): the bars of the JSON answer
        (``store.minutes._source``), same values computed the same way, the
        bars after ``after`` only, at most ``limit`` of them, oldest first,
        at most ``rows_per_batch`` per batch."""
        # whole ms, rounded down: a bar (whole ms) is after ``after`` if after this
        after_ms = None if after is None else (after - _EPOCH) // dt.timedelta(milliseconds=1)
        left = limit
        group: list[tuple] = []
        n = 0
        for row in rows:
            group.append(row)
            n += row[-1]  # its bars
            # a session's bars all come after the previous session's (minutes
            # of its day): a group of whole sessions is a run of the answer
            if n < rows_per_batch and (left is None or n < left):
                continue
            table = self._decode(symbol, group, steps, tz, include_invalid, after_ms)
            group, n = [], 0
            if left is not None:
                table = table.slice(0, left)
                left -= table.num_rows
            yield from table.to_batches(rows_per_batch)
            if left == 0:
                return
        if group:
            table = self._decode(symbol, group, steps, tz, include_invalid, after_ms)
            if left is not None:
                table = table.slice(0, left)
            yield from table.to_batches(rows_per_batch)

    def _decode(self, symbol: str, rows: list[tuple], steps, tz: str, include_invalid: bool,
                after_ms: int | None) -> pa.Table:
        bars = decode_sessions(rows, steps, tz)
        keep = np.ones(len(bars["ms"]), bool)
        if not include_invalid:
            keep &= bars["validated"]
        if after_ms is not None:
            keep &= bars["ms"] > after_ms
        if keep.all() and (len(keep) < 2 or (np.diff(bars["ms"]) > 0).all()):
            order: slice | np.ndarray = slice(None)  # every bar, in order: no copy
        else:
            order = np.nonzero(keep)[0]
            if len(order) > 1 and not (np.diff(bars["ms"][order]) > 0).all():
                order = order[np.argsort(bars["ms"][order], kind="stable")]
        n = len(bars["ms"][order])
        sym = pa.DictionaryArray.from_arrays(
            pa.array(np.full(n, self.index[symbol], np.int32)), self.dictionary)
        arrays = [sym, pa.array(bars["ms"][order]).cast(TIME_TYPE),
                  pa.array(bars["day"][order].astype(np.int32)).cast(pa.date32())]
        for c in _PRICE_COLUMNS:
            arrays.append(pa.array(bars[c][order], from_pandas=True))
        trades = bars["trades"][order]
        arrays.append(pa.array(trades, mask=trades < 0))
        arrays.append(pa.array(bars["validated"][order]))
        return pa.Table.from_arrays(arrays, schema=self.schema)


_PRICE_COLUMNS = ("open", "high", "low", "close", "volume", "vwap")
_UNIX_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


#: An array element's type (oid) -> (width, struct code of its value).
_ELEMENT = {21: (2, ">h"), 23: (4, ">i"), 20: (8, ">q"), 701: (8, ">d")}


def _array(data: bytes | None) -> tuple[int, int, int, bool]:
    """(elements, offset of the first element's length, element width, any
    NULL element) of an array in PostgreSQL's binary form: ndim, has-null
    flag, element type, (size, lower bound) per dimension, then per element
    its length (4 bytes, -1 for NULL) and value. Without a NULL element (the
    rule) every element has the same width and the values are a fixed
    stride apart."""
    if data is None:
        return 0, 0, 0, False
    ndim, has_null, oid = struct.unpack_from(">iiI", data)
    if ndim == 0:
        return 0, 12, 0, False
    dims = struct.unpack_from(f">{2 * ndim}i", data, 12)
    n = 1
    for size in dims[0::2]:
        n *= size
    return n, 12 + 8 * ndim, _ELEMENT[oid][0], bool(has_null)


def _elements(data: bytes | None, first: int = 0, count: int | None = None,
              fill: float = 0) -> bytes:
    """The element run (lengths and values) of ``count`` elements (all: None)
    from the ``first`` of a binary array, each NULL element replaced by
    ``fill`` (so that every element has the same width)."""
    n, off, width, has_null = _array(data)
    if n == 0:
        return b""
    assert data is not None
    count = n - first if count is None else count
    if not has_null:
        start = off + first * (4 + width)
        return data[start:start + count * (4 + width)]  # type: ignore[index]
    head = struct.pack(">i", width)
    null = head + struct.pack(_ELEMENT[struct.unpack_from(">I", data, 8)[0]][1], fill)
    out, pos = [], off
    for i in range(first + count):
        (length,) = struct.unpack_from(">i", data, pos)
        item = null if length < 0 else data[pos:pos + 4 + length]
        pos += 4 + max(length, 0)
        if i >= first:
            out.append(item)
    return b"".join(out)


def _values(parts: list[bytes], dtype: str) -> np.ndarray:
    """The values of element runs (``_elements``), joined, as native numbers."""
    rec = np.dtype([("len", ">i4"), ("v", dtype)])
    return np.frombuffer(b"".join(parts), rec)["v"].astype(dtype.replace(">", "="))


def utc_ms(days: np.ndarray, minutes: np.ndarray, tz: str) -> np.ndarray:
    """Unix ms of each bar starting ``minutes`` after midnight of the session
    ``days`` (days since 1970-01-01) at the exchange time zone ``tz``, as
    PostgreSQL's ``timestamp AT TIME ZONE`` gives it: a wall time that does not
    exist or exists twice (a DST change) takes the smaller of its two offsets
    (standard time)."""
    local = (days.astype(np.int64) * 1440 + minutes) * 60_000
    if len(days) and (np.diff(days) >= 0).all():  # sessions in order (the rule): runs of days
        first = np.concatenate(([0], np.flatnonzero(np.diff(days)) + 1))
        uniq = days[first]
        inverse = np.repeat(np.arange(len(first)), np.diff(np.append(first, len(days))))
    else:
        uniq, inverse = np.unique(days, return_inverse=True)
        inverse = inverse.reshape(-1)
    per_day = np.empty(len(uniq), np.int64)
    changes = []
    for i, d in enumerate(uniq.tolist()):
        per_day[i], changes_today = _day_offsets(int(d), tz)
        if changes_today:
            changes.append((i, dt.datetime.fromordinal(int(d) + _UNIX_EPOCH_ORDINAL)))
    offset = per_day[inverse]
    zone = ZoneInfo(tz)
    for i, day in changes:  # a DST change on this day: minute by minute
        sel = np.nonzero(inverse == i)[0]
        offset[sel] = [_offset_ms(day + dt.timedelta(minutes=m), zone)
                       for m in minutes[sel].tolist()]
    return local - offset


@functools.lru_cache(maxsize=65536)
def _day_offsets(day: int, tz: str) -> tuple[int, bool]:
    """(UTC offset in ms at the start of the day ``day`` (days since
    1970-01-01) in ``tz``, whether it changes that day)."""
    zone = ZoneInfo(tz)
    wall = dt.datetime.fromordinal(day + _UNIX_EPOCH_ORDINAL)
    at = _offset_ms(wall, zone)
    return at, at != _offset_ms(wall.replace(hour=23, minute=59), zone)


def _offset_ms(wall: dt.datetime, zone: ZoneInfo) -> int:
    return min(int(wall.replace(tzinfo=zone, fold=f).utcoffset().total_seconds())  # type: ignore[union-attr]
               for f in (0, 1)) * 1000


def _factors(days: np.ndarray, steps: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """The price and volume factors of the sessions ``days`` (days since
    1970-01-01): those of the step (``store.adjustment.steps``) that holds
    the session, else 1."""
    kp, kv = np.ones(len(days)), np.ones(len(days))
    if not steps:
        return kp, kv
    big = np.iinfo(np.int64).max
    lo = np.array([-big if s[0] is None else s[0].toordinal() - _UNIX_EPOCH_ORDINAL
                   for s in steps], np.int64)
    hi = np.array([big if s[1] is None else s[1].toordinal() - _UNIX_EPOCH_ORDINAL
                   for s in steps], np.int64)
    j = np.searchsorted(hi, days, side="right")  # the first step ending after the session
    inside = j < len(hi)
    j = np.minimum(j, len(hi) - 1)
    inside &= lo[j] <= days
    kp[inside] = np.array([s[2] for s in steps], np.float64)[j[inside]]
    kv[inside] = np.array([s[3] for s in steps], np.float64)[j[inside]]
    return kp, kv


#: The binary form of an empty array (what a missing array decodes as).
_NO_ARRAY = struct.pack(">iiI", 0, 0, 20)


def _column(arrays: Sequence[bytes | None], dtype: str,
            fill: float = 0) -> tuple[np.ndarray, np.ndarray]:
    """The values of binary arrays of one or no dimension (``dtype`` the
    big-endian element type, e.g. ``>i8``), joined, as native numbers (a NULL
    element: ``fill``; a missing array: none), and the number of elements of
    each array. The headers are read by numpy for all the arrays at once;
    arrays with a NULL element go element by element (``_elements``)."""
    parts = [_NO_ARRAY if a is None else a for a in arrays]
    width = np.dtype(dtype).itemsize
    buf = np.frombuffer(b"".join(parts), np.uint8)
    lens = np.fromiter(map(len, parts), np.int64, len(parts))
    starts = np.cumsum(lens) - lens
    head = buf[starts[:, None] + np.arange(8)].copy().view(">i4")  # ndim, has-null
    one = head[:, 0] == 1
    n = np.zeros(len(parts), np.int64)
    if one.any():
        n[one] = buf[starts[one, None] + np.arange(12, 16)].copy().view(">i4").ravel()
    if head[:, 1].any() or (head[:, 0] > 1).any() or \
            (lens != np.where(one, 20 + n * (4 + width), 12)).any():
        values = _values([_elements(a, fill=fill) for a in parts], dtype)
        return values, np.array([_array(a)[0] for a in parts], np.int64)
    rec = np.dtype([("len", ">i4"), ("v", dtype)])
    body = b"".join([memoryview(a)[20:] for a, k in zip(parts, one.tolist(), strict=True) if k])
    return np.frombuffer(body, rec)["v"].astype(dtype.replace(">", "=")), n


def _minute_ints(rows: Sequence[tuple], sizes: np.ndarray) -> np.ndarray:
    """The scaled minute sessions' integers as the prices and volume they
    stand for (six rows, NULL_INT8: none): close, high and low rebuilt from
    the candle's body and wicks where the session has them, packed (0017,
    the rule) or as arrays (0013; as ``store.minutes._decoded`` in SQL)."""
    is_packed = np.fromiter((r[17] is not None for r in rows), bool, len(rows))
    if is_packed.all():
        return _packed_ints([r[17] for r in rows], sizes)
    if not is_packed.any():
        return _array_ints(rows, sizes)
    ints = np.empty((len(_PRICE_COLUMNS), int(sizes.sum())), np.int64)
    sel = np.repeat(is_packed, sizes)
    ints[:, sel] = _packed_ints([r[17] for r in rows if r[17] is not None], sizes[is_packed])
    ints[:, ~sel] = _array_ints([r for r in rows if r[17] is None], sizes[~is_packed])
    return ints


def _packed_ints(blobs: Sequence[bytes], sizes: np.ndarray) -> np.ndarray:
    """``_minute_ints`` of packed sessions (``store.packed``)."""
    ints = np.empty((len(_PRICE_COLUMNS), int(sizes.sum())), np.int64)
    o, close = ints[0], ints[3]
    o[:] = packed.unpack(blobs, sizes, "open")
    np.add(o, packed.unpack(blobs, sizes, "body"), out=close)
    np.add(np.maximum(o, close, out=ints[1]), packed.unpack(blobs, sizes, "upper_wick"),
           out=ints[1])
    np.subtract(np.minimum(o, close, out=ints[2]), packed.unpack(blobs, sizes, "lower_wick"),
                out=ints[2])
    ints[4] = packed.unpack(blobs, sizes, "volume")
    ints[5] = packed.unpack(blobs, sizes, "vwap")
    return ints


def _trades(rows: Sequence[tuple], sizes: np.ndarray, rollup: bool) -> np.ndarray:
    """The trade counts of the sessions (NULL_TRADES: none), packed or arrays."""
    is_packed = np.fromiter((r[17] is not None for r in rows), bool, len(rows))
    if not is_packed.any():
        return _column([r[10] for r in rows], ">i8" if rollup else ">i4",
                       NULL_TRADES)[0].astype(np.int64)
    if is_packed.all():
        return packed.unpack([r[17] for r in rows], sizes, "trades")
    out = np.empty(int(sizes.sum()), np.int64)
    sel = np.repeat(is_packed, sizes)
    out[sel] = packed.unpack([r[17] for r in rows if r[17] is not None], sizes[is_packed],
                             "trades")
    out[~sel] = _column([r[10] for r in rows if r[17] is None], ">i4", NULL_TRADES)[0]
    return out


def _array_ints(rows: Sequence[tuple], sizes: np.ndarray) -> np.ndarray:
    """``_minute_ints`` of sessions stored as arrays."""
    ints = np.zeros((len(_PRICE_COLUMNS), int(sizes.sum())), np.int64)
    candle = np.fromiter((r[12] is not None for r in rows), bool, len(rows))
    sel = np.repeat(candle, sizes)
    for j in range(len(_PRICE_COLUMNS)):
        have = rows if j in (0, 4, 5) else [r for r in rows if r[12] is None]
        if have:
            v = _column([r[3 + j] for r in have], ">i8", NULL_INT8)[0]
            if len(have) == len(rows):
                ints[j] = v
            else:
                ints[j, ~sel] = v
    if candle.any():
        kept = [r for r in rows if r[12] is not None]
        body, upper, lower = (_column([r[k] for r in kept], ">i2")[0].astype(np.int64)
                              for k in (12, 13, 14))
        if candle.all():  # the rule: every session a candle, written in place
            o, close = ints[0], ints[3]
            np.add(o, body, out=close)
            np.add(np.maximum(o, close, out=ints[1]), upper, out=ints[1])
            np.subtract(np.minimum(o, close, out=ints[2]), lower, out=ints[2])
            return ints
        o = ints[0, sel]
        close = o + body
        ints[3, sel] = close
        ints[1, sel] = np.maximum(o, close) + upper
        ints[2, sel] = np.minimum(o, close) - lower
    return ints


def _prices(rows: Sequence[tuple], sizes: np.ndarray, rollup: bool,
            scales: np.ndarray) -> dict[str, np.ndarray]:
    """The price columns (_PRICE_COLUMNS) of the sessions, as stored: a
    rollup's floats; a minute session's integers / 10**scale (the volume's
    and vwap's / 10**volume_scale and 10**vwap_scale when set; as the SQL
    decodes them, NULL: NaN), or its
    raw floats (scale NULL, ``scales`` -1)."""
    if rollup:
        return {c: _column([r[3 + j] for r in rows], ">f8", np.nan)[0]
                for j, c in enumerate(_PRICE_COLUMNS)}
    is_scaled = scales >= 0
    kept = [r for r in rows if r[1] is not None]
    ints = _minute_ints(kept, sizes[is_scaled])
    p = np.repeat(10.0 ** scales[is_scaled], sizes[is_scaled])
    pv, pw = (np.repeat(10.0 ** np.fromiter((r[1] if r[j] is None else r[j] for r in kept),
                                            np.int64, len(kept)), sizes[is_scaled])
              for j in (15, 16))  # volume_scale, vwap_scale (NULL: the prices')
    out = {}
    for j, c in enumerate(_PRICE_COLUMNS):
        decoded = ints[j] / {"volume": pv, "vwap": pw}.get(c, p)  # as float64, then divided
        nulls = ints[j] == NULL_INT8
        if nulls.any():
            decoded[nulls] = np.nan
        if is_scaled.all():  # the rule: a raw session is one whose prices have no scale
            out[c] = decoded
            continue
        v = np.empty(int(sizes.sum()))
        scaled = np.repeat(is_scaled, sizes)
        v[scaled] = decoded
        v[~scaled] = _values([_elements(r[9], j * n, n, np.nan)
                              for r, n in zip(rows, sizes.tolist(), strict=True)
                              if r[1] is None], ">f8")
        out[c] = v
    return out


def decode_sessions(rows: Sequence[tuple], steps: Sequence[tuple], tz: str) -> dict:
    """The bars of stored sessions (rows of ``store.columnar.session_arrays``,
    oldest first) as numpy columns: ms, day (the session, days since
    1970-01-01), the prices (NaN: none; times the session's factors of
    ``steps``, as ``store.adjustment.factor_join`` applies them), trades (-1:
    none), validated."""
    minutes, sizes = _column([r[2] for r in rows], ">i2")
    sdays = np.fromiter((r[0].toordinal() for r in rows), np.int64, len(rows)) \
        - _UNIX_EPOCH_ORDINAL
    day = np.repeat(sdays, sizes)
    out = {"day": day, "ms": utc_ms(day, minutes.astype(np.int64), tz)}
    # a rollup has neither scale nor raw; a minute session one of them
    rollup = bool(rows) and rows[0][1] is None and rows[0][9] is None
    scales = np.fromiter((-1 if r[1] is None else r[1] for r in rows), np.int64, len(rows))
    kp, kv = _factors(sdays, steps)
    kp, kv = np.repeat(kp, sizes), np.repeat(kv, sizes)
    for c, v in _prices(rows, sizes, rollup, scales).items():
        if steps:  # without steps (mode none, or none stored): the stored values
            v = v / kv if c == "volume" else v * kp
        out[c] = v
    out["trades"] = _trades(rows, sizes, rollup)
    starts = np.cumsum(sizes) - sizes
    bad, n_bad = _column([r[11] for r in rows], ">i2")
    validated = np.ones(len(day), bool)
    validated[np.repeat(starts, n_bad) + bad.astype(np.int64)] = False
    out["validated"] = validated
    return out


def symbol_batches(conn, batches: Batches, symbol: str, timeframe: str, *, adjust: str,
                   include_invalid: bool, params: dict, chunk: int = 65536,
                   keep=None) -> Iterator[pa.RecordBatch]:
    """One symbol's bars as record batches of at most ``chunk`` rows:
    intraday ones from the stored session arrays decoded by numpy
    (``Batches.session_batches``), daily and weekly ones (a few hundred a
    year) row by row; ``keep(ms)`` filters the latter."""
    if kind_of(timeframe) == "intraday":
        steps = adjustment.steps(conn, symbol, adjust, tz=params["tz"])
        # closed as soon as the batches end (or are abandoned): the query stops
        with closing(session_arrays(conn, timeframe, params)) as rows:
            yield from batches.session_batches(
                symbol, rows, steps=steps, tz=params["tz"], include_invalid=include_invalid,
                after=params.get("after"), limit=params.get("limit"), rows_per_batch=chunk)
        return
    sql = bars_sql(timeframe, adjust=adjust, include_invalid=include_invalid)
    rows = []
    for row in conn.cursor(binary=True).stream(sql, params, size=chunk):
        if keep is None or keep(row[0]):
            rows.append(row)
        if len(rows) >= chunk:
            yield batches.batch(symbol, rows)
            rows = []
    if rows:
        yield batches.batch(symbol, rows)
