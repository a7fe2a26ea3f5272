"""Soak: the whole appliance (`appliance up`, embedded PostgreSQL and Redis in
a temporary folder, demo provider) under steady API load, with a backfill every
minute (the scheduler, cron `* * * * *`) and a config reload every 30 s.

Reports per minute: requests, errors and p50/p99 latency; RSS of the web
workers and the worker at the start and the end; open PostgreSQL connections
at the start and the end. Default duration 600 s.

    .venv/bin/python bench/bench_soak.py [--duration 600] [--clients 8]
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_api as ba  # noqa: E402

TOKEN = "soak-admin-token"


def _get(url: str, method: str = "GET", headers: dict | None = None):
    req = urllib.request.Request(url, method=method, headers=headers or {})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    except OSError:
        code = 0
    return code, time.perf_counter() - t0


def _rss(up: psutil.Process) -> dict:
    """RSS in MB by role, summed over each role's processes (gunicorn master and
    workers carry the `serve` command line)."""
    out = {"web": 0.0, "worker": 0.0, "scheduler": 0.0}
    for p in up.children(recursive=True):
        try:
            cmd = p.cmdline()
            mb = p.memory_info().rss / 2**20
        except psutil.Error:
            continue
        role = {"serve": "web", "worker": "worker", "scheduler": "scheduler"}.get(
            cmd[-1] if cmd else "")
        if role:
            out[role] += mb
    return {k: round(v, 1) for k, v in out.items()}


def _pg_connections(url: str) -> int:
    import psycopg
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'market_data'"
                         ).fetchone()[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    port = ba._free_port()
    cfg = {"data_dir": str(tmp / "var"), "server": {"bind": f"127.0.0.1:{port}", "workers": 2,
                                                    "admin_token": TOKEN},
           "symbols": ["AAPL", "MSFT", "NVDA", "SPY"], "history": {"start": "2024-01-02"},
           "schedules": {"backfill": "* * * * *"}, "backup": {"path": str(tmp / "bk")},
           "jobs": {"catch_up": False}}
    path = tmp / "appliance.yaml"
    path.write_text(yaml.safe_dump(cfg))
    up = subprocess.Popen([str(Path(ba.PY).parent / "appliance"), "--config", str(path), "up"],
                          stdout=open(tmp / "up.log", "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    stats: list[tuple[float, str, int, float]] = []
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _get(f"{base}/api/v1/historical/AAPL")[0] == 200:
                break
            time.sleep(0.5)
        else:
            raise SystemExit("the appliance did not come up")
        pp = psutil.Process(up.pid)
        from appliance.config import load_config
        from appliance import services
        db_url = services.resolve(load_config(path), start=False).database_url
        start_rss, start_conns = _rss(pp), _pg_connections(db_url)
        t_start = time.monotonic()

        def client():
            urls = [f"{base}/api/v1/historical/AAPL", f"{base}/api/v1/status", f"{base}/health",
                    f"{base}/api/v1/historical/MSFT?format=csv"]
            i = 0
            while not stop.is_set():
                u = urls[i % len(urls)]
                code, took = _get(u)
                stats.append((time.monotonic() - t_start, u.split("/")[-1][:20], code, took))
                i += 1

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        for t in threads:
            t.start()
        reloads = 0
        n = 0
        while time.monotonic() - t_start < args.duration:
            time.sleep(30)
            n += 1
            text = path.read_text()
            # alternate the dashboard refresh so every reload really changes something
            d = yaml.safe_load(text)
            d.setdefault("dashboard", {})["refresh_seconds"] = 10 + n % 2
            path.write_text(yaml.safe_dump(d))
            code, _ = _get(f"{base}/api/v1/config/reload", "POST",
                           {"Authorization": f"Bearer {TOKEN}"})
            reloads += code == 200
        stop.set()
        for t in threads:
            t.join(timeout=30)
        end_rss, end_conns = _rss(pp), _pg_connections(db_url)
        import psycopg
        with psycopg.connect(db_url) as c:
            bf = c.execute("SELECT status, count(*) FROM job_runs WHERE job = 'backfill' "
                           "GROUP BY 1").fetchall()
    finally:
        stop.set()
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
    minutes = []
    # whole minutes of the run (requests finishing after the deadline, while the
    # clients stop, count in the totals but get no bucket of their own)
    for m in range(max(1, -(-args.duration // 60))):
        lo, hi = m * 60, min((m + 1) * 60, args.duration)
        lat = sorted(s[3] for s in stats if lo <= s[0] < hi)
        errs = sum(1 for s in stats if lo <= s[0] < hi and s[2] != 200)
        if lat:
            minutes.append({"minute": m + 1, "requests": len(lat), "errors": errs,
                            "p50_ms": round(lat[len(lat) // 2] * 1000, 1),
                            "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1)})
    out = {"duration_s": args.duration, "clients": args.clients, "minutes": minutes,
           "errors": sum(1 for s in stats if s[2] != 200), "requests": len(stats),
           "reloads_ok": reloads, "backfill_runs": dict(bf), "rss_mb_start": start_rss,
           "rss_mb_end": end_rss, "pg_connections_start": start_conns,
           "pg_connections_end": end_conns}
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=1))
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
