"""Scale benchmark: 10 million daily candles (500 symbols x 20,000 sessions).

Reports, in one run: bulk-load time; table and index size and bytes per
candle; VACUUM ANALYZE time; latency of /api/v1/historical (one year),
/api/v1/status and /dashboard from a served appliance; the backup job's time
and archive size beside a bare pg_dump, and the restore test's time beside a
bare pg_restore of the same archive (ratios).

Minute bars are not stored by the appliance (daily candles only), so the
"one day of minute bars" figure has no counterpart here.

    .venv/bin/python bench/bench_scale.py [--rows 10000000] [--keep]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_api as ba  # noqa: E402

from appliance.runtime import services  # noqa: E402


def sizes(url: str) -> dict:
    with psycopg.connect(url) as c:
        table, index = c.execute(
            """SELECT coalesce(sum(pg_table_size(i.inhrelid)), 0),
                      coalesce(sum(pg_indexes_size(i.inhrelid)), 0)
               FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
               WHERE p.relname = 'market_data'""").fetchone()
        n = int(c.execute("SELECT sum(records) FROM symbol_stats").fetchone()[0])
        dbsize = c.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {"candles": int(n), "table_bytes": int(table), "index_bytes": int(index),
            "database_bytes": int(dbsize),
            "bytes_per_candle": round((table + index) / n, 1)}


def bare_dump_restore(url: str, archive: Path, tools: Path, scratch: str) -> dict:
    t0 = time.monotonic()
    subprocess.run([str(tools / "pg_dump"), "-Fc", f"--dbname={url}", "-f", str(archive)],
                   check=True)
    t_dump = time.monotonic() - t0
    with psycopg.connect(ba._db_url("postgres"), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{scratch}"')
    t1 = time.monotonic()
    with psycopg.connect(ba._db_url("postgres"), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{scratch}"')
    subprocess.run([str(tools / "pg_restore"), "--exit-on-error", "--no-owner", "--jobs=2",
                    f"--dbname={ba._db_url(scratch)}", str(archive)], check=True)
    with psycopg.connect(ba._db_url("postgres"), autocommit=True) as c:
        c.execute(f'DROP DATABASE "{scratch}"')
    return {"bare_pg_dump_s": round(t_dump, 1),
            "bare_pg_restore_s": round(time.monotonic() - t1, 1),
            "bare_archive_bytes": archive.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    name = "appliance_bench_scale"
    url = ba._fresh_db(name)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    out: dict = {}
    try:
        out["load"] = ba.load_rows(url, args.rows)
        out["size"] = sizes(url)
        print(json.dumps(out, indent=1, default=str), flush=True)

        with psycopg.connect(url) as c:
            last = c.execute("SELECT max(last_session) FROM symbol_stats").fetchone()[0]
        start = last.replace(year=last.year - 1)
        port = ba._free_port()
        cfg = ba._config(tmp, "scale", url, port, 1, 4, [f"S{i:04d}" for i in range(1, 11)])
        cfg.write_text(cfg.read_text() + f"\nbackup:\n  path: {tmp / 'backups'}\n"
                       f"  min_free_pct: 1\n")
        srv = ba.Server("appliance-scale", [str(Path(ba.PY).parent / "appliance"), "--config",
                                            str(cfg), "serve"], port)
        try:
            srv.wait_ready("/api/v1/symbols")
            lat = {}
            for label, path in (
                    ("historical_1y", f"/api/v1/historical/S0001?start={start}&end={last}"),
                    ("status", "/api/v1/status"), ("dashboard", "/dashboard")):
                ba.sequential_latency(port, path, 5)
                r = ba.sequential_latency(port, path, 100)
                r.pop("last_body", None)
                lat[label] = r
            out["latency"] = lat
        finally:
            srv.stop()
        print(json.dumps({"latency": out["latency"]}, indent=1, default=str), flush=True)

        from appliance.jobs import runs
        from appliance.ops.backups import run_backup, run_restore_test
        from appliance.runtime.runtime import Runtime
        rt = Runtime.from_path(cfg)
        rt.open()
        try:
            t0 = time.monotonic()
            b = runs.execute(rt, "backup", runs.manual_slot(), run_backup)
            t_backup = time.monotonic() - t0
            t1 = time.monotonic()
            r = runs.execute(rt, "restore_test", runs.manual_slot(), run_restore_test,
                             params={"backup": "latest"})
            t_rt = time.monotonic() - t1
            tools = services.pg_tools(rt.endpoints.database_url, rt.endpoints.embedded_pg)
        finally:
            rt.close()
        archive = next((tmp / "backups").glob("market_data_*.dump"))
        bare = bare_dump_restore(url, tmp / "bare.dump", tools, name + "_bare")
        out["backup"] = {"status": b["status"], "backup_s": round(t_backup, 1),
                         "archive_bytes": archive.stat().st_size,
                         "restore_test_status": r["status"], "restore_test_s": round(t_rt, 1),
                         **bare,
                         "backup_vs_bare_dump": round(t_backup / bare["bare_pg_dump_s"], 2),
                         "restore_test_vs_bare_restore":
                             round(t_rt / bare["bare_pg_restore_s"], 2)}
        print(json.dumps({"backup": out["backup"]}, indent=1, default=str), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep:
            ba._drop_db(name)
    print("RESULT " + json.dumps(out, default=str))


if __name__ == "__main__":
    main()
