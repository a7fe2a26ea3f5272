"""Ingestion benchmark: 500 symbols x 5 years of daily bars (~630,000 candles).

Measured side by side in one run:
  1. end-to-end backfill from a loopback Polygon fake (child process: time,
     candles/s, peak RSS);
  2. the store's write path (COPY into staging + one upsert per symbol) against
     a bare COPY of the same rows into the same table: throughput ratio;
  3. a daily update with grouped daily: requests per missing session;
  4. validation + scoring throughput of quality.py on the same candles.

Uses the PostgreSQL at $APPLIANCE_BENCH_DATABASE_URL (default: the local server
on 5432) and Redis at $APPLIANCE_BENCH_REDIS_URL (default 127.0.0.1:6379/14);
creates and drops its own database.

    .venv/bin/python bench/bench_backfill.py [--symbols 500] [--years 5]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import store  # noqa: E402
from appliance.core import calendar as tcal  # noqa: E402
from appliance.core import quality  # noqa: E402
from appliance.store import pool as db  # noqa: E402
from tests.fakes.polygon_fake import PolygonFake, make_truth  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from bench_api import REDIS, _drop_db, _fresh_db  # noqa: E402 - one place for bench databases


def symbols(n: int) -> list[str]:
    out = []
    for i in range(n):
        a, b, c = chr(65 + i // 676 % 26), chr(65 + i // 26 % 26), chr(65 + i % 26)
        out.append(f"B{a}{b}{c}")
    return out


def write_config(path: Path, url: str, fake_url: str, syms: list[str], start: dt.date) -> Path:
    import yaml
    pg_url = url  # already a postgresql:// URL
    cfg = {"database": {"url": pg_url}, "redis": {"url": REDIS},
           "data_dir": str(path.parent / "var"),
           "provider": {"name": "polygon", "polygon": {
               "api_key": "test-key", "base_url": fake_url, "requests_per_minute": 100000,
               "timeout_seconds": 30}},
           "history": {"start": start.isoformat(), "lookback_sessions": 5},
           "symbols": syms, "backup": {"path": str(path.parent / "bk")}}
    path.write_text(yaml.safe_dump(cfg))
    return path


CHILD = r"""
import json, resource, sys, time
from appliance.runtime.runtime import Runtime
from appliance.jobs import runs, backfill
rt = Runtime.from_path(sys.argv[1]); rt.open()
t0 = time.perf_counter()
res = runs.execute(rt, "backfill", runs.manual_slot(), backfill.run,
                   params={"end": sys.argv[2]})
el = time.perf_counter() - t0
# VmHWM is this process's own peak; ru_maxrss would include the forked parent's
# pages from before exec (the bench process holding the fake's data)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": el, "inserted": res["inserted"], "requests": res["requests"],
                  "status": res["status"], "maxrss_mb": hwm / 1024}))
