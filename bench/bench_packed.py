"""A stored form for minute sessions measured on the side: each column of a
session as one ``bytea`` of packed big-endian numbers instead of an array.
(Measured before migration 0017 made it the store's form, minus the minutes,
which stay an array: ``appliance/store/packed.py``. Run on a store written
since, it compares the packed copy with the arrays of sessions written as
0013 wrote them; see bench/README.md, issue 27.)

Why: the export and the bulk answer send each session's arrays through
PostgreSQL's ``array_send``, one call of the element's send function per
element (about 45 ns each, eight a bar), and that is most of the server's
share of an export (bench/README.md, issue 27, "Sixth look"). A ``bytea`` is
sent as it is stored. This bench builds such a copy of the same sessions
(nothing in the appliance reads it) and measures, alternately, best of
``--rounds``:

  1. the server sending the sessions: the arrays streamed in binary as the
     export reads them, against the packed columns likewise;
  2. the client turning the received columns into numpy (``arrowbars._column``
     for the arrays; ``numpy.frombuffer`` for the packed bytes);
  3. SQL decoding every bar, as the JSON answers do: ``unnest`` of the arrays
     against ``get_byte`` arithmetic on the packed bytes (detoasted once a row);
  4. bytes stored per bar (``pg_column_size``), the packed copy with pglz.

Every value decoded from the packed copy is checked against the arrays.

    .venv/bin/python bench/bench_packed.py [--symbols 5] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_api import _drop_db  # noqa: E402
from bench_export import stored_year  # noqa: E402

from appliance.ops import arrowbars  # noqa: E402
from appliance.store import columnar  # noqa: E402
from tests.minute_store import store_as_before_0017  # noqa: E402

DB = "appliance_bench_packed"
#: (column, PostgreSQL send function, numpy big-endian type) of a candle session
COLUMNS = (("minutes", "int2send", ">i2"), ("open", "int8send", ">i8"),
           ("body", "int2send", ">i2"), ("upper_wick", "int2send", ">i2"),
           ("lower_wick", "int2send", ">i2"), ("volume", "int8send", ">i8"),
           ("vwap", "int8send", ">i8"), ("trades", "int4send", ">i4"))
_NULL = {">i2": -(2 ** 15), ">i4": -(2 ** 31), ">i8": -(2 ** 63)}
_SQL = {">i2": "int2", ">i4": "int4", ">i8": "int8"}


def build(conn) -> None:
    """The packed copy: a NULL element as the type's smallest number."""
    store_as_before_0017(conn)  # the sessions' candles as arrays, as before 0017
    conn.execute("VACUUM ANALYZE minute_bars")
    cols = ", ".join(
        f"(SELECT string_agg({fn}(coalesce(x, ({_NULL[t]})::{_SQL[t]})), ''::bytea ORDER BY i)"
        f" FROM unnest(b.{c}) WITH ORDINALITY u(x, i)) AS {c}" for c, fn, t in COLUMNS)
    conn.execute("SET default_toast_compression = pglz")
    conn.execute(f"""CREATE TABLE packed AS SELECT b.symbol, b.session, {cols}
                     FROM minute_bars b WHERE b.body IS NOT NULL""")
    conn.execute("ALTER TABLE packed ADD PRIMARY KEY (symbol, session)")
    conn.execute("VACUUM ANALYZE packed")


def _stream(conn, sql: str) -> tuple[float, int, list]:
    """(seconds, bytes received, rows) of ``sql`` streamed in binary, each
    array as its bytes (as ``store.columnar.session_arrays`` reads them)."""
    t, n, rows = time.perf_counter(), 0, []
    with conn.cursor(binary=True) as cur:
        for oid in columnar._ARRAY_OIDS:
            cur.adapters.register_loader(oid, columnar._ArrayBytes)
        for row in cur.stream(sql, size=32):
            rows.append(row)
            n += sum(len(v) for v in row[2:] if v is not None)
    return time.perf_counter() - t, n, rows


def _sql_get(kind: str, col: str) -> str:
    """A packed element of ``d.col`` at index ``i`` in SQL (``get_byte``)."""
    width = {">i2": 2, ">i4": 4, ">i8": 8}[kind]
    parts = [f"(get_byte(d.{col}, {width} * i + {k})::int8 << {8 * (width - 1 - k)})"
             for k in range(width)]
    unsigned = " | ".join(parts)
    if width == 8:  # the top byte's shift gives the sign already (int8 wraps)
        return f"({unsigned})"
    return f"(({unsigned}) - CASE WHEN get_byte(d.{col}, {width} * i) >= 128 " \
           f"THEN {2 ** (8 * width)} ELSE 0 END)"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-packed-"))
    try:
        url, rt, _syms, n = stored_year(DB, a.symbols, tmp)
        rt.close()
        with psycopg.connect(url, autocommit=True) as conn:
            build(conn)
            out = measure(conn, a.rounds, n)
        print(json.dumps(out, indent=1))
    finally:
        _drop_db(DB)
    return 0


