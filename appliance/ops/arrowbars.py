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

import io
import json
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from appliance.store.columnar import COLUMNS, bars_sql, copy_out, intraday_copy_sql, kind_of

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

    def copy_batches(self, symbol: str, blocks: Iterable[bytes],
                     rows_per_batch: int = 65536) -> Iterator[pa.RecordBatch]:
        """Record batches of intraday bars from the blocks of a binary COPY
        (``store.columnar.intraday_copy_sql``), at most ``rows_per_batch`` rows
        each, decoded by numpy views (a missing price is NaN in the COPY and
        null here, like the JSON's null)."""
        buf = bytearray()
        header = True
        want = _ROW.itemsize * rows_per_batch
        for block in blocks:
            buf += block
            if header and len(buf) >= _HEADER:
                del buf[:_HEADER]
                header = False
            while not header and len(buf) >= want:
                yield self._from_rows(symbol, bytes(buf[:want]))
                del buf[:want]
        if buf[-2:] == b"\xff\xff":  # the trailer
            del buf[-2:]
        if buf:
            yield self._from_rows(symbol, bytes(buf))

    def _from_rows(self, symbol: str, data: bytes) -> pa.RecordBatch:
        r = np.frombuffer(data, dtype=_ROW)
        if r.size and (r["n"] != 10).any():
            raise ValueError("unexpected COPY row layout")
        n = len(r)
        sym = pa.DictionaryArray.from_arrays(
            pa.array(np.full(n, self.index[symbol], np.int32)), self.dictionary)
        arrays = [sym, pa.array(r["ms"].astype(np.int64)).cast(TIME_TYPE),
                  pa.array(r["session"].astype(np.int32) + _PG_EPOCH_DAYS).cast(pa.date32())]
        for c in ("open", "high", "low", "close", "volume", "vwap"):
            arrays.append(pa.array(r[c].astype(np.float64), from_pandas=True))
        trades = r["trades"].astype(np.int64)
        arrays.append(pa.array(trades, mask=trades < 0))
        arrays.append(pa.array(r["validated"].astype(bool)))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


#: One row of ``store.columnar.intraday_copy_sql`` in PostgreSQL's binary
#: COPY format: the field count, then each field's length and value.
_ROW = np.dtype([("n", ">i2"), ("l0", ">i4"), ("ms", ">i8"), ("l1", ">i4"), ("session", ">i4"),
                 *[x for i, c in enumerate(("open", "high", "low", "close", "volume", "vwap"))
                   for x in ((f"l{i + 2}", ">i4"), (c, ">f8"))],
                 ("l8", ">i4"), ("trades", ">i8"), ("l9", ">i4"), ("validated", "u1")])
_HEADER = 19  # signature (11), flags (4), header extension length (4, zero)
_PG_EPOCH_DAYS = 10957  # 2000-01-01, PostgreSQL's day 0, in days since 1970-01-01


def symbol_batches(conn, batches: Batches, symbol: str, timeframe: str, *, adjust: str,
                   include_invalid: bool, params: dict, chunk: int = 65536,
                   keep=None) -> Iterator[pa.RecordBatch]:
    """One symbol's bars as record batches of at most ``chunk`` rows:
    intraday ones from a binary COPY read by numpy, daily and weekly ones (a
    few hundred a year) row by row; ``keep(ms)`` filters the latter."""
    if kind_of(timeframe) == "intraday":
        sql = intraday_copy_sql(timeframe, adjust=adjust, include_invalid=include_invalid)
        yield from batches.copy_batches(symbol, copy_out(conn, sql, params), chunk)
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
        writer = pq.ParquetWriter(sink, sch, compression="zstd")
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