"""


def bench_end_to_end(truth, syms, start, end) -> dict:
    name = "appliance_bench_backfill"
    url = _fresh_db(name)
    try:
        with PolygonFake(truth.bars, truth.splits) as fake, tempfile.TemporaryDirectory() as d:
            cfg = write_config(Path(d) / "appliance.yaml", url, fake.base_url, syms, start)
            out = subprocess.run([sys.executable, "-c", CHILD, str(cfg), end.isoformat()],
                                 capture_output=True, text=True, cwd=ROOT, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            with psycopg.connect(url) as c:
                res["stored"] = c.execute("SELECT count(*) FROM market_data").fetchone()[0]
            # a daily update: one more session for every symbol, via grouped daily
            cfg.write_text(cfg.read_text().replace("lookback_sessions: 5", "lookback_sessions: 0"))
            last = tcal.sessions("XNYS", end + dt.timedelta(days=1), end + dt.timedelta(days=10))[0]
            extra = make_truth(syms, start, last.astype(dt.date), seed=3)
            for s in syms:
                fake.set_bars(s, extra.bars[s])
            before = fake.count("/v2/aggs/grouped")
            out2 = subprocess.run([sys.executable, "-c", CHILD, str(cfg), str(last)],
                                  capture_output=True, text=True, cwd=ROOT, check=True)
            upd = json.loads(out2.stdout.strip().splitlines()[-1])
            res["daily_update"] = {"grouped_requests": fake.count("/v2/aggs/grouped") - before,
                                   "missing_sessions": 1, "inserted": upd["inserted"],
                                   "seconds": round(upd["seconds"], 2)}
        return res
    finally:
        _drop_db(name)


def bench_write_path(truth, syms) -> dict:
    name = "appliance_bench_write"
    url = _fresh_db(name)
    today = dt.date.today()
    payloads = []
    for s in syms:
        b = truth.bars[s]
        cal = tcal.sessions("XNYS", b.session[0].astype(dt.date), b.session[-1].astype(dt.date))
        chk = quality.validate(b, cal, today)
        payloads.append((store.copy_text(b, chk, issues_of=quality.issues_of, direct=True,
                                           tz="America/New_York"),
                         b.session[0].astype(dt.date), b.session[-1].astype(dt.date), b, chk))
    n = sum(len(p[3]) for p in payloads)
    ny = dt.timezone(dt.timedelta(hours=-5))
    tuples = []
    for _, _, _, b, chk in payloads:
        issues = [quality.issues_of(m) for m in chk.issue_mask.tolist()]
        kinds = chk.gap_kind.tolist()
        tuples.append([
            (b.symbol, "1d", dt.datetime.combine(d, dt.time(), ny), o, h, lo, c, v,
             None if vw != vw else vw, None if t < 0 else t, b.source, bool(ok), float(sc),
             iss, bool(g), k, None if gp != gp else float(gp))
            for d, o, h, lo, c, v, vw, t, ok, sc, iss, g, k, gp in zip(
                b.session.astype(dt.date).tolist(), b.open.tolist(), b.high.tolist(),
                b.low.tolist(), b.close.tolist(), b.volume.tolist(), b.vwap.tolist(),
                b.trades.tolist(), chk.valid.tolist(), chk.score.tolist(), issues,
                chk.gap_detected.tolist(), kinds, np.asarray(chk.gap_pct, float).tolist(), strict=False)])
    try:
        with psycopg.connect(url) as conn:
            db.ensure_partitions(conn, 2015, 2030)
            conn.commit()
            results = {"store": [], "copy": []}
            for rep in range(2):  # noqa: B007
                conn.execute("TRUNCATE market_data")
                conn.commit()
                t0 = time.perf_counter()
                for _, first, last, b, chk in payloads:  # noqa: B007
                    store.write_bars(conn, b, chk, issues_of=quality.issues_of,
                                     tz="America/New_York")
                    conn.commit()
                results["store"].append(time.perf_counter() - t0)
                conn.execute("TRUNCATE market_data")
                conn.commit()
                # the same rows, COPY'd straight into market_data (ts computed beforehand)
                cols = ("symbol, timeframe, ts, open, high, low, close, volume, vwap, trades, "
                        "source, validated, quality_score, issues, gap_detected, gap_kind, gap_pct")
                # baseline 1: COPY of the same rows from Python tuples (psycopg write_row)
                t0 = time.perf_counter()
                for rows in tuples:
                    with conn.cursor() as cur:
                        with cur.copy(f"COPY market_data ({cols}) FROM STDIN") as cp:
                            for r in rows:
                                cp.write_row(r)
                    conn.commit()
                results["copy"].append(time.perf_counter() - t0)
                conn.execute("TRUNCATE market_data")
                conn.commit()
                # baseline 2: COPY of text prepared beforehand (server-side cost only)
                t0 = time.perf_counter()
                for payload, *_ in payloads:
                    with conn.cursor() as cur:
                        with cur.copy(f"COPY market_data ({cols}) FROM STDIN") as cp:
                            cp.write(payload)
                    conn.commit()
                results.setdefault("copy_text", []).append(time.perf_counter() - t0)
        best_store, best_copy = min(results["store"]), min(results["copy"])
        best_text = min(results["copy_text"])
        return {"candles": n, "store_s": round(best_store, 3), "copy_s": round(best_copy, 3),
                "copy_text_s": round(best_text, 3),
                "store_candles_per_s": round(n / best_store),
                "copy_candles_per_s": round(n / best_copy),
                "copy_text_candles_per_s": round(n / best_text),
                "ratio": round(best_copy / best_store, 3),
                "ratio_vs_prepared_text": round(best_text / best_store, 3)}
    finally:
        _drop_db(name)


def bench_quality(truth, syms) -> dict:
    today = dt.date.today()
    cal = {}
    n = sum(len(truth.bars[s]) for s in syms)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for s in syms:
            b = truth.bars[s]
            key = (b.session[0], b.session[-1])
            if key not in cal:
                cal[key] = tcal.sessions("XNYS", b.session[0].astype(dt.date),
                                         b.session[-1].astype(dt.date))
            chk = quality.validate(b, cal[key], today)
            quality.symbol_score(int(chk.valid.sum()), len(b), len(b), len(cal[key]),
                                 float(chk.score.mean()))
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"candles": n, "seconds": round(best, 3), "candles_per_s": round(n / best)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--years", type=int, default=5)
    a = ap.parse_args()
    end = dt.date(2025, 12, 31)
    start = dt.date(end.year - a.years + 1, 1, 1)
    syms = symbols(a.symbols)
    t0 = time.perf_counter()
    truth = make_truth(syms, start, end, seed=7)
    print(f"truth: {truth.n_candles} candles for {len(syms)} symbols "
          f"({time.perf_counter() - t0:.1f} s to generate)")
    q = bench_quality(truth, syms)
    print(f"quality.validate+score: {q['candles_per_s']:,} candles/s "
          f"({q['candles']} candles in {q['seconds']} s)")
    w = bench_write_path(truth, syms)
    print(f"write path: store {w['store_candles_per_s']:,}/s vs bare COPY of the same rows "
          f"{w['copy_candles_per_s']:,}/s -> ratio {w['ratio']} (target >= 0.7); vs COPY of "
          f"text prepared beforehand {w['copy_text_candles_per_s']:,}/s -> ratio "
          f"{w['ratio_vs_prepared_text']}")
    e = bench_end_to_end(truth, syms, start, end)
    print(f"end-to-end backfill: {e['stored']} candles in {e['seconds']:.1f} s = "
          f"{e['stored'] / e['seconds']:,.0f} candles/s, {e['requests']} requests, "
          f"peak worker RSS {e['maxrss_mb']:.0f} MB (targets: < 60 s, < 300 MB)")
    du = e["daily_update"]
    print(f"daily update via grouped daily: {du['grouped_requests']} request(s) for "
          f"{du['missing_sessions']} missing session x {len(syms)} symbols "
          f"({du['inserted']} candles, {du['seconds']} s)")
    print(json.dumps({"quality": q, "write_path": w, "end_to_end": e}, default=str))


if __name__ == "__main__":
    main()
