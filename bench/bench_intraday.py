"""Intraday benchmark (issue 15): N symbols x 1 year (2024) of regular-session
one-minute bars, ~49 million at 500 symbols, in plain PostgreSQL.

Measured in one run, side by side where there is a baseline:
  1. ingest, on a slice of ``--ingest-symbols``: ``intraday.write`` per
     symbol-month (validate, encode, COPY into a stage, upsert, rollups)
     against the same write without the rollup refresh and against a bare
     COPY of the same bars (psycopg ``write_row``) into a plain
     one-row-per-bar table without indexes; alternating rounds, best of each;
  2. storage: bytes per stored 1m bar of ``minute_bars`` (table, TOAST and
     index) and of ``rollup_bars``, after the bulk load of every symbol
     (``intraday.write`` from the truth's minutes, no vendor); the plain
     table of the slice with its primary key, per bar; the compression the
     server applied (``pg_column_compression``);
  3. reads through the API (Flask test client, the appliance's own app) and
     the same SQL alone: one symbol-day of 1m bars, one year of 1h bars, a
     1-year daily request (no ``timeframe``, i.e. today's call) against the
     same with ``timeframe=1d``; random symbols and days, interleaved, p50;
  4. a daily update: one new session for every symbol through
     ``intraday.backfill`` from the loopback fake (one request per symbol):
     the time in the vendor fetch against the rollup refresh (and the rest);
  5. memory: ``intraday.backfill`` of ``--fetch-symbols`` x 1 year from the
     loopback fake in a child process, its RSS sampled every 0.2 s;
  6. disk: a bare ``pg_dump -Fc`` against the backup job, then the restore-test
     job (the appliance's own code), on the whole database.

The fake's minute truth is ``make_minute_truth(..., session="regular",
missing=0, keep_minutes=False)``. Uses the PostgreSQL at
$APPLIANCE_BENCH_DATABASE_URL (default: the local server on 5432) and Redis at
$APPLIANCE_BENCH_REDIS_URL; creates and drops its own databases.

    .venv/bin/python bench/bench_intraday.py [--symbols 500] [--ingest-symbols 10]
        [--fetch-symbols 50] [--reads 200] [--no-backup]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import store  # noqa: E402
from appliance.core import calendar as tcal  # noqa: E402
from appliance.core import quality, units  # noqa: E402
from appliance.core.candles import MinuteBars  # noqa: E402
from appliance.ingest import minutes as intraday  # noqa: E402
from appliance.store import minutecopy  # noqa: E402
from appliance.store import minutes as mstore  # noqa: E402
from tests.fakes.minute_truth import make_minute_truth  # noqa: E402
from tests.fakes.polygon_fake import PolygonFake  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from bench_api import REDIS, _drop_db, _fresh_db  # noqa: E402 - one place for bench databases

YEAR_START, YEAR_END = dt.date(2024, 1, 1), dt.date(2024, 12, 31)
NEXT_DAY = dt.date(2025, 1, 2)  # the daily update's new session
DB, DB_FETCH = "appliance_bench_intraday", "appliance_bench_intraday_fetch"
PLAIN = """CREATE UNLOGGED TABLE IF NOT EXISTS plain_bars (
             symbol text NOT NULL, ts timestamptz NOT NULL, open float8, high float8,
             low float8, close float8, volume float8, vwap float8, trades int8,
             source text NOT NULL)"""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def symbols(n: int) -> list[str]:
    return [f"M{i:04d}" for i in range(n)]


def write_config(path: Path, url: str, fake_url: str, syms: list[str]) -> Path:
    import yaml
    cfg = {"database": {"url": url}, "redis": {"url": REDIS},
           "data_dir": str(path.parent / "var"),
           "provider": {"name": "polygon", "polygon": {
               "api_key": "test-key", "base_url": fake_url, "requests_per_minute": 100000,
               "timeout_seconds": 60}},
           "history": {"start": {"1d": YEAR_START.isoformat(), "1m": YEAR_START.isoformat()}},
           "timeframes": ["1m", "1d"], "session": "regular", "symbols": syms,
           "backup": {"path": str(path.parent / "bk"), "min_free_pct": 1}}
    path.write_text(yaml.safe_dump(cfg))
    return path


class Timers:
    """Wall time spent in patched module functions (and their call counts)."""

    def __init__(self):
        self.s: dict[str, float] = {}
        self.n: dict[str, int] = {}
        self._undo: list = []

    def patch(self, owner, name: str, label: str | None = None, replace=None) -> None:
        orig = getattr(owner, name)
        fn = replace or orig
        label = label or name

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.s[label] = self.s.get(label, 0.0) + time.perf_counter() - t
                self.n[label] = self.n.get(label, 0) + 1
        setattr(owner, name, timed)
        self._undo.append((owner, name, orig))

    def restore(self) -> None:
        for owner, name, orig in reversed(self._undo):
            setattr(owner, name, orig)
        self._undo.clear()


def month_parts(bars: MinuteBars) -> list[MinuteBars]:
    """One symbol's bars cut per calendar month (the vendor's request size)."""
    m = bars.session.astype("datetime64[M]").astype(np.int64)
    cut = np.nonzero(np.diff(m))[0] + 1
    return [bars.take(i) for i in np.split(np.arange(len(bars)), cut)]


def sizes(conn, table: str) -> dict:
    """Bytes of ``table``, summed over its partitions when it has some
    (minute_bars is partitioned by year)."""
    row = conn.execute("""WITH t AS (
                            SELECT relid FROM pg_partition_tree(%(t)s::regclass) WHERE isleaf
                            UNION ALL
                            SELECT %(t)s::regclass
                            WHERE (SELECT relkind FROM pg_class WHERE oid = %(t)s::regclass) <> 'p')
                          SELECT sum(pg_total_relation_size(relid)), sum(pg_relation_size(relid)),
                                 sum(pg_table_size(relid) - pg_relation_size(relid)),
                                 sum(pg_indexes_size(relid))
                          FROM t""", {"t": table}).fetchone()
    return dict(zip(("total", "heap", "toast", "index"), (int(x or 0) for x in row), strict=False))


def bars_stored(conn) -> int:
    return int(conn.execute("SELECT coalesce(sum(cardinality(minutes)), 0) FROM minute_bars"
                            ).fetchone()[0])


# --------------------------------------------------------------------------- 1. ingest

def bench_ingest(url: str, cfg, truth, syms: list[str], rounds: int) -> dict:
    parts = [p for s in syms for p in month_parts(truth.minutes[s].to_candles("polygon"))]
    n = sum(len(p) for p in parts)
    rows = []  # the same bars as Python rows for the COPY baseline (prepared beforehand)
    for p in parts:
        ts = (p.t * 1_000_000).astype("datetime64[us]").astype(object)
        rows.append([(p.symbol, t.replace(tzinfo=dt.UTC), o, h, lo, c, v,
                      None if vw != vw else vw, None if k < 0 else k, p.source)
                     for t, o, h, lo, c, v, vw, k in zip(
                         ts.tolist(), p.open.tolist(), p.high.tolist(), p.low.tolist(),
                         p.close.tolist(), p.volume.tolist(), p.vwap.tolist(),
                         p.trades.tolist(), strict=False)])
    res: dict[str, list[float]] = {"write": [], "write_no_rollups": [], "copy": []}
    parts_t: list[dict] = []
    with psycopg.connect(url) as conn:
        conn.execute(PLAIN)
        conn.commit()

        def write_path(rollups: bool) -> float:
            conn.execute("TRUNCATE minute_bars, rollup_bars")
            conn.commit()
            tm = Timers()
            tm.patch(minutecopy, "session_rows", "encode")
            tm.patch(mstore, "write_days")
            # the rollups: computed and encoded in numpy during their own COPY
            tm.patch(minutecopy, "copy_rollups", "refresh_rollups",
                     replace=None if rollups else (lambda *a, **k: None))
            t0 = time.perf_counter()
            try:
                for p in parts:
                    intraday.write(conn, cfg, p)
                    conn.commit()
            finally:
                tm.restore()
            el = time.perf_counter() - t0
            if rollups:
                parts_t.append(dict(tm.s, total=el))
            return el

        for _ in range(rounds):
            res["write_no_rollups"].append(write_path(False))
            conn.execute("TRUNCATE plain_bars")
            conn.commit()
            t0 = time.perf_counter()
            for rs in rows:
                with conn.cursor() as cur, cur.copy(
                        "COPY plain_bars (symbol, ts, open, high, low, close, volume, vwap, "
                        "trades, source) FROM STDIN") as cp:
                    for r in rs:
                        cp.write_row(r)
                conn.commit()
            res["copy"].append(time.perf_counter() - t0)
            res["write"].append(write_path(True))
        # the slice's storage side by side: minute_bars (as written last) vs plain rows
        conn.execute("ALTER TABLE plain_bars ADD PRIMARY KEY (symbol, ts)")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE plain_bars")
        conn.execute("VACUUM ANALYZE minute_bars")
        conn.execute("VACUUM ANALYZE rollup_bars")
        conn.autocommit = False
        plain = sizes(conn, "plain_bars")
        mb = sizes(conn, "minute_bars")
        rb = sizes(conn, "rollup_bars")
        lz4 = recompressed(conn, "lz4")
        assert bars_stored(conn) == n
        conn.execute("DROP TABLE plain_bars")
        conn.commit()
    best = {k: min(v) for k, v in res.items()}
    bp = min(parts_t, key=lambda d: d["total"])
    return {"bars": n, "parts": len(parts), "rounds": res,
            "write_bars_per_s": round(n / best["write"]),
            "write_no_rollups_bars_per_s": round(n / best["write_no_rollups"]),
            "copy_bars_per_s": round(n / best["copy"]),
            "ratio": round(best["copy"] / best["write"], 3),
            "ratio_no_rollups": round(best["copy"] / best["write_no_rollups"], 3),
            "breakdown_s": {k: round(v, 2) for k, v in bp.items()},
            "slice_storage": {"plain_bytes_per_bar": round(plain["total"] / n, 1),
                              "plain": plain,
                              "minute_bars_bytes_per_bar": round(mb["total"] / n, 1),
                              "rollup_bytes_per_bar": round(rb["total"] / n, 1),
                              "minute_bars_recompressed": lz4,
                              "minute_bars_recompressed_bytes_per_bar":
                                  round(lz4["total"] / n, 1)}}


ARRAYS = ("minutes", "open", "high", "low", "close", "volume", "vwap", "raw", "trades", "body",
          "upper_wick", "lower_wick")


def recompressed(conn, method: str) -> dict:
    """The slice's minute_bars copied into a table whose arrays are compressed
    anew with ``method`` (array_cat with an empty array, or a packed session
    joined to nothing, hands INSERT a fresh, uncompressed value; a plain
    INSERT ... SELECT would keep the stored
    compression). Sizes and the compression each value got."""
    conn.execute("DROP TABLE IF EXISTS minute_bars_re")
    conn.execute("CREATE TABLE minute_bars_re (LIKE minute_bars INCLUDING ALL)")
    for c in ARRAYS:
        conn.execute(f"ALTER TABLE minute_bars_re ALTER COLUMN {c} SET COMPRESSION {method}")
    conn.execute(f"ALTER TABLE minute_bars_re ALTER COLUMN packed SET COMPRESSION {method}")
    fresh = {c: f"CASE WHEN {c} IS NULL THEN NULL ELSE array_cat({c}, '{{}}') END"
             for c in ARRAYS}
    fresh["packed"] = "packed || ''::bytea"  # a fresh value too (0017)
    cols = (*minutecopy.COLUMNS, "ingested_at")
    conn.execute(f"INSERT INTO minute_bars_re ({', '.join(cols)}) "
                 f"SELECT {', '.join(fresh.get(c, c) for c in cols)} FROM minute_bars")
    conn.commit()
    conn.autocommit = True
    conn.execute("VACUUM ANALYZE minute_bars_re")
    conn.autocommit = False
    out = sizes(conn, "minute_bars_re")
    out["applied"] = dict(conn.execute(
        "SELECT coalesce(pg_column_compression(packed), pg_column_compression(open), 'none'), "
        "count(*) FROM minute_bars_re "
        "GROUP BY 1").fetchall())
    conn.execute("DROP TABLE minute_bars_re")
    conn.commit()
    return out


# --------------------------------------------------------------------------- bulk load

def bulk_load(url: str, cfg, truth, syms: list[str], skip: set) -> dict:
    tm = Timers()
    tm.patch(minutecopy, "session_rows", "encode")
    tm.patch(mstore, "write_days")
    tm.patch(minutecopy, "copy_rollups", "refresh_rollups")
    t0 = time.perf_counter()
    n = 0
    todo = [s for s in syms if s not in skip]
    try:
        with psycopg.connect(url) as conn:
            for i, s in enumerate(todo, 1):
                for p in month_parts(truth.minutes[s].to_candles("polygon")):
                    intraday.write(conn, cfg, p)
                    conn.commit()
                    n += len(p)
                if i % 25 == 0 or i == len(todo):
                    el = time.perf_counter() - t0
                    say(f"  bulk load {i}/{len(todo)} symbols, {n:,} bars, {el:.0f} s, "
                        f"{n / el:,.0f} bars/s")
    finally:
        tm.restore()
    el = time.perf_counter() - t0
    return {"symbols": len(todo), "bars": n, "seconds": round(el, 1),
            "bars_per_s": round(n / el) if el else 0,
            "breakdown_s": {k: round(v, 1) for k, v in tm.s.items()}}


def load_daily(url: str, truth, syms: list[str]) -> int:
    """The daily bars (market_data) behind the 1d reads, and the checkpoints
    a finished 1m backfill would have left."""
    today = dt.date.today()
    n = 0
    with psycopg.connect(url) as conn:
        from appliance.store import pool as db
        db.ensure_partitions(conn, 2023, 2026)
        conn.commit()
        for s in syms:
            b = truth.bars[s]
            cal = tcal.sessions("XNYS", b.session[0].astype(dt.date),
                                b.session[-1].astype(dt.date))
            chk = quality.validate(b, cal, today)
            store.write_bars(conn, b, chk, issues_of=quality.issues_of,
                               tz="America/New_York")
            m = YEAR_START.replace(day=1)
            while m <= YEAR_END:  # every month of the year is stored
                nxt = (m + dt.timedelta(days=32)).replace(day=1)
                mstore.record_month(conn, s, m, min(YEAR_END, nxt - dt.timedelta(days=1)), None)
                m = nxt
            n += len(b)
        conn.execute("INSERT INTO symbols (symbol, since) SELECT unnest(%s::text[]), %s "
                     "ON CONFLICT DO NOTHING", (syms, YEAR_START))
        conn.commit()
    return n


def storage(url: str) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE minute_bars")
        conn.execute("VACUUM ANALYZE rollup_bars")
        n = bars_stored(conn)
        mb, rb = sizes(conn, "minute_bars"), sizes(conn, "rollup_bars")
        comp = dict(conn.execute(
            """SELECT attname, coalesce(nullif(attcompression, ''), '-') FROM pg_attribute
               WHERE attrelid = 'minute_bars'::regclass
                 AND attname IN ('open', 'minutes', 'packed')"""
        ).fetchall())
        applied = conn.execute(
            """SELECT coalesce(pg_column_compression(packed), pg_column_compression(open), 'none'),
                      count(*)
               FROM (SELECT open, packed FROM minute_bars TABLESAMPLE SYSTEM (5)) s GROUP BY 1"""
        ).fetchall()
        raw_days = conn.execute("SELECT count(*) FILTER (WHERE scale IS NULL), count(*) "
                                "FROM minute_bars").fetchone()
        default = conn.execute("SHOW default_toast_compression").fetchone()[0]
        dbsize = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {"bars": n, "minute_bars": mb, "rollup_bars": rb,
            "bytes_per_bar": round(mb["total"] / n, 2),
            "rollup_bytes_per_bar": round(rb["total"] / n, 2),
            "column_compression": comp, "applied_compression_sample": dict(applied),
            "default_toast_compression": default,
            "float8_days": raw_days[0], "days": raw_days[1], "database_bytes": dbsize}


# --------------------------------------------------------------------------- 3. reads

def bench_reads(rt, url: str, syms: list[str], days: list[dt.date], n: int) -> dict:
    from appliance.web import create_app
    app = create_app(runtime=rt)
    client = app.test_client()
    rnd = random.Random(11)
    year = f"start={YEAR_START}&end={YEAR_END}"
    kinds = {
        "1m one symbol-day": lambda s, d: f"/api/v1/historical/{s}?start={d}&end={d}"
                                          "&timeframe=1m",
        "1h one year": lambda s, d: f"/api/v1/historical/{s}?{year}&timeframe=1h",
        "1d one year (no timeframe: today's call)": lambda s, d: f"/api/v1/historical/{s}?{year}",
        "1d one year (timeframe=1d)": lambda s, d: f"/api/v1/historical/{s}?{year}&timeframe=1d",
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    counts: dict[str, int] = {}
    for k, f in kinds.items():  # warm: pools, prepared statements
        r = client.get(f(syms[0], days[0]))
        assert r.status_code == 200, (k, r.status_code, r.get_data(as_text=True)[:300])
        counts[k] = json.loads(r.get_data())["count"]
    for _ in range(n):
        s, d = rnd.choice(syms), rnd.choice(days)
        for k, f in kinds.items():
            t0 = time.perf_counter()
            r = client.get(f(s, d))
            r.get_data()
            times[k].append((time.perf_counter() - t0) * 1000)
    # the same intraday SQL alone (no HTTP, no Flask) on one connection
    sql_t: dict[str, list[float]] = {"1m one symbol-day": [], "1h one year": []}
    q1m = mstore.intraday_sql("1m", adjust="none", include_invalid=False, fmt="json")
    q1h = mstore.intraday_sql("1h", adjust="none", include_invalid=False, fmt="json")
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(n):
            s, d = rnd.choice(syms), rnd.choice(days)
            for k, q, p in (("1m one symbol-day", q1m, {"start": d, "end": d}),
                            ("1h one year", q1h, {"start": YEAR_START, "end": YEAR_END})):
                t0 = time.perf_counter()
                conn.execute(q, {"symbol": s, "after": None, "tz": "America/New_York",
                                 "limit": 100_001, **p}).fetchall()
                sql_t[k].append((time.perf_counter() - t0) * 1000)

    def pct(xs, q):
        xs = sorted(xs)
        return round(xs[int(q * (len(xs) - 1))], 2)
    out = {k: {"bars": counts[k], "p50_ms": round(statistics.median(v), 2),
               "p90_ms": pct(v, 0.9), "p99_ms": pct(v, 0.99)} for k, v in times.items()}
    for k, v in sql_t.items():
        out[k]["sql_p50_ms"] = round(statistics.median(v), 2)
    return out


# --------------------------------------------------------------------------- 4. daily update

def bench_daily_update(rt, syms: list[str]) -> dict:
    from appliance.providers import make_provider
    from appliance.providers.http import MemoryStats
    day = make_minute_truth(syms, NEXT_DAY, NEXT_DAY, seed=8, session="regular", missing=0)
    with PolygonFake(day.bars, day.splits, minutes=day.minutes) as fake:
        cfg = rt.config
        pcfg = {**cfg["provider"], "polygon": {**cfg["provider"]["polygon"],
                                               "base_url": fake.base_url}}
        stats = MemoryStats()
        provider = make_provider(pcfg, stats=stats, redis=rt.redis)
        tm = Timers()
        tm.patch(provider, "minute_bars", "fetch (vendor, 1 request per symbol)")
        tm.patch(minutecopy, "session_rows", "encode")
        tm.patch(mstore, "write_days", "stage + upsert")
        tm.patch(minutecopy, "copy_rollups", "rollup refresh")  # numpy rollups, their COPY
        tm.patch(intraday, "refresh_stats", "minute stats + consistency")
        now = dt.datetime.combine(NEXT_DAY, dt.time(23, 0), dt.UTC)  # noqa: F841
        t0 = time.perf_counter()
        try:
            with rt.conn() as conn:
                windows = intraday.plan(conn, cfg, syms, end=NEXT_DAY)
            res = intraday.backfill(rt, cfg, provider, stats, None, lambda d, f=False: None,
                                    syms, windows)
        finally:
            tm.restore()
        el = time.perf_counter() - t0
        requests = fake.count("/v2/aggs/ticker")
    assert not res.get("failed"), res
    return {"symbols": len(syms), "requests": requests, "bars": res["bars"],
            "sessions": res["sessions"], "seconds": round(el, 2),
            "breakdown_s": {k: round(v, 2) for k, v in tm.s.items()}}


# --------------------------------------------------------------------------- 5. memory

CHILD = r"""
import datetime as dt, json, sys, time
from appliance.runtime.runtime import Runtime
from appliance.ingest import minutes as intraday
from appliance.providers import make_provider
from appliance.providers.http import MemoryStats
rt = Runtime.from_path(sys.argv[1]); rt.open()
syms = json.loads(sys.argv[2]); now = dt.datetime.fromisoformat(sys.argv[3])
stats = MemoryStats()
provider = make_provider(rt.config["provider"], stats=stats, redis=rt.redis)
t0 = time.perf_counter()
from appliance.core import calendar as tcal
with rt.conn() as conn:
    windows = intraday.plan(conn, rt.config, syms,
                            end=tcal.latest_completed_session("XNYS", now))