def measure(conn, rounds: int, n: int) -> dict:
    names = ", ".join(f"b.{c}" for c, _, _ in COLUMNS)
    order = "ORDER BY b.symbol, b.session"
    arrays_sql = f"SELECT b.symbol, b.session, {names} FROM minute_bars b {order}"
    packed_sql = f"SELECT b.symbol, b.session, {names} FROM packed b {order}"
    sql_arrays = """SELECT count(*), sum(u.m), sum(u.o + u.bd + u.uw + u.lw), sum(u.v),
                            sum(u.w), sum(u.t)
                     FROM minute_bars b CROSS JOIN LATERAL unnest(b.minutes, b.open, b.body,
                          b.upper_wick, b.lower_wick, b.volume, b.vwap, b.trades)
                          u(m, o, bd, uw, lw, v, w, t)"""
    once = ", ".join(f"b.{c} || ''::bytea AS {c}" for c, _, _ in COLUMNS)  # detoast once
    g = {c: _sql_get(t, c) for c, _, t in COLUMNS}
    sql_packed = f"""SELECT count(*), sum({g['minutes']}),
                            sum({g['open']} + {g['body']} + {g['upper_wick']} + {g['lower_wick']}),
                            sum({g['volume']}), sum({g['vwap']}), sum({g['trades']})
                     FROM packed b CROSS JOIN LATERAL (SELECT {once} OFFSET 0) d
                          CROSS JOIN LATERAL generate_series(0, length(d.minutes) / 2 - 1) i"""
    best: dict[str, float] = {}
    sizes = {}
    for _ in range(rounds):
        for name, sql in (("send_arrays", arrays_sql), ("send_packed", packed_sql)):
            el, nbytes, rows = _stream(conn, sql)
            best[name] = min(best.get(name, 9e9), el)
            sizes[name] = nbytes
            t = time.perf_counter()
            cols = [decode(rows, j, t_, name == "send_packed")
                    for j, (_, _, t_) in enumerate(COLUMNS)]
            key = name.replace("send", "decode")
            best[key] = min(best.get(key, 9e9), time.perf_counter() - t)
            if name == "send_arrays":
                want = cols
            else:
                for c, w, (cname, _, _) in zip(cols, want, COLUMNS, strict=True):
                    assert np.array_equal(c, w), f"{cname}: the packed copy differs"
        for name, sql in (("sql_arrays", sql_arrays), ("sql_packed", sql_packed)):
            t = time.perf_counter()
            res = conn.execute(sql).fetchone()
            best[name] = min(best.get(name, 9e9), time.perf_counter() - t)
            sizes[name] = res
    assert sizes["sql_arrays"] == sizes["sql_packed"], sizes
    stored = {}
    for table in ("minute_bars", "packed"):
        cols = " + ".join(f"pg_column_size({c})" for c, _, _ in COLUMNS)
        stored[table] = conn.execute(f"SELECT sum({cols})::float8 FROM {table}").fetchone()[0] / n
    ms = {k: round(v * 1000, 1) for k, v in best.items()}
    return {"bars": n, "ms": ms,
            "server_send_ratio": round(best["send_arrays"] / best["send_packed"], 2),
            "client_decode_ratio": round(best["decode_arrays"] / best["decode_packed"], 2),
            "sql_decode_ratio": round(best["sql_packed"] / best["sql_arrays"], 2),
            "wire_bytes_per_bar": {k: round(sizes[k] / n, 1) for k in ("send_arrays", "send_packed")},
            "stored_bytes_per_bar": {k: round(v, 2) for k, v in stored.items()}}


def decode(rows: list, j: int, kind: str, packed: bool) -> np.ndarray:
    """Column ``j`` of every row as native numbers (a NULL element: the
    type's smallest number)."""
    if packed:
        return np.frombuffer(b"".join(r[2 + j] for r in rows), kind).astype(kind[1:])
    return arrowbars._column([r[2 + j] for r in rows], kind, _NULL[kind])[0]


if __name__ == "__main__":
    sys.exit(main())
