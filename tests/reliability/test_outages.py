"""PostgreSQL restarted and Redis stopped while the appliance serves: errors
only during the outage, never a hang, recovery right after."""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from appliance.alerts import rules as alerts
from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.runtime import services
from appliance.runtime.runtime import Runtime
from appliance.store import pool as db
from appliance.web import create_app
from tests.conftest import write_config

pytestmark = pytest.mark.reliability


@pytest.fixture
def own_services():
    """A PostgreSQL and a Redis of this test's own, so they can be stopped."""
    d = Path(tempfile.mkdtemp(prefix="appl-o-", dir="/tmp"))
    pg = services.embedded_postgres(d)
    rd = services.embedded_redis(d)
    db.migrate(pg)
    yield d, pg, rd
    services.stop_embedded_redis(d)
    services.stop_embedded_postgres(d)
    shutil.rmtree(d, ignore_errors=True)


def _serve(app):
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_port}"


#: The least time PostgreSQL stays down in test_postgres_restarted_while_serving.
OUTAGE_S = 8.0


def _get(url: str, timeout: float = 8.0):
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    return status, json.loads(body or b"null"), time.monotonic() - t0


def _setup(tmp_path, pg, rd, **over):
    path = write_config(tmp_path / "appliance.yaml",
                        pg.replace("postgresql://postgres:@", "postgresql://postgres@"), rd,
                        history={"start": "2026-01-02", "lookback_sessions": 5},
                        **{"alerts": {"scheduler_heartbeat_max_seconds": 5},
                           "data_dir": str(tmp_path / "var"), **over})
    rt = Runtime.from_path(path)
    rt.open()
    assert runs.execute(rt, "backfill", runs.manual_slot(), run_backfill)["status"] == "ok"
    return path, rt


EXTRA = [f"P{i:02d}" for i in range(30)]  # backfilled from 2012 while PostgreSQL goes down


def _stored(pg: str) -> dict[str, tuple[int, int]]:
    """symbol -> (candles, distinct sessions) of the EXTRA symbols."""
    import psycopg
    with psycopg.connect(pg, connect_timeout=3) as c:
        return {r[0]: (r[1], r[2]) for r in c.execute(
            "SELECT symbol, count(*), count(DISTINCT ts) FROM market_data "
            "WHERE symbol = ANY(%s) GROUP BY 1", (EXTRA,))}


