"""REST API benchmark, measured side by side in one run.

1. ``GET /api/v1/historical/{symbol}`` (one year of daily bars, JSON and CSV)
   at 32 concurrent keep-alive connections: throughput and p50/p99 latency of
   the appliance (``appliance serve``) and of ``bench/minimal_app.py`` (the
   same SQL through psycopg, the same body, no framework) under the same
   gunicorn settings (``server.workers`` processes x ``server.threads``
   threads, same worker class). The figure that matters is the ratio appliance/minimal.
1b. The tail (run first): one year of daily bars (260 rows) for a random
   symbol out of 500 per request (a wrk Lua script), ``wrk -t2 -c32 -d15s
   --latency``, the appliance against ``bench/small_app.py`` (Flask +
   psycopg, the JSON built in Python), both served by gunicorn with the
   appliance's settings and gevent workers (2 workers, pool of 10 per worker
   unless told otherwise). Rounds alternate which app goes first. Reported
   per round and as medians: req/s, p50/p90/p99/p99.9/max and the number of
   requests over 1 s and 2 s (from wrk's own latency histogram), and the
   ratios appliance/small app. ``--gevent-monitor 0.1`` runs both with
   gevent's monitor thread, which prints the stack of anything that keeps a
   worker's event loop for longer than that (to the server logs named in the
   result).
2. ``GET /api/v1/status`` latency with 10 million rows in ``market_data``
   (500 symbols x 20,000 sessions, generated with INSERT ... SELECT
   generate_series into its own database; symbol_stats filled by one
   aggregate, as the store's refresh would). The load time is reported, and
   for scale the time of the full-table ``count(*)`` that status avoids.

Load generator: wrk when installed (preferred), else a threaded http.client
keep-alive client. Uses the local PostgreSQL ($APPLIANCE_BENCH_DATABASE_URL,
default postgresql://postgres@127.0.0.1:5432/postgres) and Redis
($APPLIANCE_BENCH_REDIS_URL, default redis://127.0.0.1:6379/14); creates and
drops its own databases.

    .venv/bin/python bench/bench_api.py [--workers 1] [--threads 4] [--duration 10]
                                        [--connections 32] [--rows 10000000] [--skip-status]
                                        [--tail-only] [--tail-rounds 2] [--tail-duration 15]
                                        [--tail-workers 2] [--tail-pool-size 10]
                                        [--gevent-monitor SECONDS] [--skip-tail]
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.store import pool as db  # noqa: E402

SERVER = os.environ.get("APPLIANCE_BENCH_DATABASE_URL",
                        "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("APPLIANCE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
PY = sys.executable


# --------------------------------------------------------------------------- databases

def _db_url(name: str) -> str:
    from psycopg.conninfo import conninfo_to_dict
    p = conninfo_to_dict(SERVER)
    host = p.get("host", "127.0.0.1")
    port = p.get("port", "5432")
    user = p.get("user", "postgres")
    pw = (":" + p["password"]) if p.get("password") else ""
    return f"postgresql://{user}{pw}@{host}:{port}/{name}"


def _fresh_db(name: str) -> str:
    with psycopg.connect(SERVER, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    url = _db_url(name)
    db.migrate(url)
    return url


def _drop_db(name: str) -> None:
    with psycopg.connect(SERVER, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _config(tmp: Path, name: str, db_url: str, port: int, workers: int, threads: int,
            symbols: list[str], pool_size: int | None = None,
            worker_class: str | None = None) -> Path:
    path = tmp / f"{name}.yaml"
    server = {"bind": f"127.0.0.1:{port}", "workers": workers, "threads": threads,
              "admin_token": "bench-admin-token-0123456789abcdef", "secret_key": "bench"}
    if worker_class:
        server["worker_class"] = worker_class
    path.write_text(yaml.safe_dump({
        "database": {"url": db_url, "pool_size": pool_size or max(4, threads + 2)},
        "redis": {"url": REDIS},
        "data_dir": str(tmp / f"var-{name}"),
        "server": server,
        "provider": {"name": "demo"},
        "history": {"start": (dt.date.today() - dt.timedelta(days=400)).isoformat()},
        "symbols": symbols,
    }, sort_keys=False))
    return path


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------- servers

class Server:
    def __init__(self, name: str, cmd: list[str], port: int, env: dict | None = None):
        self.name, self.port = name, port
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    def wait_ready(self, path: str, timeout: float = 60) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {Path(self.log.name).read_text()[-3000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", path)
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready: {Path(self.log.name).read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --------------------------------------------------------------------------- load generators

def wrk(url: str, connections: int, duration: int, threads: int = 2) -> dict:
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
                          "--latency", "--timeout", "10s", url],
                         capture_output=True, text=True, check=True).stdout

    def ms(v: str) -> float:
        n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
        return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": ms(pct["50"]), "p99_ms": ms(pct["99"]),
            "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errs.group(1).strip() if errs else None, "tool": "wrk"}


def pyload(url: str, connections: int, duration: int) -> dict:
    """Threaded keep-alive client (used when wrk is not installed)."""
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    host, port, path = m.group(1), int(m.group(2)), m.group(3)
    lat: list[float] = []
    bad = [0]
    stop = time.monotonic() + duration
    lock = threading.Lock()

    def run():
        c = http.client.HTTPConnection(host, port, timeout=30)
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            mine.append((time.perf_counter() - t0) * 1000)
            if r.status != 200:
                bad[0] += 1
        with lock:
            lat.extend(mine)

    ts = [threading.Thread(target=run) for _ in range(connections)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    el = time.monotonic() - t0
    lat.sort()
    return {"rps": len(lat) / el, "p50_ms": lat[len(lat) // 2],
            "p99_ms": lat[int(len(lat) * 0.99)], "non_2xx": bad[0], "socket_errors": None,
            "tool": "python"}


def load(url: str, connections: int, duration: int) -> dict:
    if shutil.which("wrk"):
        return wrk(url, connections, duration)
    return pyload(url, connections, duration)


def sequential_latency(port: int, path: str, n: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        lat.append((time.perf_counter() - t0) * 1000)
        assert r.status in (200, 503), (r.status, body[:300])
    lat.sort()
    return {"n": n, "p50_ms": round(statistics.median(lat), 2),
            "p99_ms": round(lat[int(n * 0.99) - 1], 2), "max_ms": round(lat[-1], 2),
            "last_body": json.loads(body) if r.getheader("Content-Type", "").startswith(
                "application/json") else None}


# --------------------------------------------------------------------------- part 1

def bench_historical(args, tmp: Path) -> dict:
    name = "appliance_bench_api"
    url = _fresh_db(name)
    try:
        port_a, port_m = _free_port(), _free_port()
        cfg = _config(tmp, "api", url, port_a, args.workers, args.threads, ["AAPL"])
        # one real backfill from the demo provider: ~13 months of AAPL
        from appliance.ingest.backfill import run_backfill
        from appliance.jobs import runs
        from appliance.runtime.runtime import Runtime
        rt = Runtime.from_path(cfg)
        rt.open()
        try:
            res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill, params={})
            assert res["status"] == "ok", res
            with rt.conn() as conn:
                last = conn.execute("SELECT max(last_session) FROM symbol_stats").fetchone()[0]
        finally:
            rt.close()
        end = last
        start = end - dt.timedelta(days=365)
        q = f"start={start}&end={end}"
        appliance = Server("appliance", [str(Path(PY).parent / "appliance"), "--config", str(cfg),
                                         "serve"], port_a)
        minimal = Server("minimal", [PY, str(ROOT / "bench" / "minimal_app.py"), str(cfg)],
                         port_m, env={"MINIMAL_BIND": f"127.0.0.1:{port_m}"})
        try:
            appliance.wait_ready("/health")
            minimal.wait_ready(f"/historical/AAPL?{q}&format=json")
            # same body: the appliance answers exactly what the minimal app does
            bodies = {}
            for srv, path in ((appliance, f"/api/v1/historical/AAPL?{q}"),
                              (minimal, f"/historical/AAPL?{q}&format=json")):
                c = http.client.HTTPConnection("127.0.0.1", srv.port)
                c.request("GET", path)
                bodies[srv.name] = c.getresponse().read()
            assert bodies["appliance"] == bodies["minimal"], "the two bodies differ"
            n_rows = json.loads(bodies["appliance"])["count"]
            out = {"rows_per_request": n_rows, "range": [str(start), str(end)],
                   "workers": args.workers, "threads": args.threads,
                   "connections": args.connections, "duration_s": args.duration}
            for fmt in ("json", "csv"):
                runs_a, runs_m = [], []
                for _ in range(args.rounds):  # alternate, so drift hits both alike
                    runs_m.append(load(f"http://127.0.0.1:{port_m}/historical/AAPL?{q}"
                                       f"&format={fmt}", args.connections, args.duration))
                    runs_a.append(load(f"http://127.0.0.1:{port_a}/api/v1/historical/AAPL?{q}"
                                       f"&format={fmt}", args.connections, args.duration))
                best_a = max(runs_a, key=lambda r: r["rps"])
                best_m = max(runs_m, key=lambda r: r["rps"])
                out[fmt] = {"appliance": best_a, "minimal": best_m,
                            "ratio": round(best_a["rps"] / best_m["rps"], 3),
                            "all_rounds": {"appliance": [r["rps"] for r in runs_a],
                                           "minimal": [r["rps"] for r in runs_m]}}
            return out
        finally:
            appliance.stop()
            minimal.stop()
    finally:
        _drop_db(name)


# --------------------------------------------------------------------------- part 1b: the tail

WRK_RANDOM_SYMBOL = r"""
-- one year of daily bars for a random symbol out of N per request; the
-- latency histogram is read in done() to count requests over 1 s and 2 s
local prefix, query, n = "%(prefix)s", "%(query)s", %(n)d
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter * 7919)
end
function init(args)
  math.randomseed(seed or 1)
