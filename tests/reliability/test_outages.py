"""PostgreSQL restarted and Redis stopped while the appliance serves: errors
only during the outage, never a hang, recovery right after."""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from appliance import alerts, db, services
from appliance.jobs import backfill, runs
from appliance.runtime import Runtime
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


def _get(url: str, timeout: float = 8.0):
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    return status, json.loads(body or b"null"), time.monotonic() - t0


def _setup(tmp_path, pg, rd):
    path = write_config(tmp_path / "appliance.yaml", pg.replace("postgresql://postgres:@", "postgresql://postgres@"), rd,
                        history={"start": "2026-01-02", "lookback_sessions": 5},
                        alerts={"scheduler_heartbeat_max_seconds": 5})
    rt = Runtime.from_path(path)
    rt.open()
    assert runs.execute(rt, "backfill", runs.manual_slot(), backfill.run)["status"] == "ok"
    return path, rt


def test_postgres_restarted_while_serving(own_services, tmp_path):
    d, pg, rd = own_services
    path, rt = _setup(tmp_path, pg, rd)
    srv, base = _serve(create_app(runtime=rt))
    hist = f"{base}/api/v1/historical/AAPL?start=2026-01-02"
    results: list = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            for url in (hist, f"{base}/health"):
                results.append((time.monotonic(), url, *_get(url)))
            time.sleep(0.02)

    try:
        with cf.ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(hammer) for _ in range(4)]
            time.sleep(1.0)
            down_at = time.monotonic()
            services.stop_embedded_postgres(d)
            stopped_at = time.monotonic()
            time.sleep(2.0)
            # a backfill during the outage fails cleanly (recorded once PostgreSQL is back)
            with pytest.raises(Exception):
                runs.execute(rt, "backfill", runs.manual_slot(), backfill.run)
            restart_at = time.monotonic()
            services.embedded_postgres(d)
            up_at = time.monotonic()
            time.sleep(6.0)
            stop.set()
            for f in futs:
                f.result()
    finally:
        srv.shutdown()
    before = [r for r in results if r[0] + r[4] < down_at]
    # requests that started after the server was gone and ended before it was back
    # (each entry: start time, url, status, body, seconds taken)
    during = [r for r in results if r[0] > stopped_at + 0.2 and r[0] + r[4] < restart_at]
    after = [r for r in results if r[0] > up_at + 5.0]  # started 5 s after the restart
    assert before and during and after
    assert all(r[2] == 200 for r in before), [r[3].get("reasons") for r in before if r[2] != 200][:2]
    # during the outage: JSON errors, 503, answered promptly
    for _, url, status, body, took in during:
        assert status == 503, (url, status, body)
        assert ("error" in body) if "/historical/" in url else body["status"] == "unhealthy"
    assert max(r[4] for r in results) < 6.0, "a request hung"
    # recovered within 5 s of PostgreSQL being back
    assert all(r[2] == 200 for r in after), [r[1:4] for r in after if r[2] != 200][:3]
    res = runs.execute(rt, "backfill", runs.manual_slot(), backfill.run)
    assert res["status"] == "ok"
    rt.close()


def test_redis_stopped_keeps_data_served_and_opens_an_alert(own_services, tmp_path):
    d, pg, rd = own_services
    path, rt = _setup(tmp_path, pg, rd)
    app = create_app(runtime=rt)
    c = app.test_client()
    rt.heartbeat("scheduler", ttl=60)
    rt.heartbeat("worker", ttl=60)
    assert c.get("/health").get_json()["scheduler_running"] is True
    services.stop_embedded_redis(d)
    try:
        t0 = time.monotonic()
        r = c.get("/api/v1/historical/AAPL?start=2026-01-02")
        assert r.status_code == 200 and r.get_json()["count"] > 100
        h = c.get("/health")
        assert h.status_code == 200
        body = h.get_json()
        assert (body["status"], body["redis"], body["scheduler_running"]) == \
            ("degraded", "error", False)
        assert time.monotonic() - t0 < 5
        now = dt.datetime.now(dt.timezone.utc)
        alerts.evaluate(rt, now=now)
        opened = alerts.evaluate(rt, now=now + dt.timedelta(seconds=121))["opened"]
        assert "scheduler_stopped" in opened
        with rt.conn() as conn:
            msg = conn.execute("SELECT message FROM alerts WHERE key = 'scheduler_stopped'"
                               ).fetchone()[0]
        assert "Redis is unreachable" in msg
    finally:
        services.embedded_redis(d)
    rt.heartbeat("scheduler", ttl=60)
    time.sleep(0.1)
    body = c.get("/health").get_json()
    assert body["redis"] == "ok" and body["scheduler_running"] is True
    resolved = alerts.evaluate(rt, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=200))
    assert "scheduler_stopped" in resolved["resolved"]
    rt.close()
