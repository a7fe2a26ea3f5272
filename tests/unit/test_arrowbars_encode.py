"""``ops.arrowbars``: the Parquet answer written row group by row group by a
second thread while the next batches come (its bytes taken out as they are
written), and the binary arrays decoded for many sessions at once."""
from __future__ import annotations

import io
import math
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from appliance.ops import arrowbars, arrowfiles


def _batches(n_batches: int, rows: int):
    sch = arrowbars.schema("1m", {"x": 1}, tz="America/New_York")
    dictionary = pa.array(["AAA", "BBB"])
    rng = np.random.default_rng(3)
    out = []
    for k in range(n_batches):
        ms = 1_704_205_800_000 + (k * rows + np.arange(rows)) * 60_000
        cols = [pa.DictionaryArray.from_arrays(pa.array(np.full(rows, k * 2 // n_batches,
                                                                np.int32)), dictionary),
                pa.array(ms).cast(arrowbars.TIME_TYPE),
                pa.array(np.full(rows, 19724, np.int32)).cast(pa.date32())]
        cols += [pa.array(rng.random(rows) * 100) for _ in range(6)]
        cols += [pa.array(rng.integers(0, 500, rows)), pa.array(np.ones(rows, bool))]
        out.append(pa.RecordBatch.from_arrays(cols, schema=sch))
    return sch, out


def test_parquet_written_by_a_second_thread_reads_back_whole_and_in_order():
    sch, batches = _batches(40, 9_973)
    pieces = list(arrowfiles.encode("parquet", sch, iter(batches), rows_per_group=20_000))
    assert len(pieces) > 5  # sent row group by row group, not at the end
    data = b"".join(pieces)
    f = pq.ParquetFile(io.BytesIO(data))
    sizes = [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)]
    assert len(sizes) >= math.ceil(40 * 9_973 / 20_000) and max(sizes) <= 20_000
    got = f.read()
    want = pa.Table.from_batches(batches, sch)
    assert got.num_rows == want.num_rows
    assert got.column("time").equals(want.column("time"))
    assert got.column("close").equals(want.column("close"))
    assert got.column("symbol").to_pylist() == want.column("symbol").to_pylist()
    assert f.schema_arrow.metadata[b"appliance"] == b'{"x": 1}'


def test_metadata_known_after_the_rows_reaches_every_reader_from_the_footer(tmp_path):
    import duckdb
    import polars as pl
    sch, batches = _batches(6, 4_000)
    seen = arrowfiles.FirstRows(iter(batches), 10_000)
    final = {}

    def finish() -> pa.Schema:  # called once every row is written
        final["schema"] = arrowbars.schema("1m", {"count": seen.rows, "more": seen.more},
                                           tz="America/New_York")
        return final["schema"]

    data = arrowfiles.parquet_file(sch, seen, finish, 3_000)
    assert (seen.rows, seen.more) == (10_000, True)
    assert seen.last == batches[2].column("time")[1_999].value
    f = pq.ParquetFile(io.BytesIO(data))
    assert f.metadata.num_row_groups >= 4  # written as read, not at the end
    assert f.schema_arrow == final["schema"]  # the fields and the metadata
    assert f.schema_arrow.metadata[b"appliance"] == b'{"count": 10000, "more": true}'
    got = f.read()
    assert got.column("time").equals(pa.Table.from_batches(batches, sch).column("time")
                                     .slice(0, 10_000))
    assert got.schema.field("symbol").type == arrowbars.SYMBOL_TYPE  # ARROW:schema is read
    path = tmp_path / "page.parquet"
    path.write_bytes(data)
    kv = dict(duckdb.sql(f"SELECT decode(key), decode(value) FROM parquet_kv_metadata('{path}')")
              .fetchall())
    assert kv["appliance"] == '{"count": 10000, "more": true}'
    assert pl.read_parquet(path).height == 10_000


def test_first_rows_keeps_all_without_a_limit_and_says_nothing_was_cut():
    sch, batches = _batches(3, 100)
    seen = arrowfiles.FirstRows(iter(batches), None)
    assert sum(b.num_rows for b in seen) == 300 and (seen.rows, seen.more) == (300, False)
    exact = arrowfiles.FirstRows(iter(batches), 300)
    assert sum(b.num_rows for b in exact) == 300 and not exact.more


def _binary(values, oid: int, code: str, nulls=()) -> bytes:
    """An int or float array in PostgreSQL's binary form."""
    width = struct.calcsize(code)
    head = struct.pack(">iiIii", 1, 1 if nulls else 0, oid, len(values), 1)
    body = b"".join(struct.pack(">i", -1) if i in nulls
                    else struct.pack(">i", width) + struct.pack(code, v)
                    for i, v in enumerate(values))
    return head + body


def test_arrays_of_many_sessions_decode_at_once_with_nulls_and_empty_ones():
    a = _binary([1, 2, 3], 20, ">q")
    b = _binary([4, 5], 20, ">q", nulls={1})
    empty = struct.pack(">iiI", 0, 0, 20)
    values, counts = arrowbars._column([a, None, empty, b, a], ">i8", fill=-9)
    assert values.tolist() == [1, 2, 3, 4, -9, 1, 2, 3]
    assert counts.tolist() == [3, 0, 0, 2, 3]
    values, counts = arrowbars._column([a, empty, a], ">i8")
    assert values.tolist() == [1, 2, 3, 1, 2, 3] and counts.tolist() == [3, 0, 3]
    f = _binary([1.5, 2.5], 701, ">d", nulls={0})
    values, _ = arrowbars._column([f], ">f8", fill=np.nan)
    assert np.isnan(values[0]) and values[1] == 2.5