end
function request()
  return wrk.format("GET", string.format("%%sS%%04d?%%s", prefix, math.random(1, n), query))
end
function done(summary, latency, requests)
  -- latency(i): the i-th distinct latency recorded (microseconds) and its count
  local over1, over2 = 0, 0
  for i = 1, #latency do
    local us, c = latency(i)
    if us > 1000000 then over1 = over1 + c end
    if us > 2000000 then over2 = over2 + c end
  end
  io.write(string.format("TAIL p50_us=%%d p90_us=%%d p99_us=%%d p999_us=%%d max_us=%%d over_1s=%%d over_2s=%%d requests=%%d timeouts=%%d\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, over1, over2, summary.requests,
    summary.errors.timeout))
end
"""  # noqa: E501


def wrk_tail(base: str, prefix: str, query: str, n_symbols: int, connections: int,
             duration: int, tmp: Path) -> dict:
    """wrk -t2 -cN -dS --latency with a random symbol per request; p50/p99/max
    and the number of requests over 1 s and 2 s from wrk's own histogram."""
    script = tmp / "random_symbol.lua"
    script.write_text(WRK_RANDOM_SYMBOL % {"prefix": prefix, "query": query, "n": n_symbols})
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s",
                          "--latency", "--timeout", "10s", "-s", str(script), base],
                         capture_output=True, text=True, check=True).stdout
    m = dict(re.findall(r"(\w+)=(\d+)", re.search(r"^TAIL .*$", out, re.M).group(0)))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": int(m["p50_us"]) / 1000, "p90_ms": int(m["p90_us"]) / 1000,
            "p99_ms": int(m["p99_us"]) / 1000, "p999_ms": int(m["p999_us"]) / 1000,
            "max_ms": int(m["max_us"]) / 1000, "over_1s": int(m["over_1s"]),
            "over_2s": int(m["over_2s"]), "requests": int(m["requests"]),
            "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errs.group(1).strip() if errs else None}


