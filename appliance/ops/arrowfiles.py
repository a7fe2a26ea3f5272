"""Record batches of bars (``arrowbars``) written out as Parquet, an Arrow
IPC stream or CSV, batch by batch: the API's answers, the bulk endpoint and
the exported dataset. A Parquet row group is encoded by a second thread
while the next batches are read; metadata known only after the rows (a
page's count and next link) goes into the file's footer."""
from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

#: Columns with few distinct values per row group, the only ones worth a
#: Parquet dictionary (a price or time column has nearly as many values as
#: rows: its dictionary would be built, found too big and dropped, per page).
_DICTIONARY = ("symbol", "session", "validated", "gap_detected", "gap_kind", "source")


#: The Parquet compression of the API's answers (a page, the bulk answer)
#: unless the request names one (``compression=``): LZ4 (raw) writes a page
#: of minute bars in about a third of zstd's time and reads faster, at about
#: 1.5 times its bytes, which an answer on a local network can spare; zstd
#: is the choice for a slow link.
ANSWER_COMPRESSION = "lz4"
#: The compressions an answer may ask for.
COMPRESSIONS = ("lz4", "zstd", "snappy", "none")
#: The Parquet compression of the exported dataset, kept on disk for years:
#: zstd, the smallest files every reader knows.
DATASET_COMPRESSION = "zstd"


def parquet_writer(where, sch: pa.Schema, compression: str) -> pq.ParquetWriter:
    """A Parquet writer of ``sch`` to a path or file, as every Parquet
    answer (``ANSWER_COMPRESSION``) and the exported dataset
    (``DATASET_COMPRESSION``) write. Bar times, rising by about a minute, are
    delta-encoded (``DELTA_BINARY_PACKED``, a standard encoding every Parquet
    reader knows): a tenth fewer bytes per bar, faster to write and to read."""
    return pq.ParquetWriter(where, sch, compression=compression,
                            use_dictionary=[c for c in _DICTIONARY if c in sch.names],
                            column_encoding={"time": "DELTA_BINARY_PACKED"})


class RowGroups:
    """Record batches written to a Parquet ``writer`` in row groups of
    ``rows`` rows, each encoded and compressed by a second thread while the
    caller reads and decodes the next one (pyarrow works without the GIL);
    one row group in hand and one being written, whatever the length."""

    def __init__(self, writer: pq.ParquetWriter, rows: int):
        self.writer, self.rows = writer, rows
        self.pending: list[pa.RecordBatch] = []
        self.n = 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="parquet-write")
        self.job: Future | None = None

    def add(self, batch: pa.RecordBatch) -> bool:
        """Add ``batch``; True when a row group was started and the one
        before it is written (its bytes are out)."""
        self.pending.append(batch)
        self.n += batch.num_rows
        if self.n < self.rows:
            return False
        return self._write()

    def _write(self) -> bool:
        table = pa.Table.from_batches(self.pending, self.writer.schema)
        self.pending, self.n = [], 0
        waited = self.wait()
        self.job = self.pool.submit(self.writer.write_table, table, row_group_size=self.rows)
        return waited

    def wait(self) -> bool:
        """Wait for the row group being written; whether there was one."""
        job, self.job = self.job, None
        if job is None:
            return False
        job.result()
        return True

    def flush(self) -> None:
        """Write what is left and wait for it."""
        if self.pending:
            self._write()
        self.wait()

    def __enter__(self) -> RowGroups:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)  # a row group being written ends before the writer


def footer_schema(writer: pq.ParquetWriter, sch: pa.Schema) -> None:
    """Give the Parquet file ``writer`` is writing the schema ``sch`` (the
    fields it was opened with, other metadata), up to its close. Readers take
    the Arrow schema from the footer's ``ARROW:schema`` entry (the schema's
    IPC message in base64, byte for byte what pyarrow writes on open) and each
    metadata key from a footer entry of its own; the footer is written when
    the file closes, so metadata known only after the rows (a page's count
    and next link) costs no second pass over them."""
    meta = {k.decode(): v.decode() for k, v in (sch.metadata or {}).items()}
    meta["ARROW:schema"] = base64.b64encode(sch.serialize().to_pybytes()).decode()
    writer.add_key_value_metadata(meta)


def parquet_file(sch: pa.Schema, batches: Iterable[pa.RecordBatch], finish,
                 rows_per_group: int, compression: str = ANSWER_COMPRESSION) -> bytes:
    """``batches`` as one Parquet file of ``sch``'s fields, in memory: each
    row group of ``rows_per_group`` rows encoded by a second thread while the
    next batches are read (``RowGroups``), and ``finish()`` (called once every
    row is written) the schema in its footer (``footer_schema``)."""
    return b"".join(encode("parquet", sch, batches, rows_per_group, compression, finish))


class FirstRows:
    """The first ``limit`` rows of ``batches`` (all of them when None) as
    they are read, and what the cut left: ``rows`` kept, ``more`` (whether a
    row was cut), ``last`` (the last kept bar's time, epoch ms). The batches
    are closed (their query stopped) once a row is cut."""

    def __init__(self, batches: Iterator[pa.RecordBatch], limit: int | None):
        self.batches: Iterator[pa.RecordBatch] = batches
        self.limit = limit
        self.rows, self.more, self.last = 0, False, None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            for b in self.batches:
                if self.limit is not None and self.rows + b.num_rows > self.limit:
                    b, self.more = b.slice(0, self.limit - self.rows), True
                if b.num_rows:
                    self.rows += b.num_rows
                    self.last = b.column("time")[-1].value
                    yield b
                if self.more:
                    return
        finally:
            close = getattr(self.batches, "close", None)
            if close is not None:
                close()


class _Sink(io.RawIOBase):
    """A write-only file whose bytes are taken out as they are written (by
    another thread than the one writing, see ``RowGroups``)."""

    def __init__(self):
        super().__init__()
        self.parts: list[bytes] = []
        self.pos = 0
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        data = bytes(b)
        with self.lock:
            self.parts.append(data)
            self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos

    def take(self) -> bytes:
        """The bytes written since the last take, in order."""
        with self.lock:
            parts, self.parts = self.parts, []
        return b"".join(parts)


def encode(fmt: str, sch: pa.Schema, batches: Iterable[pa.RecordBatch],
           rows_per_group: int = 65536, compression: str = ANSWER_COMPRESSION,
           finish=None) -> Iterator[bytes]:
    """The bytes of ``batches`` in ``fmt`` (parquet, arrow or csv), yielded
    as they are written: a Parquet row group (of up to ``rows_per_group``
    rows, ``compression``; ``finish()``, when given, the schema put in the
    footer once every row is written) or an Arrow / CSV batch at a time,
    never the whole answer."""
    sink = _Sink()
    if fmt == "parquet":
        with parquet_writer(sink, sch, compression) as writer, \
                RowGroups(writer, rows_per_group) as groups:
            for b in batches:
                if groups.add(b):
                    yield sink.take()  # the previous row group, written meanwhile
            groups.flush()
            if finish is not None:
                footer_schema(writer, finish())
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
