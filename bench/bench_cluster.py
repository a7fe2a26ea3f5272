"""Three hosts: backfill wall time with one and with two worker hosts, the
replica's lag under a backfill, /historical throughput from the replica vs
from the primary alone.

The hosts are those of the three-host journey (tests/deploy/cluster.py and
tests/deploy/test_cluster_journey.py: systemd-nspawn on the bridge mdabr0,
deployed with ansible/site.yml): mda-c1 runs PostgreSQL, Redis and the web
server, mda-c2 the replica and two workers, mda-c3 two workers. The fake
Polygon on the bridge has no rate limit and the appliance's is generous, so
the backfills measure the appliance, not the limit. Needs root, like the
journey; all hosts share this machine's CPUs, so a second worker host adds
workers but no CPU.

Four disjoint quarters of the symbols, each backfilled once from scratch,
in the order 2 hosts, 1, 1, 2 (one host: mda-c3's workers stopped). The
replica's lag (pg_stat_replication on the primary) is sampled during the
2-host backfills. Then ``--clients`` threads read /api/v1/historical (the
whole history of a random symbol) for ``--seconds`` while the replica serves
reads, and again with the replica stopped (every read on the primary).

    .venv/bin/python bench/bench_cluster.py [--symbols 300] [--sessions 250]
                                            [--clients 8] [--seconds 20]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.core import calendar as tcal  # noqa: E402
from tests.deploy import cluster as clustermod  # noqa: E402
from tests.deploy import host as hostmod  # noqa: E402
from tests.deploy import test_cluster_journey as tj  # noqa: E402
from tests.fakes.polygon_fake import PolygonFake, make_truth  # noqa: E402

AUTH = {"Authorization": f"Bearer {tj.ADMIN_TOKEN}"}
LAG_SQL = ("SELECT coalesce(extract(epoch FROM replay_lag), 0), "
           "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0) "
           "FROM pg_stat_replication")


def queued(j: tj.Journey) -> int:
    """Jobs waiting in the RQ queue (on the Redis host)."""
    out = j.primary.sh(f"REDISCLI_AUTH={tj.REDIS_PASSWORD} redis-cli llen rq:queue:appliance")
    return int(out.stdout.strip() or 0)


def drain(j: tj.Journey) -> float:
    """Seconds until the queue is empty (a fanned-out run leaves one RQ job
    per chunk behind; those that find no chunk left end at once)."""
    t0 = time.monotonic()
    while queued(j):
        time.sleep(0.5)
    return time.monotonic() - t0


def backfill(j: tj.Journey, symbols: list[str], sample=None) -> tuple[float, dict]:
    """POST a backfill of ``symbols``; the wall time until its run ended, and the run."""
    t0 = time.monotonic()
    r = requests.post(j.web + "/api/v1/backfill", json={"symbols": symbols}, headers=AUTH,
                      timeout=30)
    r.raise_for_status()
    run_id = r.json()["job_id"]
    while True:
        run = j.api(f"/api/v1/jobs/{run_id}")
        if run["status"] in ("ok", "partial", "failed"):
            return time.monotonic() - t0, run
        if sample:
            sample()
        time.sleep(0.5)


def throughput(j: tj.Journey, symbols: list[str], first: dt.date, clients: int,
               seconds: float) -> dict:
    lat: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds

    def client():
        s = requests.Session()
        s.headers.update(AUTH)
        while time.monotonic() < stop:
            t = time.monotonic()
            r = s.get(f"{j.web}/api/v1/historical/{random.choice(symbols)}?start={first}",
                      timeout=30)
            if r.status_code != 200:
                errors[0] += 1
            lat.append(time.monotonic() - t)
    before = j.reads()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = j.reads()
    lat.sort()
    return {"requests": len(lat), "per_s": len(lat) / seconds, "errors": errors[0],
            "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
            "served_by": {k: int(after.get(k, 0) - before.get(k, 0)) for k in after}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=300, help="per backfill (four backfills)")
    ap.add_argument("--sessions", type=int, default=250)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20)
    a = ap.parse_args()
    reason = hostmod.unavailable()
    if reason:
        print(f"skipped: {reason}")
        return 0
    symbols = [f"B{i:04d}" for i in range(4 * a.symbols)]
    latest = tcal.latest_completed_session("XNYS", dt.datetime.now(dt.UTC))
    first = tcal.previous_sessions("XNYS", latest, a.sessions)[0].astype(dt.date)
    truth = make_truth(symbols, first, latest, seed=23)
    workdir = Path(tempfile.mkdtemp(prefix="mda-bench-cluster-"))
    c = clustermod.Cluster(workdir, tj.NAMES)
    fake = None
    try:
        t0 = time.monotonic()
        tarball = clustermod.cluster_rootfs(tj.REPO, tj.SOURCE_IGNORE)
        c.start(tarball, tj.REPO, tj.SOURCE_DIR, tj.SOURCE_IGNORE)
        fake = PolygonFake(truth.bars, truth.splits, api_key=tj.API_KEY,
                           bind=clustermod.GATEWAY)
        fake.start()
        j = tj.Journey(c, fake, truth, workdir, f"http://{c.addresses[0]}:8000",
                       symbols=symbols, requests_per_minute=100_000)
        j.state["first"] = first
        p = j.deploy("bench")
        if p.returncode != 0:
            print(tj._tail(p.stdout + p.stderr, 60))
            return 1
        j.wait("/health", lambda: j.get("/health").status_code == 200, timeout=90)
        print(f"cluster up in {time.monotonic() - t0:.0f} s; {a.symbols} symbols x "
              f"{a.sessions} sessions per backfill")
        h1, h2, h3 = c.hosts
        workers = " ".join(f"appliance-worker@{i}.service"
                           for i in range(1, tj.WORKERS_PER_HOST + 1))

        lags: list[tuple[float, float]] = []

        def sample():
            out = clustermod.sql(h1, LAG_SQL, check=False)
            if "|" in out:
                s, b = out.split("|")
                lags.append((float(s), float(b)))
        walls: dict[int, list[float]] = {1: [], 2: []}
        drains: dict[int, list[float]] = {1: [], 2: []}
        # ABBA: 2 hosts, 1, 1, 2 (the machine's load drifts)
        for k, hosts in enumerate((2, 1, 1, 2)):
            part = symbols[k * a.symbols:(k + 1) * a.symbols]
            if hosts == 1:
                h3.sh(f"systemctl stop {workers}")
            load = os.getloadavg()[0]
            wall, run = backfill(j, part, sample if hosts == 2 else None)
            left = drain(j)
            if hosts == 1:
                h3.sh(f"systemctl start {workers}")
            walls[hosts].append(wall)
            drains[hosts].append(left)
            res = run.get("result") or {}
            print(f"backfill {k + 1}, {hosts} worker host(s) ({2 * hosts} workers): {wall:.1f} s "
                  f"(run {run['duration_s']:.1f} s), then {left:.1f} s until the queue was "
                  f"empty; status {run['status']}, {res.get('inserted')} candles, "
                  f"{res.get('requests')} requests, chunks by host {res.get('hosts')}, "
                  f"load before {load:.1f}")
        w1, w2 = statistics.mean(walls[1]), statistics.mean(walls[2])
        print(f"mean wall: 1 host {w1:.1f} s, 2 hosts {w2:.1f} s; ratio 1 host / 2 hosts "
              f"{w1 / w2:.2f}; queue empty after: 1 host "
              f"{statistics.mean(drains[1]):.1f} s, 2 hosts {statistics.mean(drains[2]):.1f} s")
        if lags:
            secs = [s for s, _ in lags]
            byts = [b for _, b in lags]
            print(f"replica lag during the 2-host backfills ({len(lags)} samples): replay_lag "
                  f"median {statistics.median(secs):.3f} s, max {max(secs):.3f} s; "
                  f"bytes behind median {statistics.median(byts):.0f}, max {max(byts):.0f}")

        j.wait("replica ok", lambda: j.get("/health").json()["replica"]["state"] == "ok",
               timeout=60)
        rep = throughput(j, symbols, first, a.clients, a.seconds)
        h2.sh("systemctl stop postgresql")
        j.wait("replica down", lambda: j.get("/health").json()["replica"]["state"] == "down",
               timeout=30)
        pri = throughput(j, symbols, first, a.clients, a.seconds)
        h2.sh("systemctl start postgresql")
        for name, r in (("replica serving reads", rep), ("replica stopped, primary only", pri)):
            print(f"/historical ({a.sessions} bars), {a.clients} clients, {name}: "
                  f"{r['per_s']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                  f"{r['errors']} errors, served by {r['served_by']}")
        print(f"ratio replica / primary only: {rep['per_s'] / pri['per_s']:.2f}")
        return 0
    finally:
        c.destroy()
        if fake is not None:
            fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