def _gunicorn_cli(opts: dict, bind: str) -> list[str]:
    """gunicorn's command line for the options ``gunicorn_options`` gives the
    appliance (the small app is served with exactly these)."""
    return ["-k", opts["worker_class"], "-w", str(opts["workers"]), "--threads",
            str(opts["threads"]), "--worker-connections", str(opts["worker_connections"]),
            "--timeout", str(opts["timeout"]), "--graceful-timeout", str(opts["graceful_timeout"]),
            "--keep-alive", str(opts["keepalive"]), "--limit-request-line",
            str(opts["limit_request_line"]), "--log-level", "warning", "-b", bind]


def bench_tail(args, tmp: Path) -> dict:
    """The appliance vs the small Flask + psycopg app (bench/small_app.py), one
    year of daily bars for a random symbol out of 500 per request, gevent
    workers, 32 connections, rounds alternating."""
    name = "appliance_bench_tail"
    n_sym = 500
    url = _fresh_db(name)
    try:
        t0 = time.monotonic()
        load_rows(url, n_sym * 300, n_sym)  # 300 sessions from 1946-01-02
        load_s = round(time.monotonic() - t0, 1)
        start, end = dt.date(1946, 1, 2), dt.date(1946, 12, 31)
        q = f"start={start}&end={end}"
        port_a, port_s = _free_port(), _free_port()
        syms = [f"S{i:04d}" for i in range(1, n_sym + 1)]
        cfg_path = _config(tmp, "tail", url, port_a, args.tail_workers, args.threads, syms,
                           pool_size=args.tail_pool_size, worker_class="gevent")
        from appliance.config.loader import load_config
        from appliance.web.server import gunicorn_options
        opts = gunicorn_options(load_config(cfg_path))
        env_a = {}
        if args.gevent_monitor:
            # gevent's monitor thread prints the stack of any greenlet that
            # keeps the hub for longer than this
            env_a = {"GEVENT_MONITOR_THREAD_ENABLE": "true",
                     "GEVENT_MAX_BLOCKING_TIME": str(args.gevent_monitor)}
        appliance = Server("appliance", [str(Path(PY).parent / "appliance"), "--config",
                                         str(cfg_path), "serve"], port_a, env=env_a)
        small = Server("small", [PY, "-m", "gunicorn", "--chdir", str(ROOT / "bench")]
                       + _gunicorn_cli(opts, f"127.0.0.1:{port_s}") + ["small_app:app"], port_s,
                       env={"SMALL_DATABASE_URL": url,
                            "SMALL_POOL_SIZE": str(args.tail_pool_size), **env_a})
        try:
            appliance.wait_ready(f"/api/v1/historical/S0001?{q}")
            small.wait_ready(f"/historical/S0001?{q}")
            a = json.loads(_fetch(port_a, f"/api/v1/historical/S0042?{q}"))
            b = json.loads(_fetch(port_s, f"/historical/S0042?{q}"))
            assert a["count"] == b["count"] and a["data"][0]["time"] == b["data"][0]["time"], \
                "the two apps answer different rows"
            # warm both (connections, caches) before measuring
            for port, prefix in ((port_s, "/historical/"), (port_a, "/api/v1/historical/")):
                wrk_tail(f"http://127.0.0.1:{port}", prefix, q, n_sym, args.connections, 3, tmp)
            rounds = []
            for i in range(args.tail_rounds):  # alternate, so drift hits both alike
                order = [("small", port_s, "/historical/"),
                         ("appliance", port_a, "/api/v1/historical/")]
                if i % 2:
                    order.reverse()
                r = {}
                for who, port, prefix in order:
                    workers = _children((appliance if who == "appliance" else small).proc.pid)
                    cpu0 = _cpu_seconds(workers)
                    pg0 = _backend_cpu(name)
                    r[who] = wrk_tail(f"http://127.0.0.1:{port}", prefix, q, n_sym,
                                      args.connections, args.tail_duration, tmp)
                    # CPU per request of the app's workers: on a machine shared with
                    # other work, the figure that load beside the run disturbs least
                    n = max(1, r[who]["requests"])
                    r[who]["cpu_ms_per_request"] = round(
                        (_cpu_seconds(workers) - cpu0) * 1000 / n, 3)
                    # and of the PostgreSQL backends serving it (the two apps share
                    # the database, but only one is under load at a time)
                    pg1 = _backend_cpu(name)
                    r[who]["pg_cpu_ms_per_request"] = round(
                        sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items()) * 1000 / n, 3)
                r["p99_ratio"] = round(r["appliance"]["p99_ms"] / r["small"]["p99_ms"], 2)
                r["rps_ratio"] = round(r["appliance"]["rps"] / r["small"]["rps"], 2)
                rounds.append(r)
                print(json.dumps({"tail_round": i + 1, **r}), flush=True)
            blocked = None
            if args.gevent_monitor:
                text = Path(appliance.log.name).read_text()
                blocked = {"appliance_reports": text.count("appears to be blocked"),
                           "log": appliance.log.name}
                stext = Path(small.log.name).read_text()
                blocked["small_reports"] = stext.count("appears to be blocked")
                blocked["small_log"] = small.log.name
        finally:
            appliance.stop()
            small.stop()
        print("| round | app | req/s | p50 ms | p99 ms | max ms | > 1 s | > 2 s | CPU ms/req "
              "| PostgreSQL CPU ms/req |\n|---|---|---|---|---|---|---|---|---|---|")
        for i, r in enumerate(rounds, 1):
            for who in ("appliance", "small"):
                x = r[who]
                print(f"| {i} | {who} | {x['rps']:.0f} | {x['p50_ms']:.0f} | {x['p99_ms']:.0f} | "
                      f"{x['max_ms']:.0f} | {x['over_1s']} | {x['over_2s']} | "
                      f"{x['cpu_ms_per_request']} | {x['pg_cpu_ms_per_request']} |")
            print(f"| {i} | ratio | {r['rps_ratio']} | | {r['p99_ratio']} | | | | | |")
        med = {}
        for who in ("appliance", "small"):
            med[who] = {k: statistics.median(r[who][k] for r in rounds)
                        for k in ("rps", "p50_ms", "p99_ms", "max_ms", "over_1s", "over_2s",
                                  "cpu_ms_per_request", "pg_cpu_ms_per_request")}
        return {"symbols": n_sym, "rows_per_request": a["count"], "load_s": load_s,
                "workers": opts["workers"], "worker_class": opts["worker_class"],
                "pool_size": args.tail_pool_size, "connections": args.connections,
                "duration_s": args.tail_duration, "rounds": rounds, "median": med,
                "p99_ratio_median": round(med["appliance"]["p99_ms"] / med["small"]["p99_ms"], 2),
                "rps_ratio_median": round(med["appliance"]["rps"] / med["small"]["rps"], 2),
                "gevent_monitor": blocked}
    finally:
        _drop_db(name)


