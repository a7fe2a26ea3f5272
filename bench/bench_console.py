"""Server-side render time of the console's dashboard and each partial with
500 symbols (symbol_stats filled directly: the console reads the running
aggregates, never market_data, for these views).

    .venv/bin/python bench/bench_console.py            # embedded PostgreSQL + Redis
    APPLIANCE_TEST_DATABASE_URL=... APPLIANCE_TEST_REDIS_URL=... .venv/bin/python bench/bench_console.py

Prints the median and p95 of N renders per view through Flask's test client
(the whole request: routing, queries, templates). Target: < 50 ms each.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TARGET_MS = 50.0


def setup(tmp: Path):
    from conftest import _as_url, _replace_db, write_config  # the tests' helpers

    from appliance.runtime import services
    from appliance.store import pool as db
    pg = os.environ.get("APPLIANCE_TEST_DATABASE_URL")
    rd = os.environ.get("APPLIANCE_TEST_REDIS_URL")
    if not pg:
        pg = services.embedded_postgres(tmp, dbname="postgres")
    if not rd:
        rd = services.embedded_redis(tmp)
    name = "appl_bench_console_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = _as_url(_replace_db(pg, name))
    db.migrate(url)
    redis_url = rd.split("?")[0] + "?db=15" if rd.startswith("unix://") else rd.rstrip("/") + "/15"
    symbols = [f"S{i:03d}" for i in range(500)]
    cfg = write_config(tmp / "appliance.yaml", url, redis_url, symbols=symbols)
    return pg, name, url, cfg, symbols


def fill(url: str, symbols: list[str]) -> None:
    rows = []
    for i, s in enumerate(symbols):
        records = 5000 + i
        valid = records - (i % 7)
        rows.append((s, "2005-01-03", "2026-11-27", records, valid, i % 5, i % 3, i % 2, i % 4,
                     records + i % 4, 1 - (i % 4) / (records + i % 4),
                     0.98, 0.70 + (i % 30) / 100, "demo"))
    with psycopg.connect(url) as c:
        with c.cursor() as cur:
            cur.executemany("INSERT INTO symbols (symbol, active, since) VALUES (%s, true, "
                            "'2005-01-03')", [(s,) for s in symbols])
            cur.executemany(
                """INSERT INTO symbol_stats (symbol, first_session, last_session, records,
                       validated, gaps, gaps_split, gaps_jump, missing_sessions,
                       expected_sessions, completeness, mean_score, quality_score, source)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""", rows)
            for k in range(20):
                cur.execute("INSERT INTO events (level, kind, message) VALUES ('warning', "
                            "'vendor', %s)", (f"rate limited {k}",))
            cur.execute("""INSERT INTO alerts (key, severity, status, message, opened_at)
                           VALUES ('stale', 'warning', 'open', 'data is stale', now())""")


def timeit(client, path: str, n: int, headers=None) -> tuple[float, float, int]:
    client.get(path, headers=headers)  # warm (template compile, pool)
    times = []
    status = 0
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path, headers=headers)
        times.append((time.perf_counter() - t0) * 1000)
        status = r.status_code
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))], status


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30, help="renders per view")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
    pg, name, url, cfg, symbols = setup(tmp)
    try:
        fill(url, symbols)
        from appliance.runtime.runtime import Runtime
        from appliance.web import create_app
        rt = Runtime.from_path(cfg)
        rt.open()
        app = create_app(runtime=rt)
        client = app.test_client()
        html = client.get("/dashboard").get_data(as_text=True)
        poll = re.search(r'hx-get="(/dashboard/update[^"]+)"', html).group(1).replace("&amp;", "&")
        hx = {"HX-Request": "true"}
        views = [
            ("dashboard (full page)", "/dashboard", None),
            ("dashboard update, nothing changed (204)", poll, hx),
            ("dashboard update, every panel (first poll)", "/dashboard/update?d=&r=0", hx),
            ("symbols grid (full page, 500 rows)", "/symbols", None),
            ("symbols grid partial, sorted by quality", "/symbols?sort=quality_score&dir=asc",
             {**hx, "HX-Target": "symbols-table"}),
            ("symbols grid partial, filtered red", "/symbols?quality=red",
             {**hx, "HX-Target": "symbols-table"}),
            ("jobs partial", "/jobs", {**hx, "HX-Target": "jobs-table"}),
            ("events partial", "/events?level=warning", {**hx, "HX-Target": "events-table"}),
            ("gaps partial", "/gaps", {**hx, "HX-Target": "gaps-table"}),
            ("backups partial", "/backups", {**hx, "HX-Target": "backups-table"}),
            ("config page", "/config", None),
        ]
        print(f"{len(symbols)} symbols in symbol_stats; {args.n} renders per view; "
              f"target < {TARGET_MS:.0f} ms")
        print(f"{'view':48s} {'median ms':>10s} {'p95 ms':>8s}  status")
        worst = 0.0
        for label, path, headers in views:
            med, p95, status = timeit(client, path, args.n, headers)
            worst = max(worst, med)
            flag = "" if med < TARGET_MS else "  OVER TARGET"
            print(f"{label:48s} {med:10.1f} {p95:8.1f}  {status}{flag}")
        print(f"worst median: {worst:.1f} ms ({'within' if worst < TARGET_MS else 'over'} "
              f"the {TARGET_MS:.0f} ms target)")
        rt.close()
    finally:
        with psycopg.connect(pg, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not os.environ.get("APPLIANCE_TEST_DATABASE_URL"):
            from appliance.runtime import services
            services.stop_embedded_postgres(tmp)
        if not os.environ.get("APPLIANCE_TEST_REDIS_URL"):
            from appliance.runtime import services
            services.stop_embedded_redis(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