def test_postgres_restarted_while_serving(own_services, tmp_path, survived):
    """PostgreSQL stopped and started again while 4 clients hammer the API and a
    30-symbol backfill is writing."""
    from appliance.providers.demo import DemoProvider

    from .helpers import wait_until
    d, pg, rd = own_services
    path, rt = _setup(tmp_path, pg, rd)
    srv, base = _serve(create_app(runtime=rt))
    hist = f"{base}/api/v1/historical/AAPL?start=2026-01-02"
    results: list = []
    stop = threading.Event()
    bf: dict = {}
    params = {"symbols": EXTRA, "start": "2012-01-03"}

    def hammer():
        while not stop.is_set():
            for url in (hist, f"{base}/health"):
                results.append((time.monotonic(), url, *_get(url)))
            time.sleep(0.02)

    def long_backfill():
        try:
            bf["result"] = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                                        params=params)
        except Exception as e:  # noqa: BLE001 - what it raises is asserted below
            bf["error"] = e

    try:
        with cf.ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(hammer) for _ in range(4)]
            time.sleep(1.0)
            writer = threading.Thread(target=long_backfill)
            writer.start()
            wait_until(lambda: len(_stored(pg)) >= 2, 60, "the backfill to be storing")
            at_stop = sum(n for n, _ in _stored(pg).values())
            down_at = time.monotonic()
            services.stop_embedded_postgres(d)
            stopped_at = time.monotonic()
            writer.join(30)
            assert not writer.is_alive(), "the backfill hung on the lost database"
            # down long enough for a request to start and end within the outage:
            # one in flight at the stop waits out the pool's 5 s acquire timeout (a
            # 503 then), so a backfill that fails fast must not end the outage sooner
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
            restart_at = time.monotonic()
            services.embedded_postgres(d)
            up_at = time.monotonic()
            time.sleep(6.0)
            stop.set()
            for f in futs:
                f.result()
    finally:
        srv.shutdown()
    # the backfill in flight failed cleanly: an exception or a failed/partial result
    assert "error" in bf or bf["result"]["status"] in ("failed", "partial"), bf
    before = [r for r in results if r[0] + r[4] < down_at]
    # requests that started after the server was gone and ended before it was back
    # (each entry: start time, url, status, body, seconds taken)
    during = [r for r in results if r[0] > stopped_at + 0.2 and r[0] + r[4] < restart_at]
    after = [r for r in results if r[0] > up_at + 3.0]  # started 3 s after the restart
    assert before and during and after
    assert all(r[2] == 200 for r in before), [r[3].get("reasons") for r in before if r[2] != 200][:2]
    # during the outage: JSON errors, 503, answered promptly
    for _, url, status, body, took in during:  # noqa: B007
        assert status == 503, (url, status, body)
        assert ("error" in body) if "/historical/" in url else body["status"] == "unhealthy"
    assert max(r[4] for r in results) < 6.0, "a request hung"
    # once a read has waited out the pool's timeout, the database is known
    # unreachable: reads are refused at once, bar one probe at a time
    hist = [r for r in results if "/historical/" in r[1]]
    noticed = min((r[0] + r[4] for r in hist if r[2] == 503 and r[4] >= 4.0), default=None)
    assert noticed is not None, "no read waited out the pool's timeout"
    after_noticed = [r for r in hist if r[0] > noticed and r[0] + r[4] < restart_at]
    quick = [r for r in after_noticed if r[4] < 1.0]
    assert len(quick) >= 0.8 * len(after_noticed) > 0, \
        (len(quick), len(after_noticed), sorted(r[4] for r in after_noticed)[-5:])
    # recovered within 3 s of PostgreSQL being back (the pool tries every second)
    assert all(r[2] == 200 for r in after), [r[1:4] for r in after if r[2] != 200][:3]
    with rt.conn() as conn:  # a run left 'running' by the outage is failed after its timeout
        conn.execute("UPDATE job_runs SET heartbeat_at = now() - interval '1 hour' "
                     "WHERE status = 'running'")
        stale = runs.mark_stale(conn, 600)
        assert conn.execute("SELECT count(*) FROM job_runs WHERE status IN ('running', 'queued')"
                            ).fetchone()[0] == 0
    res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill, params=params)
    assert res["status"] == "ok", res
    rt.close()
    demo = DemoProvider()
    stored = _stored(pg)
    want = {s: len(demo.daily_bars(s, dt.date(2012, 1, 3), dt.date.today())) for s in EXTRA}
    assert {s: n for s, (n, _) in stored.items()} == want
    assert all(n == distinct for n, distinct in stored.values()), "duplicated candles"
    # the first moment after which every request that started was answered 200
    late_bad = [r[0] for r in results if r[0] > up_at and r[2] != 200]
    recovered = (max(late_bad) - up_at) if late_bad else 0.0
    how = (f"raised {bf['error'].__class__.__name__}" if "error" in bf
           else f"ended {bf['result']['status']}")
    survived(f"{len(results)} requests: {len(before)} before the stop all 200; "
             f"{len(during)} during the {restart_at - stopped_at:.1f} s outage all 503 JSON "
             f"({len(quick)} of the {len(after_noticed)} reads after the first wait ran out "
             f"refused within 1 s); "
             f"slowest answer {max(r[4] for r in results):.2f} s (none hung); every request "
             f"started {recovered:.1f} s after the restart on was 200; the backfill in flight "
             f"({at_stop} candles stored when PostgreSQL stopped) {how}, {stale} run marked "
             f"stale; the next run stored all {sum(want.values())} candles of {len(EXTRA)} "
             f"symbols, 0 duplicates")


def _up_pids(up) -> dict[str, int]:
    import psutil
    out = {}
    for c in psutil.Process(up.pid).children():
        cmd = " ".join(c.cmdline())
        for role in ("serve", "worker", "scheduler"):
            if f" {role}" in cmd:
                out[role] = c.pid
    return out