def _children(pid: int) -> list[int]:
    """The gunicorn workers of the master ``pid``."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (/proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _backend_cpu(dbname: str) -> dict[int, float]:
    """{pid: CPU seconds} of the PostgreSQL backends connected to ``dbname``
    (a local server: /proc of this machine)."""
    with psycopg.connect(SERVER, autocommit=True) as c:
        pids = [r[0] for r in c.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                        (dbname,)).fetchall()]
    return {pid: _cpu_seconds([pid]) for pid in pids}


def _fetch(port: int, path: str) -> bytes:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body[:300])
    return body


# --------------------------------------------------------------------------- part 2

def load_rows(url: str, rows: int, n_sym: int = 500) -> dict:
    """Fill market_data with ``rows`` synthetic daily candles (``n_sym`` symbols
    S0001.., weekdays from 1946) with INSERT … SELECT generate_series, then
    symbol_stats with one aggregate, then VACUUM ANALYZE. Returns timings."""
    per_sym = rows // n_sym
    t0 = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        first = dt.date(1946, 1, 2)
        last_year = first.year + int(per_sym / 260) + 2
        db.ensure_partitions(conn, first.year, last_year)
        conn.execute("SET synchronous_commit = off")
        conn.execute("CREATE TEMP TABLE days AS SELECT d::date AS d FROM generate_series("
                     "%s::date, %s::date, '1 day') d WHERE extract(isodow FROM d) < 6 "
                     "ORDER BY d LIMIT %s", (first, dt.date(last_year, 12, 31), per_sym))
        for lo in range(1, n_sym + 1, 50):  # 50 symbols (1M rows) per statement
            conn.execute(
                """INSERT INTO market_data (symbol, timeframe, ts, open, high, low, close,
                       volume, vwap, trades, source, validated, quality_score, gap_detected)
                   SELECT 'S' || lpad(s::text, 4, '0'), '1d',
                          (d::timestamp AT TIME ZONE 'America/New_York'),
                          100 + (s %% 7), 101 + (s %% 7), 99 + (s %% 7), 100.5 + (s %% 7),
                          1e6, 100.2, 1000, 'bench', (s + d - DATE '1946-01-01') %% 997 <> 0,
                          1.0, (s + d - DATE '1946-01-01') %% 4999 = 0
                   FROM generate_series(%s::int, %s::int) s CROSS JOIN days""",
                (lo, min(lo + 49, n_sym)))
        t_insert = time.monotonic() - t0
        t1 = time.monotonic()
        conn.execute(
            """INSERT INTO symbol_stats (symbol, first_session, last_session, records,
                   validated, gaps, missing_sessions, expected_sessions, completeness,
                   mean_score, quality_score, source)
               SELECT symbol, (min(ts) AT TIME ZONE 'America/New_York')::date,
                      (max(ts) AT TIME ZONE 'America/New_York')::date, count(*),
                      count(*) FILTER (WHERE validated), count(*) FILTER (WHERE gap_detected),
                      0, count(*), 1.0, avg(quality_score),
                      count(*) FILTER (WHERE validated)::float / count(*), max(source)
               FROM market_data GROUP BY symbol""")
        conn.execute("INSERT INTO symbols (symbol, since) SELECT symbol, first_session "
                     "FROM symbol_stats")
        t_stats = time.monotonic() - t1
        t2 = time.monotonic()
        conn.execute("VACUUM ANALYZE market_data")
        t_vacuum = time.monotonic() - t2
    return {"insert_s": round(t_insert, 1), "symbol_stats_s": round(t_stats, 1),
            "vacuum_analyze_s": round(t_vacuum, 1),
            "load_total_s": round(time.monotonic() - t0, 1)}


def bench_status(args, tmp: Path) -> dict:
    name = "appliance_bench_10m"
    url = _fresh_db(name)
    n_sym = 500
    try:
        timings = load_rows(url, args.rows, n_sym)
        with psycopg.connect(url, autocommit=True) as conn:
            t2 = time.monotonic()
            n = conn.execute("SELECT count(*) FROM market_data").fetchone()[0]
            t_count = time.monotonic() - t2
        port = _free_port()
        syms = [f"S{i:04d}" for i in range(1, 11)]
        cfg = _config(tmp, "status", url, port, args.workers, args.threads, syms)
        srv = Server("appliance-10m", [str(Path(PY).parent / "appliance"), "--config", str(cfg),
                                       "serve"], port)
        try:
            srv.wait_ready("/api/v1/symbols")
            sequential_latency(port, "/api/v1/status", 5)  # warm up
            st = sequential_latency(port, "/api/v1/status", args.status_requests)
            h = sequential_latency(port, "/health", args.status_requests)
        finally:
            srv.stop()
        dbb = st.pop("last_body")["database"]
        h.pop("last_body")
        assert dbb["total_records"] == n, (dbb, n)
        return {"rows": n, "symbols": n_sym, **timings,
                "full_count_s": round(t_count, 3), "status": st, "health": h,
                "status_database_block": dbb}
    finally:
        if not args.keep:
            _drop_db(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--status-requests", type=int, default=200)
    ap.add_argument("--skip-status", action="store_true")
    ap.add_argument("--skip-historical", action="store_true")
    ap.add_argument("--skip-tail", action="store_true")
    ap.add_argument("--tail-only", action="store_true",
                    help="only the tail comparison with the small Flask app")
    ap.add_argument("--tail-workers", type=int, default=2,
                    help="gunicorn workers for the tail comparison (the appliance default)")
    ap.add_argument("--tail-pool-size", type=int, default=10,
                    help="pool size per worker for both apps (the appliance default)")
    ap.add_argument("--tail-duration", type=int, default=15)
    ap.add_argument("--tail-rounds", type=int, default=2)
    ap.add_argument("--gevent-monitor", type=float, default=0.0, metavar="SECONDS",
                    help="run both apps with gevent's monitor thread reporting any "
                         "greenlet that blocks the hub this long")
    ap.add_argument("--keep", action="store_true", help="keep the 10M-row database")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    result = {"cpus": os.cpu_count()}
    if args.tail_only:
        args.skip_historical = args.skip_status = True
    try:
        if not args.skip_tail and not shutil.which("wrk"):
            print("skipping the tail comparison: it needs wrk (apt-get install wrk)", flush=True)
        elif not args.skip_tail:
            result["tail"] = bench_tail(args, tmp)
            print(json.dumps({"tail": result["tail"]}, indent=1), flush=True)
        if not args.skip_historical:
            result["historical"] = bench_historical(args, tmp)
            print(json.dumps({"historical": result["historical"]}, indent=1), flush=True)
        if not args.skip_status:
            result["status_10m"] = bench_status(args, tmp)
            print(json.dumps({"status_10m": result["status_10m"]}, indent=1), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
