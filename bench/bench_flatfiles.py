"""Flat-file benchmark (issue 26): one whole-market day of minute aggregates
at the real scale, and whole-market days of daily aggregates, ingested from a
real S3 API (moto's server on loopback) into plain PostgreSQL.

Generated in the vendor's layout (``ticker,volume,open,close,high,low,
window_start,transactions``, nanosecond starts, gzip): ``--tickers`` tickers
(default 9,000), ``--liquid`` of them (default 15 %) with about 850 minute
bars from 04:00 to 20:00 New York (a tenth of the minutes missing), the
others thin, 1 to 300 bars at random minutes. Fractional volumes.

Measured in one run, side by side:
  1. the ingest of the day's minute file (``ingest.flatfiles.ingest``:
     stream, gunzip, parse, filter, validate, encode, COPY, rollups) in a
     child process: wall time and peak RSS; the same without the rollup
     refresh is not separable, so the rollups' own time is measured after, on
     the stored day (``refresh_rollups_of``);
  2. a bare ``COPY … FROM STDIN (FORMAT csv, HEADER)`` of the same file,
     gunzipped on the fly, into a plain one-row-per-bar table without
     indexes: the ratio COPY time / ingest time;
  3. bytes per stored minute bar: ``minute_bars`` (table, TOAST, index) and
     ``rollup_bars`` separately; the plain table's bytes per row;
  4. ``--daily-files`` days of whole-market daily files: seconds per file,
     and what that makes for 1,250 files (5 years), an extrapolation.

Uses the PostgreSQL at $APPLIANCE_BENCH_DATABASE_URL (default: the local
server on 5432); creates and drops its own database.

    .venv/bin/python bench/bench_flatfiles.py [--tickers 9000] [--liquid 0.15]
        [--daily-files 20] [--keep]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.core import calendar as tcal  # noqa: E402
from appliance.providers.flatfiles import COLUMNS  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from bench_api import _drop_db, _fresh_db  # noqa: E402 - one place for bench databases

DB = "appliance_bench_flatfiles"
DAY = dt.date(2024, 3, 5)
BUCKET = "flatfiles"
KEY_ID, SECRET = "AKIABENCHFLATFILES01", "bench-flat-files-secret"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def minute_day(n_tickers: int, liquid: float, seed: int = 26) -> tuple[bytes, int]:
    """The gzip CSV of a whole-market minute day, and its rows."""
    rng = np.random.default_rng(seed)
    base = tcal.local_midnight_epoch(DAY)
    n_liquid = int(n_tickers * liquid)
    parts = [",".join(COLUMNS) + "\n"]
    rows = 0
    for k in range(n_tickers):
        if k < n_liquid:
            mins = np.arange(240, 1200)
            mins = mins[rng.random(len(mins)) > 0.11]
        else:
            mins = np.sort(rng.choice(np.arange(240, 1200), size=int(rng.integers(1, 300)),
                                      replace=False))
        n = len(mins)
        p0 = float(rng.uniform(2, 400))
        c = np.round(p0 * np.exp(np.cumsum(rng.normal(0, 0.0008, n))), 2)
        o = np.round(c * (1 + rng.normal(0, 0.0003, n)), 2)
        h = np.round(np.maximum(o, c) * (1 + np.abs(rng.normal(0, 0.0004, n))), 4)
        lo = np.round(np.minimum(o, c) * (1 - np.abs(rng.normal(0, 0.0004, n))), 4)
        v = np.round(rng.lognormal(7, 1.2, n), 2)
        tr = rng.integers(1, 400, n)
        ns = (base + mins.astype(np.int64) * 60) * 1_000_000_000
        tk = f"{chr(65 + k % 26)}{chr(65 + k // 26 % 26)}{chr(65 + k // 676 % 26)}{k // 17576 or ''}"
        parts.append("".join(f"{tk},{v[j]},{o[j]},{c[j]},{h[j]},{lo[j]},{ns[j]},{tr[j]}\n"
                             for j in range(n)))
        rows += n
    return gzip.compress("".join(parts).encode(), compresslevel=6), rows


def daily_day(day: dt.date, n_tickers: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ns = tcal.local_midnight_epoch(day) * 1_000_000_000
    lines = [",".join(COLUMNS)]
    for k in range(n_tickers):
        c = round(float(rng.uniform(2, 400)), 2)
        o = round(c * (1 + float(rng.normal(0, 0.01))), 2)
        h = round(max(o, c) * 1.01, 2)
        lo = round(min(o, c) * 0.99, 2)
        tk = f"{chr(65 + k % 26)}{chr(65 + k // 26 % 26)}{chr(65 + k // 676 % 26)}{k // 17576 or ''}"
        lines.append(f"{tk},{float(rng.integers(100, 10**7))},{o},{c},{h},{lo},{ns},"
                     f"{int(rng.integers(1, 10**5))}")
    return gzip.compress(("\n".join(lines) + "\n").encode())


def config_text(tmp: Path, url: str, endpoint: str) -> Path:
    import yaml
    path = tmp / "bench-flat.yaml"
    path.write_text(yaml.safe_dump({
        "database": {"url": url}, "redis": {"url": "redis://127.0.0.1:6379/14"},
        "data_dir": str(tmp / "var"), "session": "extended", "symbols": ["SPY"],
        "history": {"start": "2020-01-02"},
        "provider": {"name": "demo", "polygon": {"flat_files": {
            "enabled": True, "endpoint": endpoint, "bucket": BUCKET, "access_key_id": KEY_ID,
            "secret_access_key": SECRET}}},
        "universe": {"enabled": True, "exclude": [], "daily_start": "2020-01-02",
                     "minute_start": "2024-01-02"}}))
    return path


def child_ingest(cfg_path: str, url: str, tf: str, days: list[str]) -> None:
    """Ingest files in this process; print seconds, counts and peak RSS as JSON."""
    from appliance.config.loader import load_config
    from appliance.ingest import flatfiles as ingest
    cfg = load_config(cfg_path)
    files = ingest.client(cfg)

    @contextlib.contextmanager
    def conn():
        with psycopg.connect(url) as c:
            yield c

    infos = [files.head(tf, dt.date.fromisoformat(d)) for d in days]
    t0 = time.perf_counter()
    totals = {}
    for info in infos:
        for k, v in ingest.ingest(conn, cfg, files, info).items():
            totals[k] = totals.get(k, 0) + v
    secs = time.perf_counter() - t0
    print(json.dumps({"seconds": secs, "rss_mb": peak_rss_mb(), **totals}))


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not the
    parent's from before the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_child(cfg_path, url, tf, days) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(cfg_path), url, tf, *days],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bare_copy(url: str, body: bytes) -> tuple[float, int]:
    with psycopg.connect(url) as c:
        c.execute("""CREATE TABLE plain_minutes (ticker text, volume float8, open float8,
                     close float8, high float8, low float8, window_start int8,
                     transactions int8)""")
        c.commit()
        t0 = time.perf_counter()
        with c.cursor() as cur:
            with cur.copy("COPY plain_minutes FROM STDIN (FORMAT csv, HEADER)") as cp:
                with gzip.GzipFile(fileobj=__import__("io").BytesIO(body)) as g:
                    while chunk := g.read(1 << 20):
                        cp.write(chunk)
        c.commit()
        secs = time.perf_counter() - t0
        size = c.execute("SELECT pg_total_relation_size('plain_minutes')").fetchone()[0]
    return secs, size


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_ingest(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--tickers", type=int, default=9000)
    ap.add_argument("--liquid", type=float, default=0.15)
    ap.add_argument("--daily-files", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the database")
    a = ap.parse_args()
    from moto.server import ThreadedMotoServer

    from tests.support import free_port
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
    s3.create_bucket(Bucket=BUCKET)
    say(f"generating a minute day of {a.tickers} tickers ({a.liquid:.0%} liquid)")
    body, rows = minute_day(a.tickers, a.liquid)
    say(f"{rows:,} rows, {len(body) / 1e6:.1f} MB gzipped")
    s3.put_object(Bucket=BUCKET, Key=f"us_stocks_sip/minute_aggs_v1/2024/03/{DAY}.csv.gz",
                  Body=body)
    sessions = tcal.sessions("XNYS", dt.date(2023, 1, 3), dt.date(2023, 12, 29))
    daily_days = [d.astype(dt.date) for d in sessions[:a.daily_files]]
    for i, d in enumerate(daily_days):
        s3.put_object(Bucket=BUCKET, Key=f"us_stocks_sip/day_aggs_v1/{d:%Y}/{d:%m}/{d}.csv.gz",
                      Body=daily_day(d, a.tickers, i))
    url = _fresh_db(DB)
    out: dict = {"tickers": a.tickers, "rows": rows, "gzip_bytes": len(body)}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = config_text(Path(tmp), url, endpoint)
            say("ingest of the minute day (child process)")
            ing = run_child(cfg, url, "1m", [DAY.isoformat()])
            out["ingest"] = ing
            say(f"ingest: {ing['seconds']:.1f} s, {ing['bars']:,} bars, peak RSS "
                f"{ing['rss_mb']:.0f} MB")
            say("bare COPY of the same file")
            copy_s, plain_size = bare_copy(url, body)
            out["copy_seconds"] = copy_s
            out["ratio_copy_over_ingest"] = copy_s / ing["seconds"]
            say(f"COPY: {copy_s:.1f} s; ingest speed = {copy_s / ing['seconds']:.2f} x COPY")
            with psycopg.connect(url) as c:
                mb = c.execute("SELECT sum(pg_total_relation_size(relid))::bigint "
                               "FROM pg_partition_tree('minute_bars')").fetchone()[0]
                rb = c.execute("SELECT pg_total_relation_size('rollup_bars')").fetchone()[0]
                syms = [r[0] for r in c.execute("SELECT symbol FROM minute_bars")]
                from appliance.ingest.flatfiles import ROLLUP_SLICE
                from appliance.store import minutes as mstore
                t0 = time.perf_counter()
                for i in range(0, len(syms), ROLLUP_SLICE):  # as the ingest does
                    mstore.refresh_rollups_of(c, syms[i:i + ROLLUP_SLICE], [DAY])
                out["rollups_seconds"] = time.perf_counter() - t0
                c.rollback()
            out["bytes_per_minute_bar"] = mb / ing["bars"]
            out["rollup_bytes_per_minute_bar"] = rb / ing["bars"]
            out["plain_bytes_per_row"] = plain_size / rows
            say(f"minute_bars {mb / ing['bars']:.1f} B/bar, rollups {rb / ing['bars']:.1f} "
                f"B/bar, plain table {plain_size / rows:.1f} B/row; rollups alone "
                f"{out['rollups_seconds']:.1f} s")
            if daily_days:
                say(f"ingest of {len(daily_days)} whole-market daily files")
                d = run_child(cfg, url, "1d", [x.isoformat() for x in daily_days])
                out["daily"] = d
                per = d["seconds"] / len(daily_days)
                out["daily_seconds_per_file"] = per
                out["daily_1250_files_minutes_extrapolated"] = per * 1250 / 60
                say(f"daily: {per:.2f} s per file, {d['bars']:,} bars; 1,250 files ~ "
                    f"{per * 1250 / 60:.1f} min (extrapolated)")
                with psycopg.connect(url) as c:
                    md = c.execute("""SELECT sum(pg_total_relation_size(inhrelid))
                                      FROM pg_inherits WHERE inhparent = 'market_data'::regclass"""
                                   ).fetchone()[0]
                out["daily_bytes_per_bar"] = md / d["bars"]
                say(f"market_data {md / d['bars']:.0f} B per daily bar (table and indexes)")
    finally:
        server.stop()
        if not a.keep:
            _drop_db(DB)
    out["load_average"] = os.getloadavg()
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