def test_redis_stopped_keeps_data_served_and_opens_an_alert(own_services, tmp_path, survived):
    """`appliance up` (web, worker, scheduler as real processes) on a Redis of
    its own that is stopped for a while, then started again."""
    import requests

    from .helpers import ADMIN, cli, free_port, kill_group, wait_until
    d, pg, rd = own_services
    port = free_port()
    # heartbeats come every 5 s: allow 30 s so that a late one is not "stopped"
    path, rt = _setup(tmp_path, pg, rd, server={"bind": f"127.0.0.1:{port}", "workers": 1,
                                                "admin_token": "test-admin-token-0123456789",
                                                "secret_key": "test-secret"},
                      alerts={"scheduler_heartbeat_max_seconds": 30})
    base = f"http://127.0.0.1:{port}"
    hist = f"{base}/api/v1/historical/AAPL?start=2026-01-02"
    up = cli(path, "up", "--no-initial-backfill")

    def health():
        try:
            return requests.get(f"{base}/health", timeout=5).json()
        except (requests.RequestException, ValueError):
            return {}

    def all_running():
        h = health()
        return h if h.get("scheduler_running") and h.get("worker_alive") else None

    try:
        wait_until(all_running, 90, "web, worker and scheduler up")
        services.stop_embedded_redis(d)
        down_at = time.monotonic()
        served, slowest = 0, 0.0
        while time.monotonic() - down_at < 4.0:
            t0 = time.monotonic()
            r = requests.get(hist, timeout=5)
            slowest = max(slowest, time.monotonic() - t0)
            assert r.status_code == 200 and r.json()["count"] > 100, (r.status_code, r.text[:200])
            served += 1
        h = requests.get(f"{base}/health", timeout=5)
        body = h.json()
        assert h.status_code == 200
        assert (body["status"], body["redis"], body["scheduler_running"]) == \
            ("degraded", "error", False), body
        # work cannot be queued without Redis: a clean JSON refusal, not a 500 or a hang
        r = requests.post(f"{base}/api/v1/backfill", json={}, headers=ADMIN, timeout=10)
        assert r.status_code == 503 and "error" in r.json(), (r.status_code, r.text[:200])
        now = dt.datetime.now(dt.UTC)
        alerts.evaluate(rt, now=now, notify=False)
        alerts.evaluate(rt, now=now + dt.timedelta(seconds=121), notify=False)
        # open now, whoever opened it: this evaluation or the web server's
        # watchdog, which evaluates the same rules when the alerts job is silent
        with rt.conn() as conn:
            status, msg = conn.execute(
                "SELECT status, message FROM alerts WHERE key = 'scheduler_stopped' "
                "ORDER BY id DESC LIMIT 1").fetchone()
        assert status == "open", status
        assert "Redis is unreachable" in msg
        outage = time.monotonic() - down_at
        services.embedded_redis(d)
        back_at = time.monotonic()
        wait_until(all_running, 60, "the worker and scheduler heartbeats after Redis came back")

        def fresh_beats():  # both beat again since Redis came back
            try:
                ages = [rt.heartbeat_age(role) for role in ("scheduler", "worker")]
            except Exception:  # noqa: BLE001 - the client reconnects
                return False
            since = time.monotonic() - back_at
            return all(a is not None and a < since for a in ages)
        wait_until(fresh_beats, 60, "fresh worker and scheduler heartbeats")
        resumed = time.monotonic() - back_at
        # the worker takes work again
        r = requests.post(f"{base}/api/v1/backfill", json={}, headers=ADMIN, timeout=10)
        assert r.status_code == 202, (r.status_code, r.text[:300])
        run_id = r.json()["job_id"]

        def finished():
            with rt.conn() as conn:
                st = conn.execute("SELECT status FROM job_runs WHERE id = %s",
                                  (run_id,)).fetchone()[0]
            return st if st in ("ok", "partial", "failed") else None
        assert wait_until(finished, 60, "the backfill queued after Redis came back") == "ok"
        alerts.evaluate(rt, now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=200),
                        notify=False)
        # resolved now, whoever resolved it: this evaluation or the web server's
        # watchdog (the alerts job may not have run since Redis came back)
        with rt.conn() as conn:
            status = conn.execute("SELECT status FROM alerts WHERE key = 'scheduler_stopped' "
                                  "ORDER BY id DESC LIMIT 1").fetchone()[0]
        assert status == "resolved", status
        with rt.conn() as conn:
            # the refused request left no run waiting forever in 'queued'
            stuck = conn.execute("SELECT id FROM job_runs WHERE status IN ('queued', 'running')"
                                 ).fetchall()
            assert stuck == [], stuck
            restarts = conn.execute("SELECT count(*) FROM events WHERE kind = 'process'"
                                    ).fetchone()[0]
        assert up.poll() is None
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.communicate(timeout=60)
        except Exception:  # noqa: BLE001
            kill_group(up)
        rt.close()
    survived(f"Redis down {outage:.1f} s: {served} /api/v1/historical requests all 200 from "
             f"PostgreSQL (slowest {slowest:.2f} s), /health degraded with scheduler_running "
             f"false, POST /api/v1/backfill a 503 JSON error, alert scheduler_stopped opened; "
             f"Redis back: fresh worker and scheduler heartbeats within {resumed:.1f} s "
             f"({restarts} supervised restarts), a queued backfill ran ok, the alert resolved")
