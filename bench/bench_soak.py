"""Soak: the whole appliance (`appliance up`, embedded PostgreSQL and Redis in
a temporary folder, demo provider) under steady API load, with a backfill every
minute (the scheduler, cron `* * * * *`) and a config reload every 30 s.

Reports per minute: requests, errors and p50/p99 latency, and the RSS (and
USS, the pages only that process holds) of every process of the appliance:
the supervisor, the gunicorn master and each web worker, the RQ worker (and
its work horse when a job runs), the scheduler, embedded PostgreSQL and Redis
(summed); open PostgreSQL connections at the start and the end. Default
duration 600 s.

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


def _role(p: psutil.Process, up_pid: int) -> str | None:
    """A stable name for one process of the appliance tree."""
    cmd = p.cmdline()
    last = cmd[-1] if cmd else ""
    parent = p.parent()
    pcmd = parent.cmdline() if parent else []
    if p.pid == up_pid:
        return "supervisor"
    # gunicorn workers and RQ work horses are forks: same command line as the parent
    if last == "serve":
        return "web worker" if pcmd and pcmd[-1] == "serve" else "web master"
    if last == "worker":
        return "work horse" if pcmd and pcmd[-1] == "worker" else "rq worker"
    if last == "scheduler":
        return "scheduler"
    name = p.name()
    if "postgres" in name or "postgres" in " ".join(cmd[:1]):
        return "postgres (all)"
    if "redis" in name:
        return "redis"
    return None


def _rss_by_process(up: psutil.Process, tmp: Path) -> dict:
    """{name: {"rss": MB, "uss": MB}} for every process of the appliance; web
    workers are numbered by pid order (a restarted worker shows as a new pid
    in ``pids``); postgres backends are summed (their RSS counts shared buffers
    each time they touch them, so the sum overstates; it is there to spot a
    trend)."""
    out: dict[str, dict] = {}
    pids: dict[str, int] = {}
    web = []
    tree = [up] + up.children(recursive=True)
    seen = {p.pid for p in tree}
    # embedded PostgreSQL and Redis run detached: found by their data folder
    for p in psutil.process_iter():
        try:
            if p.pid not in seen and str(tmp) in " ".join(p.cmdline()):
                for q in [p] + p.children(recursive=True):
                    if q.pid not in seen:
                        seen.add(q.pid)
                        tree.append(q)
        except psutil.Error:
            continue
    for p in tree:
        try:
            role = _role(p, up.pid)
            if role is None:
                continue
            mi = p.memory_full_info()
        except psutil.Error:
            continue
        if role == "web worker":
            web.append((p.pid, mi))
            continue
        d = out.setdefault(role, {"rss": 0.0, "uss": 0.0, "n": 0})
        d["rss"] += mi.rss / 2**20
        d["uss"] += mi.uss / 2**20
        d["n"] += 1
        pids[role] = p.pid
    for i, (pid, mi) in enumerate(sorted(web, key=lambda t: t[0]), 1):
        out[f"web worker {i}"] = {"rss": mi.rss / 2**20, "uss": mi.uss / 2**20, "n": 1}
        pids[f"web worker {i}"] = pid
    return {k: {"rss": round(v["rss"], 1), "uss": round(v["uss"], 1), "pid": pids.get(k),
                "n": v["n"]} for k, v in sorted(out.items())}


def _rss_table(samples: list[tuple[float, dict]]) -> str:
    """Markdown table: one row per sample (minute), one column per process, RSS MB
    (USS MB in parentheses)."""
    names: list[str] = []
    for _, snap in samples:
        for k in snap:
            if k not in names:
                names.append(k)
    order = ["supervisor", "web master"] + sorted(n for n in names if n.startswith("web worker")) \
        + ["rq worker", "work horse", "scheduler", "postgres (all)", "redis"]
    names = [n for n in order if n in names] + [n for n in names if n not in order]
    lines = ["| minute | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for t, snap in samples:
        cells = []
        for n in names:
            v = snap.get(n)
            cells.append(f"{v['rss']:.0f} ({v['uss']:.0f})" if v else "-")
        lines.append(f"| {t / 60:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        from appliance.config.loader import load_config
        from appliance.runtime import services
        db_url = services.resolve(load_config(path), start=False).database_url
        start_rss, start_conns = _rss(pp), _pg_connections(db_url)
        t_start = time.monotonic()
        rss_samples: list[tuple[float, dict]] = []

        def sampler():
            # one sample at the start, then one at the end of every minute
            k = 0
            while True:
                rss_samples.append((time.monotonic() - t_start, _rss_by_process(pp, tmp)))
                k += 1
                if k * 60 > args.duration:
                    return
                if stop.wait(max(0.0, t_start + k * 60 - time.monotonic())):
                    return

        sampler_t = threading.Thread(target=sampler, daemon=True)
        sampler_t.start()

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
        sampler_t.join(timeout=30)  # the last sample is taken under load
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
           "pg_connections_end": end_conns,
           "rss_per_minute": [{"t_s": round(t), "processes": snap} for t, snap in rss_samples]}
    # which requests failed (status 0: no HTTP answer), and what the appliance logged
    out["failed_requests"] = [{"t_s": round(t, 1), "url": u, "status": code, "ms": round(took * 1000)}
                              for t, u, code, took in stats if code != 200][:20]
    try:
        lines = (tmp / "up.log").read_text(errors="replace").splitlines()
        bad = [ln for ln in lines if " ERROR " in ln or "Traceback" in ln or " WARNING " in ln]
        out["log_problems"] = {"count": len(bad), "first": bad[:20]}
    except OSError:
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: v for k, v in out.items() if k != "rss_per_minute"}, indent=1))
    print("\nRSS per process, MB (USS in parentheses), sampled at the start and every minute:")
    print(_rss_table(rss_samples))
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