res = intraday.backfill(rt, rt.config, provider, stats, None, lambda d, f=False: None, syms,
                        windows)
el = time.perf_counter() - t0
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": el, "bars": res["bars"], "sessions": res["sessions"],
                  "requests": res["requests_planned"], "failed": len(res["failed"]),
                  "hwm_mb": hwm / 1024}))
"""


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def bench_fetch_backfill(truth, syms: list[str], tmp: Path) -> dict:
    url = _fresh_db(DB_FETCH)
    try:
        with PolygonFake(truth.bars, truth.splits, minutes=truth.minutes) as fake:
            cfg = write_config(tmp / "fetch.yaml", url, fake.base_url, syms)
            now = dt.datetime.combine(YEAR_END, dt.time(23, 0), dt.UTC)
            p = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg), json.dumps(syms),
                                  now.isoformat()], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            samples: list[tuple[float, float]] = []
            t0 = time.perf_counter()

            def sample():
                while p.poll() is None:
                    r = _rss_mb(p.pid)
                    if r is not None:
                        samples.append((time.perf_counter() - t0, r))
                    time.sleep(0.2)
            th = threading.Thread(target=sample, daemon=True)
            th.start()
            out, err = p.communicate()
            th.join()
            if p.returncode != 0:
                raise RuntimeError(f"fetch backfill child failed: {err[-2000:]}")
            res = json.loads(out.strip().splitlines()[-1])
            res["pages"] = fake.count("/v2/aggs/ticker")
        with psycopg.connect(url) as c:
            res["stored"] = bars_stored(c)
        rss = [r for _, r in samples]
        res.update(samples=len(rss), rss_max_mb=round(max(rss), 1),
                   rss_p50_mb=round(statistics.median(rss), 1),
                   rss_last_mb=round(rss[-1], 1),
                   bars_per_s=round(res["bars"] / res["seconds"]))
        return res
    finally:
        _drop_db(DB_FETCH)


# --------------------------------------------------------------------------- 6. disk

def bench_disk(rt, url: str, tmp: Path) -> dict:
    from appliance.jobs import runs
    from appliance.ops import backups
    from appliance.ops.backups import run_backup, run_restore_test
    with backups._maintenance_conn(url) as m:
        tools = backups.find_tools(rt, backups.server_major(m))
    target, env = backups.tool_target(url)
    bare = tmp / "bare.dump"
    t = time.perf_counter()
    subprocess.run([tools("pg_dump"), "--format=custom", f"--file={bare}", f"--dbname={target}"],
                   env=env, check=True, capture_output=True)
    bare_s = time.perf_counter() - t
    bare_size = bare.stat().st_size
    bare.unlink()
    say(f"  bare pg_dump -Fc: {bare_s:.1f} s, {units.human_bytes(bare_size)}")
    t = time.perf_counter()
    res = runs.execute(rt, "backup", runs.manual_slot(), run_backup)
    backup_s = time.perf_counter() - t
    assert res["status"] == "ok", res
    say(f"  backup job: {backup_s:.1f} s")
    t = time.perf_counter()
    rtest = runs.execute(rt, "restore_test", runs.manual_slot(), run_restore_test,
                         params={"backup": res["path"]})
    restore_s = time.perf_counter() - t
    assert rtest["status"] == "ok", rtest
    say(f"  restore test: {restore_s:.1f} s")
    return {"bare_dump_s": round(bare_s, 1), "bare_dump_bytes": bare_size,
            "backup_job_s": round(backup_s, 1), "archive_bytes": res["size_bytes"],
            "restore_test_s": round(restore_s, 1), "tools": tools.version}


# --------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--ingest-symbols", type=int, default=10)
    ap.add_argument("--fetch-symbols", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument("--no-backup", action="store_true")
    a = ap.parse_args()
    syms = symbols(a.symbols)
    out: dict = {"symbols": a.symbols}
    tmp = Path(tempfile.mkdtemp(prefix="bench-intraday-"))

    t0 = time.perf_counter()
    truth = make_minute_truth(syms, YEAR_START, YEAR_END, seed=7, session="regular", missing=0,
                              keep_minutes=False, cache_symbols=2)
    say(f"truth: {truth.n_minutes:,} regular minute bars, {a.symbols} symbols x "
        f"{len(truth.sessions)} sessions ({time.perf_counter() - t0:.1f} s)")

    from appliance.runtime.runtime import Runtime
    url = _fresh_db(DB)
    try:
        rt = Runtime.from_path(write_config(tmp / "appliance.yaml", url, "http://127.0.0.1:9",
                                            syms))
        rt.open()
        cfg = rt.config

        ing = bench_ingest(url, cfg, truth, syms[:a.ingest_symbols], a.rounds)
        out["ingest"] = ing
        say(f"ingest ({ing['bars']:,} bars, {ing['parts']} symbol-months, best of {a.rounds}): "
            f"write path {ing['write_bars_per_s']:,}/s, without rollups "
            f"{ing['write_no_rollups_bars_per_s']:,}/s, bare COPY {ing['copy_bars_per_s']:,}/s "
            f"-> ratio {ing['ratio']} (target >= 0.7), without rollups "
            f"{ing['ratio_no_rollups']}; write path breakdown {ing['breakdown_s']}")
        say(f"slice storage: plain rows + PK {ing['slice_storage']['plain_bytes_per_bar']} B/bar, "
            f"minute_bars {ing['slice_storage']['minute_bars_bytes_per_bar']} B/bar, "
            f"rollup_bars {ing['slice_storage']['rollup_bytes_per_bar']} B/bar; minute_bars "
            f"recompressed with lz4 {ing['slice_storage']['minute_bars_recompressed_bytes_per_bar']}"
            f" B/bar {ing['slice_storage']['minute_bars_recompressed']}")

        bl = bulk_load(url, cfg, truth, syms, set(syms[:a.ingest_symbols]))
        out["bulk_load"] = bl
        say(f"bulk load: {bl}")
        t = time.perf_counter()
        nd = load_daily(url, truth, syms)
        say(f"daily bars: {nd:,} ({time.perf_counter() - t:.1f} s)")
        st = storage(url)
        out["storage"] = st
        say(f"storage: {st['bars']:,} bars; minute_bars {units.human_bytes(st['minute_bars']['total'])}"
            f" = {st['bytes_per_bar']} B/bar (target <= 40) {st['minute_bars']}; rollup_bars "
            f"{units.human_bytes(st['rollup_bars']['total'])} = {st['rollup_bytes_per_bar']} B/bar; "
            f"compression: column {st['column_compression']}, applied (5% sample) "
            f"{st['applied_compression_sample']}, default_toast_compression "
            f"{st['default_toast_compression']}; float8 days {st['float8_days']}/{st['days']}; "
            f"database {units.human_bytes(st['database_bytes'])}")

        days = [d.astype(dt.date) for d in truth.sessions]
        rd = bench_reads(rt, url, syms, days, a.reads)
        out["reads"] = rd
        for k, v in rd.items():
            say(f"read {k}: {v}")

        du = bench_daily_update(rt, syms)
        out["daily_update"] = du
        b = du["breakdown_s"]
        fetch = b.get("fetch (vendor, 1 request per symbol)", 0.0)
        roll = b.get("rollup refresh", 0.0)
        say(f"daily update: {du}; rollup refresh / fetch = {roll / fetch:.2f} (target < 1)")

        if not a.no_backup:
            out["disk"] = bench_disk(rt, url, tmp)
        rt.close()
    finally:
        _drop_db(DB)

    try:
        fb = bench_fetch_backfill(truth, syms[:a.fetch_symbols], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the backup archives
    out["fetch_backfill"] = fb
    say(f"backfill from the fake ({a.fetch_symbols} symbols x 1 year): {fb['bars']:,} bars in "
        f"{fb['seconds']:.1f} s = {fb['bars_per_s']:,} bars/s, {fb['pages']} pages; worker RSS "
        f"max {fb['rss_max_mb']} MB (target <= 300), p50 {fb['rss_p50_mb']}, "
        f"last {fb['rss_last_mb']}, VmHWM {fb['hwm_mb']:.0f} MB, "
        f"{fb['samples']} samples")
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
