"""Data out at research speed (issue 27): the Arrow/Parquet answers, the bulk
endpoint and ``appliance export``, side by side in one run.

N symbols x 1 year (2024) of regular-session one-minute bars are stored
through ``intraday.write`` (the minute truth of the fakes, no vendor), then:

  1. one symbol-year of 1m bars through ``/api/v1/historical`` (Flask test
     client, the appliance's own app, every page of 50,000 bars, the client's
     read included: ``json.loads``, ``pyarrow.parquet.read_table``,
     ``pyarrow.ipc.open_stream``): rows/s and p50 per page of JSON, Parquet
     and Arrow, and the ratios to JSON; alternating rounds, best of each;
  2. the bulk endpoint (``/api/v1/bars``, every symbol, Parquet) end to end
     with the client's ``pyarrow`` read, against two limits measured in the
     same run: PostgreSQL's ``COPY (SELECT ...) TO STDOUT (FORMAT binary)``
     of the same rows (drained by psycopg), one row per bar as the JSON
     answer's SQL unpacks them and one row per session as the answers read
     them (``store.columnar.arrays_sql``), and ``pyarrow`` reading the same
     rows from a local Parquet file; best of the rounds;
  3. ``appliance export`` (``export.export``) of the year (best of the
     rounds, each into an empty directory): rows/s, and bytes
     on disk per minute bar next to the store's (``minute_bars`` table,
     TOAST and index).

Uses the PostgreSQL at $APPLIANCE_BENCH_DATABASE_URL (default the local
server on 5432) and Redis at $APPLIANCE_BENCH_REDIS_URL; creates and drops
its own database.

    .venv/bin/python bench/bench_export.py [--symbols 10] [--rounds 3]
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_api import _drop_db, _fresh_db  # noqa: E402
from bench_intraday import YEAR_END, YEAR_START, month_parts, say, symbols, write_config  # noqa: E402

from appliance.ingest import minutes as intraday  # noqa: E402
from appliance.ops import export  # noqa: E402
from appliance.store import columnar as cstore  # noqa: E402
from tests.fakes.minute_truth import make_minute_truth  # noqa: E402

DB = "appliance_bench_export"
KEY = "bench-export-key-0123456789"


def load(url: str, cfg, truth, syms: list[str]) -> int:
    n = 0
    with psycopg.connect(url) as conn:
        for s in syms:
            for p in month_parts(truth.minutes[s].to_candles("polygon")):
                intraday.write(conn, cfg, p)
                conn.commit()
                n += len(p)
    return n


def _pages(client, url: str, fmt: str) -> tuple[int, list[float]]:
    rows, lat = 0, []
    while url:
        t = time.perf_counter()
        r = client.get(url + ("" if fmt == "json" else f"&format={fmt}"))
        data = r.get_data()
        if fmt == "json":
            d = json.loads(data)
            n, url = len(d["data"]), d["next"]
        else:
            tbl = (pq.read_table(io.BytesIO(data)) if fmt == "parquet"
                   else ipc.open_stream(data).read_all())
            n = tbl.num_rows
            link = r.headers.get("Link")
            url = link[1:link.index(">")].replace(f"&format={fmt}", "") if link else None
        lat.append(time.perf_counter() - t)
        rows += n
    return rows, lat


def bench_symbol_year(client, sym: str, rounds: int) -> dict:
    url = f"/api/v1/historical/{sym}?timeframe=1m&start=2024-01-01&end=2024-12-31"
    best = {}
    for _ in range(rounds):
        for fmt in ("json", "parquet", "arrow"):
            t = time.perf_counter()
            rows, lat = _pages(client, url, fmt)
            el = time.perf_counter() - t
            if fmt not in best or el < best[fmt]["seconds"]:
                best[fmt] = {"rows": rows, "seconds": round(el, 3),
                             "rows_per_s": round(rows / el), "pages": len(lat),
                             "p50_page_ms": round(statistics.median(lat) * 1000, 1)}
    for fmt in ("parquet", "arrow"):
        best[fmt]["ratio_to_json"] = round(best[fmt]["rows_per_s"] / best["json"]["rows_per_s"],
                                           1)
    return best


def bench_bulk(client, url: str, syms: list[str], tmp: Path) -> dict:
    t = time.perf_counter()
    r = client.get("/api/v1/bars?universe=stored&timeframe=1m&start=2024-01-01&end=2024-12-31"
                   "&format=parquet", headers={"Authorization": f"Bearer {KEY}"})
    data = r.get_data()
    tbl = pq.read_table(io.BytesIO(data))
    bulk_s = time.perf_counter() - t
    rows = tbl.num_rows
    f = tmp / "bulk.parquet"
    f.write_bytes(data)
    t = time.perf_counter()
    assert pq.read_table(f).num_rows == rows
    file_s = time.perf_counter() - t
    sql = cstore.intraday_copy_sql("1m", adjust="none", include_invalid=False)
    t = time.perf_counter()
    n_bytes = 0
    with psycopg.connect(url, autocommit=True) as conn:
        for s in syms:
            params = {"symbol": s, "start": YEAR_START, "end": YEAR_END, "after": None,
                      "tz": "America/New_York",
                      "limit": None}
            for block in cstore.copy_out(conn, sql, params):
                n_bytes += len(block)
    copy_s = time.perf_counter() - t
    arrays = f"COPY ({cstore.arrays_sql('1m')}) TO STDOUT (FORMAT binary)"
    t = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for s in syms:
            params = {"symbol": s, "start": YEAR_START, "end": YEAR_END, "after": None,
                      "tz": "America/New_York", "past": None, "sessions": None}
            for block in cstore.copy_out(conn, arrays, params):
                n_bytes += len(block)
    arrays_s = time.perf_counter() - t
    return {"rows": rows, "answer_bytes": len(data),
            "bulk_rows_per_s": round(rows / bulk_s),
            "copy_binary_rows_per_s": round(rows / copy_s),
            "copy_session_arrays_rows_per_s": round(rows / arrays_s),
            "pyarrow_file_rows_per_s": round(rows / file_s),
            "bulk_to_copy": round(copy_s / bulk_s, 2),
            "bulk_to_copy_arrays": round(arrays_s / bulk_s, 2), "bulk_to_file": round(file_s / bulk_s, 3)}


def bench_export(rt, url: str, tmp: Path, n_bars: int) -> dict:
    out = tmp / "dataset"
    t = time.perf_counter()
    res = export.export(rt.read_conn, "1m", YEAR_START, YEAR_END, out, tz="America/New_York")
    el = time.perf_counter() - t
    t = time.perf_counter()
    again = export.export(rt.read_conn, "1m", YEAR_START, YEAR_END, out, tz="America/New_York")
    again_s = time.perf_counter() - t
    on_disk = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    with psycopg.connect(url) as conn:
        store_bytes = conn.execute(
            "SELECT sum(pg_total_relation_size(relid))::bigint "
            "FROM pg_partition_tree('minute_bars')").fetchone()[0]
    return {"rows": res["rows"], "files": len(res["written"]), "seconds": round(el, 2),
            "rows_per_s": round(res["rows"] / el), "second_run_s": round(again_s, 3),
            "second_run_written": len(again["written"]),
            "dataset_bytes_per_bar": round(on_disk / n_bars, 2),
            "store_bytes_per_bar": round(store_bytes / n_bars, 2)}


def stored_year(db: str, n_symbols: int, tmp: Path, server: dict | None = None):
    """(url, runtime (open), symbols, bars): a fresh database ``db`` holding
    the regular-session 1m bars of ``n_symbols`` symbols over the bench's
    year, stored through ``intraday.write``; the config in ``tmp`` (with
    ``server`` as its server section when given). The caller drops ``db``."""
    import yaml

    from appliance.runtime.runtime import Runtime
    syms = symbols(n_symbols)
    truth = make_minute_truth(syms, YEAR_START, YEAR_END, seed=7, session="regular", missing=0,
                              keep_minutes=False, cache_symbols=2)
    url = _fresh_db(db)
    path = write_config(tmp / "appliance.yaml", url, "http://127.0.0.1:9", syms)
    if server is not None:
        cfg = yaml.safe_load(path.read_text())
        cfg["server"] = server
        path.write_text(yaml.safe_dump(cfg))
    rt = Runtime.from_path(path)
    rt.open()
    t = time.perf_counter()
    n = load(url, rt.config, truth, syms)
    say(f"stored {n:,} 1m bars of {len(syms)} symbols ({time.perf_counter() - t:.0f} s)")
    return url, rt, syms, n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    import hashlib

    from appliance.web import create_app
    server = {"admin_token": "bench-admin-token-0123456789", "secret_key": "bench",
              "api_keys": [{"name": "bench", "scopes": ["read", "export"],
                            "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
              "export": {"max_rows": 10**9}}
    try:
        url, rt, syms, n = stored_year(DB, a.symbols, tmp, server)
        client = create_app(runtime=rt).test_client()
        out = {"symbols": len(syms), "bars": n}
        out["symbol_year"] = bench_symbol_year(client, syms[0], a.rounds)
        say(f"one symbol-year of 1m bars: {out['symbol_year']}")
        # best of the rounds (the limits measured in the same round)
        rounds = [bench_bulk(client, url, syms, tmp) for _ in range(a.rounds)]
        out["bulk"] = max(rounds, key=lambda r: r["bulk_rows_per_s"])
        say(f"bulk: {out['bulk']}")
        exports = []
        for _ in range(a.rounds):
            exports.append(bench_export(rt, url, tmp, n))
            shutil.rmtree(tmp / "dataset")
        out["export"] = max(exports, key=lambda r: r["rows_per_s"])
        say(f"export: {out['export']}")
        print(json.dumps(out, indent=1))
        rt.close()
    finally:
        _drop_db(DB)
    return 0


if __name__ == "__main__":
    sys.exit(main())
