"""Backup benchmark: 500 symbols x 5 years of daily candles (~630,000 rows).

Measured side by side in one run, on the same archive:
  1. the backup job (pg_dump -Fc in an exported snapshot + row counts in that
     snapshot + pg_restore --list + a full read + sha256 + manifest) against a
     bare ``pg_dump -Fc`` of the same database: time, archive size;
  2. the restore-test job (sha256, --list, scratch database, pg_restore,
     counts per table and per symbol, comparison, validation summary, drop)
     against a bare ``pg_restore`` of the same archive into a scratch database
     with the same options (--exit-on-error --jobs=N --no-owner) followed by
     DROP DATABASE. Target: the restore test costs at most 2x the bare restore.

Rows are generated directly and loaded with COPY (no vendor involved).
Uses the PostgreSQL at $APPLIANCE_BENCH_DATABASE_URL (default: the local
server on 5432) and Redis at $APPLIANCE_BENCH_REDIS_URL (default
127.0.0.1:6379/14); creates and drops its own database.

    .venv/bin/python bench/bench_backup.py [--symbols 500] [--years 5] [--rounds 3]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
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
from appliance.core import units  # noqa: E402
from appliance.ops import backups  # noqa: E402
from appliance.store import pool as db  # noqa: E402

SERVER = os.environ.get("APPLIANCE_BENCH_DATABASE_URL",
                        "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("APPLIANCE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
DB = "appliance_bench_backup"


def symbols(n: int) -> list[str]:
    return [f"B{chr(65 + i // 676 % 26)}{chr(65 + i // 26 % 26)}{chr(65 + i % 26)}"
            for i in range(n)]


def load(url: str, syms: list[str], years: int) -> int:
    end = dt.date.today() - dt.timedelta(days=7)
    start = end.replace(year=end.year - years)
    sess = tcal.sessions("XNYS", start, end).astype("datetime64[D]")
    days = [str(d) for d in sess]
    rng = np.random.default_rng(7)
    with psycopg.connect(url) as c:
        db.ensure_partitions(c, start.year, end.year + 1)
        c.commit()
        with c.cursor() as cur, cur.copy(
                "COPY market_data (symbol, ts, open, high, low, close, volume, vwap, trades, "
                "source, validated, quality_score, gap_detected) FROM STDIN") as cp:
            for s in syms:
                close = 50 * np.exp(np.cumsum(rng.normal(0, 0.015, len(days))))
                opn = close * (1 + rng.normal(0, 0.005, len(days)))
                hi = np.maximum(opn, close) * 1.01
                lo = np.minimum(opn, close) * 0.99
                vol = rng.integers(1e5, 1e7, len(days))
                bad = rng.random(len(days)) < 0.002
                gap = rng.random(len(days)) < 0.001
                lines = [f"{s}\t{d} 05:00:00+00\t{o:.4f}\t{h:.4f}\t{l_:.4f}\t{cl:.4f}\t{v}\t"
                         f"{(h + l_ + cl) / 3:.4f}\t{v // 100}\tbench\t{'f' if b else 't'}\t"
                         f"{0.5 if b else 1.0}\t{'t' if g else 'f'}\n"
                         for d, o, h, l_, cl, v, b, g in zip(days, opn, hi, lo, close, vol, bad,
                                                            gap, strict=False)]
                cp.write("".join(lines))
        c.execute("INSERT INTO symbols (symbol, since) SELECT unnest(%s::text[]), %s",
                  (syms, start))
        c.execute("""INSERT INTO symbol_stats (symbol, first_session, last_session, records)
                     SELECT symbol, min(ts)::date, max(ts)::date, count(*) FROM market_data
                     GROUP BY symbol""")
        c.commit()
        c.execute("ANALYZE")
        return c.execute("SELECT count(*) FROM market_data").fetchone()[0]


def write_config(path: Path, url: str) -> Path:
    from urllib.parse import quote

    import yaml
    from psycopg.conninfo import conninfo_to_dict
    p = conninfo_to_dict(url)
    host = p.get("host", "127.0.0.1")
    pg_url = (f"postgresql://{p.get('user', 'postgres')}@/{p['dbname']}?host={quote(host)}"
              if host.startswith("/") else
              f"postgresql://{p.get('user', 'postgres')}@{host}:{p.get('port', 5432)}"
              f"/{p['dbname']}")
    cfg = {"database": {"url": pg_url}, "redis": {"url": REDIS},
           "data_dir": str(path.parent / "var"), "provider": {"name": "demo"},
           "symbols": ["AAPL"], "backup": {"path": str(path.parent / "bk"), "min_free_pct": 1}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def bare_restore(rt, tools, url: str, archive: Path, jobs: int) -> float:
    """CREATE DATABASE + pg_restore (same options as the test) + DROP DATABASE."""
    live = backups.db_name(url)
    name = backups.scratch_name(live, "bare")
    t = time.perf_counter()
    with backups._maintenance_conn(url) as m:
        backups._create_db(m, name, live)
        try:
            target, env = backups.tool_target(url, name)
            subprocess.run([tools("pg_restore"), "--exit-on-error", f"--jobs={jobs}",
                            "--no-owner", f"--dbname={target}", str(archive)], env=env,
                           check=True, capture_output=True)
        finally:
            backups.drop_db(m, name, live)
    return time.perf_counter() - t


def bare_dump(tools, url: str, out: Path) -> float:
    target, env = backups.tool_target(url)
    t = time.perf_counter()
    subprocess.run([tools("pg_dump"), "--format=custom", f"--file={out}", f"--dbname={target}"],
                   env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--years", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()

    from appliance.jobs import runs
    from appliance.ops.backups import run_backup, run_restore_test
    from appliance.runtime.runtime import Runtime

    with psycopg.connect(SERVER, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{DB}"')
    url = backups.url_for(SERVER, DB)
    try:
        db.migrate(url)
        t = time.perf_counter()
        n = load(url, symbols(a.symbols), a.years)
        load_s = time.perf_counter() - t
        with psycopg.connect(url) as c:
            dbsize = c.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        with tempfile.TemporaryDirectory() as d:
            rt = Runtime.from_path(write_config(Path(d) / "appliance.yaml", url))
            rt.open()
            jobs = int(rt.config["backup"]["parallel_jobs"])
            with backups._maintenance_conn(url) as m:
                tools = backups.find_tools(rt, backups.server_major(m))
            bk, bare_d, tests, bares = [], [], [], []
            archive = None
            for i in range(a.rounds):  # noqa: B007
                bare_d.append(bare_dump(tools, url, Path(d) / "bare.dump"))
                t = time.perf_counter()
                res = runs.execute(rt, "backup", runs.manual_slot(), run_backup)
                bk.append(time.perf_counter() - t)
                assert res["status"] == "ok", res
                archive, size = Path(res["path"]), res["size_bytes"]
            bare_size = (Path(d) / "bare.dump").stat().st_size
            for i in range(a.rounds):  # alternate, so that neither side gets a warmer cache  # noqa: B007
                bares.append(bare_restore(rt, tools, url, archive, jobs))
                t = time.perf_counter()
                res = runs.execute(rt, "restore_test", runs.manual_slot(), run_restore_test,
                                   params={"backup": str(archive)})
                tests.append(time.perf_counter() - t)
                assert res["status"] == "ok", res
            rt.close()
    finally:
        with psycopg.connect(SERVER, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')

    med = statistics.median
    print(f"server: PostgreSQL via {backups.db_name(url)} on {SERVER.split('@')[-1]}; "
          f"tools: {tools.version}; pg_restore --jobs={jobs}; {a.rounds} rounds, medians")
    print(f"candles: {n:,} ({a.symbols} symbols x {a.years} years), loaded with COPY in "
          f"{load_s:.1f} s; database size {units.human_bytes(dbsize)}")
    print(f"backup job:        {med(bk):6.2f} s   archive {units.human_bytes(size)} "
          f"({size / n:.1f} B/candle)")
    print(f"bare pg_dump -Fc:  {med(bare_d):6.2f} s   archive {units.human_bytes(bare_size)}")
    print(f"  backup / bare pg_dump: {med(bk) / med(bare_d):.2f}x")
    runs_of = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print(f"restore test:      {med(tests):6.2f} s   (runs: {runs_of(tests)})")
    print(f"bare pg_restore:   {med(bares):6.2f} s   (runs: {runs_of(bares)})")
    ratio = med(tests) / med(bares)
    print(f"  restore test / bare pg_restore: {ratio:.2f}x (target <= 2x): "
          f"{'OK' if ratio <= 2 else 'OVER TARGET'}")
    return 0 if ratio <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
