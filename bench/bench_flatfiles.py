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
     stream, gunzip, parse, filter, validate, encode, COPY, rollups computed
     in numpy and copied) in a child process: wall time and peak RSS;
  2. a bare ``COPY … FROM STDIN (FORMAT csv, HEADER)`` of the same file,
     gunzipped on the fly, into a plain one-row-per-bar table without
     indexes: the ratio COPY time / ingest time; and the schema's floor: the
     stored minute_bars rows copied out in binary and timed while copied
     into an empty table like minute_bars (PostgreSQL's own share);
  3. bytes per stored minute bar: ``minute_bars`` (table, TOAST, index) and
     ``rollup_bars`` separately, and per column of minute_bars (the
     candles' body and wicks, 0013); the plain table's bytes per row; the SQL
     rollup refresh the ingest no longer runs, timed on the stored day;
  4. ``--month-files`` minute days (default 21, gzip level 1 to generate them
     faster) ingested by 1 and 2 worker processes (``--workers 1,2``, files
     dealt out in turn), each into a fresh database: wall time, rows, disk,
     each worker's peak RSS;
  5. ``--daily-files`` whole-market daily files (default 1,250: five years),
     ingested for real by one worker: wall time, seconds per file;
  6. with ``--reads N``: after the month's load by the first worker count,
     ``--reads-daily`` daily files (default 252: the year ending at the
     month's last session) ingested into the same database, then the API's
     reads through the appliance's own app (Flask test client of
     ``create_app`` on a Runtime on that database), N of each, interleaved,
     random liquid tickers and month sessions: a symbol-day of 1m, the year
     of 1h (the month is all there is of it), the year of 1d; p50/p95/max.

Uses the PostgreSQL at $APPLIANCE_BENCH_DATABASE_URL (default: the local
server on 5432); creates and drops its own database.

    .venv/bin/python bench/bench_flatfiles.py [--tickers 9000] [--liquid 0.15]
        [--month-files 21] [--workers 1,2] [--daily-files 1250] [--no-day] [--keep]
        [--reads 50] [--reads-daily 252]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.core import calendar as tcal  # noqa: E402
from appliance.providers.flatfiles import COLUMNS  # noqa: E402
from appliance.runtime.runtime import Runtime  # noqa: E402
from appliance.web import create_app  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from bench_api import _drop_db, _fresh_db  # noqa: E402 - one place for bench databases

DB = "appliance_bench_flatfiles"
DAY = dt.date(2024, 3, 5)
BUCKET = "flatfiles"
KEY_ID, SECRET = "AKIABENCHFLATFILES01", "bench-flat-files-secret"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _ticker(k: int) -> str:
    return f"{chr(65 + k % 26)}{chr(65 + k // 26 % 26)}{chr(65 + k // 676 % 26)}{k // 17576 or ''}"


def _csv_gz(table: pa.Table, level: int = 6) -> bytes:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(quoting_style="none"))
    return gzip.compress(buf.getvalue(), compresslevel=level)


def minute_day(n_tickers: int, liquid: float, seed: int = 26, day: dt.date = DAY,
               level: int = 6) -> tuple[bytes, int]:
    """The gzip CSV of a whole-market minute day, and its rows (numpy and
    pyarrow's CSV writer: a day in seconds)."""
    rng = np.random.default_rng(seed)
    base = tcal.local_midnight_epoch(day)
    n_liquid = int(n_tickers * liquid)
    grid = np.arange(240, 1200)
    mins = []
    for k in range(n_tickers):
        if k < n_liquid:
            mins.append(grid[rng.random(len(grid)) > 0.11])
        else:
            mins.append(np.sort(rng.choice(grid, size=int(rng.integers(1, 300)), replace=False)))
    counts = np.array([len(m) for m in mins])
    m = np.concatenate(mins)
    n = len(m)
    who = np.repeat(np.arange(n_tickers), counts)
    steps = rng.normal(0, 0.0008, n)
    walk = np.cumsum(steps)
    walk -= np.repeat(walk[np.cumsum(counts) - counts] - steps[np.cumsum(counts) - counts],
                      counts)
    c = np.round(rng.uniform(2, 400, n_tickers)[who] * np.exp(walk), 2)
    o = np.round(c * (1 + rng.normal(0, 0.0003, n)), 2)
    h = np.round(np.maximum(o, c) * (1 + np.abs(rng.normal(0, 0.0004, n))), 4)
    lo = np.round(np.minimum(o, c) * (1 - np.abs(rng.normal(0, 0.0004, n))), 4)
    v = np.round(rng.lognormal(7, 1.2, n), 2)
    names = pa.array([_ticker(k) for k in range(n_tickers)])
    table = pa.table({"ticker": names.take(pa.array(who)), "volume": v, "open": o, "close": c,
                      "high": h, "low": lo,
                      "window_start": (base + m.astype(np.int64) * 60) * 1_000_000_000,
                      "transactions": rng.integers(1, 400, n)})
    return _csv_gz(table.select(list(COLUMNS)), level), n


def daily_day(day: dt.date, n_tickers: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    c = np.round(rng.uniform(2, 400, n_tickers), 2)
    o = np.round(c * (1 + rng.normal(0, 0.01, n_tickers)), 2)
    table = pa.table({
        "ticker": [_ticker(k) for k in range(n_tickers)],
        "volume": rng.integers(100, 10**7, n_tickers).astype(float), "open": o, "close": c,
        "high": np.round(np.maximum(o, c) * 1.01, 2), "low": np.round(np.minimum(o, c) * 0.99, 2),
        "window_start": np.full(n_tickers, tcal.local_midnight_epoch(day) * 1_000_000_000),
        "transactions": rng.integers(1, 10**5, n_tickers)})
    return _csv_gz(table.select(list(COLUMNS)))


def config_text(tmp: Path, url: str, endpoint: str) -> Path:
    import yaml
    path = tmp / "bench-flat.yaml"
    path.write_text(yaml.safe_dump({
        "database": {"url": url}, "redis": {"url": "redis://127.0.0.1:6379/14"},
        "data_dir": str(tmp / "var"), "session": "extended", "symbols": ["SPY"],
        "history": {"start": "2019-01-02"},
        "provider": {"name": "demo", "polygon": {"flat_files": {
            "enabled": True, "endpoint": endpoint, "bucket": BUCKET, "access_key_id": KEY_ID,
            "secret_access_key": SECRET}}},
        "universe": {"enabled": True, "exclude": [], "daily_start": "2019-01-02",
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
    # the exchange calendar, built once per process (about 0.5 s) and kept
    # by a worker from one file to the next: not a cost of the file
    tcal.exchange_tz(cfg["calendar"])
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
    return run_children(cfg_path, url, tf, [days])[0]


def run_children(cfg_path, url, tf, shares: list[list[str]]) -> list[dict]:
    """One child process per share of the files, all at once (workers)."""
    procs = [subprocess.Popen([sys.executable, __file__, "--child", str(cfg_path), url, tf,
                               *days], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for days in shares]
    outs = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"child failed: {err[-3000:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def bare_copy(url: str, body: bytes) -> tuple[float, int]:
    with psycopg.connect(url) as c:
        c.execute("""CREATE TABLE plain_minutes (ticker text, volume float8, open float8,
                     close float8, high float8, low float8, window_start int8,
                     transactions int8)""")
        c.commit()
        t0 = time.perf_counter()
        with c.cursor() as cur:
            with cur.copy("COPY plain_minutes FROM STDIN (FORMAT csv, HEADER)") as cp:
                with gzip.GzipFile(fileobj=io.BytesIO(body)) as g:
                    while chunk := g.read(1 << 20):
                        cp.write(chunk)
        c.commit()
        secs = time.perf_counter() - t0
        size = c.execute("SELECT pg_total_relation_size('plain_minutes')").fetchone()[0]
    return secs, size


def floor_copy(url: str) -> float:
    """Seconds PostgreSQL alone takes to store the day's minute_bars rows:
    the stored rows copied out in binary, then timed while copied into an
    empty table like minute_bars (arrays parsed, compressed, indexed): the
    floor of any ingest into this schema, whatever the client does."""
    with psycopg.connect(url) as c:
        buf = io.BytesIO()
        with c.cursor() as cur:
            with cur.copy("COPY (SELECT * FROM minute_bars) TO STDOUT (FORMAT binary)") as cp:
                for block in cp:
                    buf.write(block)
        c.execute("CREATE TABLE floor_minutes (LIKE minute_bars INCLUDING ALL)")
        c.commit()
        t0 = time.perf_counter()
        with c.cursor() as cur:
            with cur.copy("COPY floor_minutes FROM STDIN (FORMAT binary)") as cp:
                view = buf.getbuffer()
                for i in range(0, len(view), 1 << 20):
                    cp.write(view[i:i + (1 << 20)])
                del view
        c.commit()
        secs = time.perf_counter() - t0
        c.execute("DROP TABLE floor_minutes")
        c.commit()
    return secs


#: minute_bars is partitioned by year: its size is its partitions'.
MINUTE_BARS_SIZE = ("SELECT sum(pg_total_relation_size(relid))::bigint "
                    "FROM pg_partition_tree('minute_bars')")


def column_sizes(c) -> dict:
    """Bytes per stored minute bar of each minute_bars column (as stored:
    compressed, TOAST included), and of the row's rest and the index."""
    cols = ("minutes", "open", "high", "low", "close", "volume", "vwap", "raw", "trades",
            "invalid", "body", "upper_wick", "lower_wick", "symbol", "session", "scale",
            "source", "ingested_at", "volume_scale", "packed")
    bars = c.execute("SELECT sum(cardinality(minutes)) FROM minute_bars").fetchone()[0]
    got = c.execute("SELECT " + ", ".join(f"coalesce(sum(pg_column_size({k})), 0)"
                                          for k in cols) + " FROM minute_bars").fetchone()
    out = {k: round(float(v) / float(bars), 2) for k, v in zip(cols, got, strict=True)}
    out["index"] = round(c.execute("SELECT sum(pg_indexes_size(relid))::bigint "
                                   "FROM pg_partition_tree('minute_bars')").fetchone()[0]
                         / float(bars), 2)
    return out


def part_day(a, s3, endpoint, tmp: Path, out: dict) -> None:
    say(f"generating a minute day of {a.tickers} tickers ({a.liquid:.0%} liquid)")
    body, rows = minute_day(a.tickers, a.liquid)
    say(f"{rows:,} rows, {len(body) / 1e6:.1f} MB gzipped")
    s3.put_object(Bucket=BUCKET, Key=f"us_stocks_sip/minute_aggs_v1/2024/03/{DAY}.csv.gz",
                  Body=body)
    out.update({"rows": rows, "gzip_bytes": len(body)})
    url = _fresh_db(DB)
    try:
        cfg = config_text(tmp, url, endpoint)
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
        out["floor_seconds"] = floor_copy(url)
        say(f"the stored rows copied again into a table like minute_bars: "
            f"{out['floor_seconds']:.1f} s (the schema's floor)")
        with psycopg.connect(url) as c:
            mb = c.execute(MINUTE_BARS_SIZE).fetchone()[0]
            rb = c.execute("SELECT pg_total_relation_size('rollup_bars')").fetchone()[0]
            out["columns_bytes_per_bar"] = column_sizes(c)
            c.commit()
            syms = [r[0] for r in c.execute("SELECT symbol FROM minute_bars")]
            from appliance.store import minutes as mstore
            t0 = time.perf_counter()
            for i in range(0, len(syms), 100):  # the SQL refresh the ingest no longer runs
                mstore.refresh_rollups_of(c, syms[i:i + 100], [DAY])
            out["sql_rollups_seconds"] = time.perf_counter() - t0
            c.rollback()
        out["bytes_per_minute_bar"] = mb / ing["bars"]
        out["rollup_bytes_per_minute_bar"] = rb / ing["bars"]
        out["plain_bytes_per_row"] = plain_size / rows
        say(f"minute_bars {mb / ing['bars']:.1f} B/bar, rollups {rb / ing['bars']:.1f} "
            f"B/bar, plain table {plain_size / rows:.1f} B/row; the SQL rollup refresh "
            f"alone {out['sql_rollups_seconds']:.1f} s; columns {out['columns_bytes_per_bar']}")
    finally:
        if not a.keep:
            _drop_db(DB)


def part_month(a, s3, endpoint, tmp: Path, out: dict) -> None:
    days = [d.astype(dt.date) for d in
            tcal.sessions("XNYS", dt.date(2024, 4, 1), dt.date(2024, 5, 31))[:a.month_files]]
    say(f"generating {len(days)} minute days (gzip level 1)")
    t0 = time.perf_counter()
    rows = 0
    for i, d in enumerate(days):
        body, n = minute_day(a.tickers, a.liquid, seed=100 + i, day=d, level=1)
        rows += n
        s3.put_object(Bucket=BUCKET, Key=f"us_stocks_sip/minute_aggs_v1/{d:%Y}/{d:%m}/{d}.csv.gz",
                      Body=body)
    say(f"{rows:,} rows in {time.perf_counter() - t0:.0f} s")
    for w in a.workers:
        url = _fresh_db(DB)
        try:
            cfg = config_text(tmp, url, endpoint)
            say(f"the month with {w} worker process(es)")
            t0 = time.perf_counter()
            got = run_children(cfg, url, "1m", [[d.isoformat() for d in days[k::w]]
                                                for k in range(w)])
            wall = time.perf_counter() - t0
            with psycopg.connect(url) as c:
                mb = c.execute(MINUTE_BARS_SIZE).fetchone()[0]
                rb = c.execute("SELECT pg_total_relation_size('rollup_bars')").fetchone()[0]
            bars = sum(g["bars"] for g in got)
            out[f"month_{w}_workers"] = {
                "files": len(days), "wall_seconds": wall, "rows": sum(g["rows"] for g in got),
                "bars": bars, "minute_bars_bytes": mb, "rollup_bars_bytes": rb,
                "bytes_per_bar": mb / bars, "peak_rss_mb": [g["rss_mb"] for g in got],
                "worker_seconds": [g["seconds"] for g in got], "load": os.getloadavg()}
            say(f"{w} worker(s): {wall:.0f} s wall, {bars:,} bars, minute_bars {mb / 1e6:.0f} MB "
                f"({mb / bars:.1f} B/bar), rollups {rb / 1e6:.0f} MB, peak RSS "
                f"{[round(g['rss_mb']) for g in got]} MB")
            if a.reads and w == a.workers[0]:
                part_reads(a, s3, cfg, url, days, out)
        finally:
            if not a.keep:
                _drop_db(DB)


def part_daily(a, s3, endpoint, tmp: Path, out: dict) -> None:
    sessions = tcal.sessions("XNYS", dt.date(2019, 1, 2), dt.date(2026, 12, 31))
    days = [d.astype(dt.date) for d in sessions[:a.daily_files]]
    say(f"generating {len(days)} whole-market daily files")
    for i, d in enumerate(days):
        s3.put_object(Bucket=BUCKET, Key=f"us_stocks_sip/day_aggs_v1/{d:%Y}/{d:%m}/{d}.csv.gz",
                      Body=daily_day(d, a.tickers, i))
    url = _fresh_db(DB)
    try:
        cfg = config_text(tmp, url, endpoint)
        say(f"ingest of {len(days)} daily files ({days[0]} .. {days[-1]}), one worker")
        t0 = time.perf_counter()
        d = run_child(cfg, url, "1d", [x.isoformat() for x in days])
        wall = time.perf_counter() - t0
        with psycopg.connect(url) as c:
            md = c.execute("""SELECT sum(pg_total_relation_size(inhrelid))
                              FROM pg_inherits WHERE inhparent = 'market_data'::regclass"""
                           ).fetchone()[0]
        out["daily"] = {**d, "files": len(days), "wall_seconds": wall,
                        "seconds_per_file": d["seconds"] / len(days),
                        "bytes_per_bar": float(md) / d["bars"], "load": os.getloadavg()}
        say(f"daily: {len(days)} files in {wall / 60:.1f} min wall ({d['seconds'] / len(days):.2f} "
            f"s per file), {d['bars']:,} bars, peak RSS {d['rss_mb']:.0f} MB, market_data "
            f"{float(md) / d['bars']:.0f} B per bar")
    finally:
        if not a.keep:
            _drop_db(DB)


def part_reads(a, s3, cfg, url: str, month: list[dt.date], out: dict) -> None:
    """The API's reads on the month's database, with a year of daily files
    (ending at the month's last session) ingested beside it."""
    sessions = [d.astype(dt.date) for d in
                tcal.sessions("XNYS", month[-1] - dt.timedelta(days=400), month[-1])]
    daily = sessions[-a.reads_daily:] if a.reads_daily else []
    for i, d in enumerate(daily):
        s3.put_object(Bucket=BUCKET, Key=f"us_stocks_sip/day_aggs_v1/{d:%Y}/{d:%m}/{d}.csv.gz",
                      Body=daily_day(d, a.tickers, 500 + i))
    if daily:
        say(f"reads: ingest of {len(daily)} daily files ({daily[0]} .. {daily[-1]})")
        got = run_child(cfg, url, "1d", [d.isoformat() for d in daily])
        say(f"reads: {got['bars']:,} daily bars in {got['seconds']:.0f} s")
    rt = Runtime.from_path(cfg)
    rt.open()
    try:
        out["reads"] = {"month_sessions": [str(month[0]), str(month[-1])],
                        "daily_sessions": [str(daily[0]), str(daily[-1])] if daily else None,
                        "load_before": os.getloadavg(),
                        **api_reads(create_app(runtime=rt).test_client(), a, month)}
        out["reads"]["load_after"] = os.getloadavg()
    finally:
        rt.close()
    for k, v in out["reads"].items():
        say(f"read {k}: {v}")


def api_reads(client, a, month: list[dt.date]) -> dict:
    rnd = random.Random(26)
    liquid = [_ticker(k) for k in range(int(a.tickers * a.liquid))]
    year = f"start={month[-1] - dt.timedelta(days=364)}&end={month[-1]}"
    kinds = {
        "1m one symbol-day": lambda s, d: f"/api/v1/historical/{s}?start={d}&end={d}"
                                          "&timeframe=1m",
        "1h one year (the month stored)": lambda s, d: f"/api/v1/historical/{s}?{year}"
                                                       "&timeframe=1h",
        "1d one year": lambda s, d: f"/api/v1/historical/{s}?{year}&timeframe=1d",
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    bars: dict[str, list[int]] = {k: [] for k in kinds}
    for k, f in kinds.items():  # warm: pools, prepared statements
        r = client.get(f(liquid[0], month[0]))
        assert r.status_code == 200, (k, r.status_code, r.get_data(as_text=True)[:300])
    for _ in range(a.reads):
        s, d = rnd.choice(liquid), rnd.choice(month)
        for k, f in kinds.items():
            t0 = time.perf_counter()
            r = client.get(f(s, d))
            body = r.get_data()
            times[k].append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, (k, r.status_code, body[:300])
            bars[k].append(json.loads(body)["count"])

    def pct(xs, q):
        xs = sorted(xs)
        return round(xs[int(q * (len(xs) - 1))], 2)
    return {k: {"n": len(v), "bars_median": statistics.median(bars[k]),
                "p50_ms": round(statistics.median(v), 2), "p95_ms": pct(v, 0.95),
                "max_ms": round(max(v), 2)} for k, v in times.items()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_ingest(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--tickers", type=int, default=9000)
    ap.add_argument("--liquid", type=float, default=0.15)
    ap.add_argument("--month-files", type=int, default=21, help="0: no month")
    ap.add_argument("--workers", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2])
    ap.add_argument("--daily-files", type=int, default=1250, help="0: no daily files")
    ap.add_argument("--no-day", action="store_true", help="skip the single minute day")
    ap.add_argument("--keep", action="store_true", help="keep the database")
    ap.add_argument("--reads", type=int, default=0,
                    help="API reads of each kind on the month's database (0: none)")
    ap.add_argument("--reads-daily", type=int, default=252,
                    help="daily files ingested beside the month before the reads")
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
    out: dict = {"tickers": a.tickers, "load_average_start": os.getloadavg()}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if not a.no_day:
                part_day(a, s3, endpoint, Path(tmp), out)
            if a.month_files:
                part_month(a, s3, endpoint, Path(tmp), out)
            if a.daily_files:
                part_daily(a, s3, endpoint, Path(tmp), out)
    finally:
        server.stop()
    out["load_average"] = os.getloadavg()
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
