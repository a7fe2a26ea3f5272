"""Peak memory of a 50-million-row export (issue 27): the bulk endpoint and
``appliance export`` over tens of millions of stored 1m bars.

5 symbols x 2024 of regular-session 1m bars (488,700 bars) are stored
through ``intraday.write``; their ``minute_bars`` rows are then copied in SQL
under new symbol names (``M0000C0001`` ...; the arrays copied as stored,
still compressed) until the store holds at least ``--rows`` bars. Then, each
in a fresh Python process (so that its peak is its own):

  1. ``GET /api/v1/bars?universe=stored&timeframe=1m`` (Parquet) through the
     appliance's own app (Flask test client, the answer streamed, each piece
     written to a file as it arrives, never held whole): rows/s and the
     process's peak RSS (``VmHWM`` of ``/proc/self/status``): the web
     worker's, since the answer is produced in the process that serves it;
  2. ``export.export`` of the year (12 month files): rows/s and peak RSS.

Uses the PostgreSQL at $APPLIANCE_BENCH_DATABASE_URL (default the local
server on 5432); creates its own database and drops it unless ``--keep``
(``--reuse`` measures again on a kept one).

    .venv/bin/python bench/bench_export_rss.py [--rows 50000000] [--keep] [--reuse]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_api import _db_url, _drop_db, _fresh_db  # noqa: E402
from bench_export import KEY, load  # noqa: E402
from bench_intraday import YEAR_END, YEAR_START, say, symbols, write_config  # noqa: E402

from appliance.ops import export  # noqa: E402
from appliance.runtime.runtime import Runtime  # noqa: E402
from appliance.web import create_app  # noqa: E402
from tests.fakes.minute_truth import make_minute_truth  # noqa: E402

DB = "appliance_bench_export_rss"
BASE_SYMBOLS = 5


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def config(tmp: Path, url: str) -> Path:
    path = write_config(tmp / "appliance.yaml", url, "http://127.0.0.1:9", symbols(BASE_SYMBOLS))
    cfg = yaml.safe_load(path.read_text())
    cfg["server"] = {"admin_token": "bench-admin-token-0123456789", "secret_key": "bench",
                     "api_keys": [{"name": "bench", "scopes": ["read", "export"],
                                   "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
                     "export": {"max_rows": 10**10}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def generate(url: str, path: Path, rows: int) -> int:
    """The store filled to at least ``rows`` 1m bars; returns how many."""
    syms = symbols(BASE_SYMBOLS)
    truth = make_minute_truth(syms, YEAR_START, YEAR_END, seed=7, session="regular", missing=0,
                              keep_minutes=False, cache_symbols=2)
    rt = Runtime.from_path(path)
    rt.open()
    try:
        base = load(url, rt.config, truth, syms)
    finally:
        rt.close()
    copies = -(-rows // base) - 1
    with psycopg.connect(url, autocommit=True) as conn:
        # every column but the symbol, as the migrations left them
        columns = ", ".join(r[0] for r in conn.execute(
            """SELECT quote_ident(attname) FROM pg_attribute
               WHERE attrelid = 'minute_bars'::regclass AND attnum > 0
                 AND NOT attisdropped AND attname <> 'symbol' ORDER BY attnum"""))
        for k in range(1, copies + 1):
            conn.execute(f"""INSERT INTO minute_bars (symbol, {columns})
                             SELECT symbol || 'C' || lpad(%s::text, 4, '0'), {columns}
                             FROM minute_bars WHERE symbol = ANY(%s)""", (k, syms))
            if k % 20 == 0:
                say(f"  {k}/{copies} copies")
        conn.execute("VACUUM ANALYZE minute_bars")
        return int(conn.execute("SELECT sum(cardinality(minutes)) FROM minute_bars")
                   .fetchone()[0])


def child_bulk(path: Path, tmp: Path) -> dict:
    rt = Runtime.from_path(path)
    rt.open()
    client = create_app(runtime=rt).test_client()
    start_mb = peak_rss_mb()
    out = tmp / "bulk.parquet"
    t = time.perf_counter()
    r = client.get(f"/api/v1/bars?universe=stored&timeframe=1m&start={YEAR_START}"
                   f"&end={YEAR_END}&format=parquet",
                   headers={"Authorization": f"Bearer {KEY}"}, buffered=False)
    assert r.status_code == 200, r.status_code
    n_bytes = 0
    with out.open("wb") as f:
        for piece in r.response:
            f.write(piece)
            n_bytes += len(piece)
    r.close()
    el = time.perf_counter() - t
    peak = peak_rss_mb()
    rows = pq.read_metadata(out).num_rows
    out.unlink()
    rt.close()
    return {"rows": rows, "bytes": n_bytes, "seconds": round(el, 1),
            "rows_per_s": round(rows / el), "peak_rss_mb_before": round(start_mb),
            "peak_rss_mb": round(peak)}


def child_export(path: Path, tmp: Path) -> dict:
    rt = Runtime.from_path(path)
    rt.open()
    start_mb = peak_rss_mb()
    t = time.perf_counter()
    res = export.export(rt.read_conn, "1m", YEAR_START, YEAR_END, tmp / "dataset",
                        tz="America/New_York")
    el = time.perf_counter() - t
    peak = peak_rss_mb()
    rt.close()
    shutil.rmtree(tmp / "dataset")
    return {"rows": res["rows"], "files": len(res["written"]), "seconds": round(el, 1),
            "rows_per_s": round(res["rows"] / el), "peak_rss_mb_before": round(start_mb),
            "peak_rss_mb": round(peak)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000_000)
    ap.add_argument("--keep", action="store_true", help="keep the database")
    ap.add_argument("--reuse", action="store_true", help="measure on a kept database")
    ap.add_argument("--child", choices=("bulk", "export"), help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-rss-"))
    if a.child:
        fn = child_bulk if a.child == "bulk" else child_export
        print(json.dumps(fn(Path(a.config), tmp)))
        return 0
    url = _db_url(DB) if a.reuse else _fresh_db(DB)
    try:
        path = config(tmp, url)
        t = time.perf_counter()
        if a.reuse:
            with psycopg.connect(url) as conn:
                n = int(conn.execute("SELECT sum(cardinality(minutes)) FROM minute_bars")
                        .fetchone()[0])
        else:
            n = generate(url, path, a.rows)
        say(f"{n:,} 1m bars stored ({time.perf_counter() - t:.0f} s)")
        out = {"bars": n}
        for what in ("bulk", "export"):
            res = subprocess.run([sys.executable, __file__, "--child", what, "--config",
                                  str(path)], check=True, capture_output=True, text=True)
            out[what] = json.loads(res.stdout.strip().splitlines()[-1])
            say(f"{what}: {out[what]}")
        print(json.dumps(out, indent=1))
    finally:
        if not a.keep:
            _drop_db(DB)
    return 0


if __name__ == "__main__":
    sys.exit(main())
