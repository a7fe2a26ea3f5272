"""Bars as Arrow record batches, and the Parquet / Arrow IPC stream / CSV
writers that send them out batch by batch (the API's answers, the bulk
endpoint, the exported dataset).

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
import io
import json
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from appliance.store import adjustment
from appliance.store.columnar import COLUMNS, NULL_INT8, bars_sql, kind_of, session_arrays

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
            n += _array(row[2])[0]
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
        order = np.nonzero(keep)[0]
        if len(order) > 1 and not (np.diff(bars["ms"][order]) > 0).all():
            order = order[np.argsort(bars["ms"][order], kind="stable")]
        n = len(order)
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


def _array(data: bytes | None) -> tuple[int, int, int]:
    """(elements, offset of the first element's length, element width) of an
    array in PostgreSQL's binary form: ndim, has-null flag, element type,
    (size, lower bound) per dimension, then per element its length (4 bytes)
    and value. Every array read here has no NULL element
    (``store.columnar.session_arrays``), so every element has the same width."""
    if data is None:
        return 0, 0, 0
    ndim, has_null = struct.unpack_from(">ii", data)
    if ndim == 0:
        return 0, 12, 0
    if has_null:
        raise ValueError("unexpected NULL element in a stored bar array")
    dims = struct.unpack_from(f">{2 * ndim}i", data, 12)
    n = 1
    for size in dims[0::2]:
        n *= size
    off = 12 + 8 * ndim
    return n, off, (len(data) - off) // n - 4


def _elements(data: bytes | None, first: int = 0, count: int | None = None) -> bytes:
    """The element run (lengths and values) of ``count`` elements (all: None)
    from the ``first`` of a binary array."""
    n, off, width = _array(data)
    if n == 0:
        return b""
    count = n - first if count is None else count
    start = off + first * (4 + width)
    return data[start:start + count * (4 + width)]  # type: ignore[index]


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
    zone = ZoneInfo(tz)
    local = (days.astype(np.int64) * 1440 + minutes) * 60_000
    uniq, inverse = np.unique(days, return_inverse=True)
    per_day = np.empty(len(uniq), np.int64)
    changes = []
    for i, d in enumerate(uniq.tolist()):
        day = dt.datetime.fromordinal(d + _UNIX_EPOCH_ORDINAL)
        per_day[i] = _offset_ms(day, zone)
        if per_day[i] != _offset_ms(day.replace(hour=23, minute=59), zone):
            changes.append((i, day))
    offset = per_day[inverse.reshape(-1)]
    for i, day in changes:  # a DST change on this day: minute by minute
        sel = np.nonzero(inverse.reshape(-1) == i)[0]
        offset[sel] = [_offset_ms(day + dt.timedelta(minutes=m), zone)
                       for m in minutes[sel].tolist()]
    return local - offset


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


def _prices(rows: Sequence[tuple], sizes: np.ndarray, j: int, rollup: bool) -> np.ndarray:
    """Price column ``j`` (of _PRICE_COLUMNS) of the sessions, as stored: a
    rollup's floats; a minute session's integers / 10**scale (as the SQL
    decodes them, NULL_INT8: NaN), or its raw floats (scale NULL)."""
    if rollup:
        return _values([_elements(r[3 + j]) for r in rows], ">f8")
    is_scaled = np.array([r[1] is not None for r in rows], bool)
    scaled = np.repeat(is_scaled, sizes)
    v = np.empty(int(sizes.sum()))
    ints = _values([_elements(r[3 + j]) for r in rows if r[1] is not None], ">i8")
    p = np.repeat(np.array([10.0 ** r[1] for r in rows if r[1] is not None]), sizes[is_scaled])
    v[scaled] = np.where(ints == NULL_INT8, np.nan, ints.astype(np.float64) / p)
    v[~scaled] = _values([_elements(r[9], j * n, n)
                          for r, n in zip(rows, sizes.tolist(), strict=True) if r[1] is None],
                         ">f8")
    return v


def decode_sessions(rows: Sequence[tuple], steps: Sequence[tuple], tz: str) -> dict:
    """The bars of stored sessions (rows of ``store.columnar.session_arrays``,
    oldest first) as numpy columns: ms, day (the session, days since
    1970-01-01), the prices (NaN: none; times the session's factors of
    ``steps``, as ``store.adjustment.factor_join`` applies them), trades (-1:
    none), validated."""
    sizes = np.array([_array(r[2])[0] for r in rows], np.int64)
    sdays = np.array([r[0].toordinal() - _UNIX_EPOCH_ORDINAL for r in rows], np.int64)
    day = np.repeat(sdays, sizes)
    minutes = _values([_elements(r[2]) for r in rows], ">i2").astype(np.int64)
    out = {"day": day, "ms": utc_ms(day, minutes, tz)}
    # a rollup has neither scale nor raw; a minute session one of them
    rollup = bool(rows) and rows[0][1] is None and rows[0][9] is None
    kp, kv = _factors(sdays, steps)
    kp, kv = np.repeat(kp, sizes), np.repeat(kv, sizes)
    for j, c in enumerate(_PRICE_COLUMNS):
        v = _prices(rows, sizes, j, rollup)
        if steps:  # without steps (mode none, or none stored): the stored values
            v = v / kv if c == "volume" else v * kp
        out[c] = v
    out["trades"] = _values([_elements(r[10]) for r in rows],
                            ">i8" if rollup else ">i4").astype(np.int64)
    starts = np.cumsum(sizes) - sizes
    bad = _values([_elements(r[11]) for r in rows], ">i2").astype(np.int64)
    validated = np.ones(len(day), bool)
    validated[np.repeat(starts, [_array(r[11])[0] for r in rows]) + bad] = False
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


#: Columns with few distinct values per row group, the only ones worth a
#: Parquet dictionary (a price or time column has nearly as many values as
#: rows: its dictionary would be built, found too big and dropped, per page).
_DICTIONARY = ("symbol", "session", "validated", "gap_detected", "gap_kind", "source")


def parquet_writer(where, sch: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer of ``sch`` (zstd) to a path or file, as every Parquet
    answer and the exported dataset write."""
    return pq.ParquetWriter(where, sch, compression="zstd",
                            use_dictionary=[c for c in _DICTIONARY if c in sch.names])


class _Sink(io.RawIOBase):
    """A write-only file whose bytes are taken out as they are written."""

    def __init__(self):
        super().__init__()
        self.parts: list[bytes] = []
        self.pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        data = bytes(b)
        self.parts.append(data)
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def encode(fmt: str, sch: pa.Schema, batches: Iterable[pa.RecordBatch],
           rows_per_group: int = 65536) -> Iterator[bytes]:
    """The bytes of ``batches`` in ``fmt`` (parquet, arrow or csv), yielded
    as they are written: a Parquet row group (of up to ``rows_per_group``
    rows) or an Arrow / CSV batch at a time, never the whole answer."""
    sink = _Sink()
    if fmt == "parquet":
        writer = parquet_writer(sink, sch)
        pending: list[pa.RecordBatch] = []
        n = 0
        for b in batches:
            pending.append(b)
            n += b.num_rows
            if n >= rows_per_group:
                writer.write_table(pa.Table.from_batches(pending, sch),
                                   row_group_size=rows_per_group)
                pending, n = [], 0
                yield sink.take()
        if pending:
            writer.write_table(pa.Table.from_batches(pending, sch),
                               row_group_size=rows_per_group)
        writer.close()
        yield sink.take()
        return
    if fmt == "arrow":
        writer = ipc.new_stream(sink, sch)
        for b in batches:
            writer.write_batch(b)
            yield sink.take()
        writer.close()
        yield sink.take()
        return
    plain = pa.schema([f.with_type(pa.string()) if f.name == "symbol" else f for f in sch])
    writer = pacsv.CSVWriter(sink, plain)
    for b in batches:
        writer.write_batch(b.cast(plain))
        yield sink.take()
    writer.close()
    yield sink.take()
