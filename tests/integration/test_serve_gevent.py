"""``appliance serve`` with gevent workers: a request that waits on PostgreSQL
must leave the other requests of the same worker running.

psycopg 3 decides how it waits for the server when it is first imported; if
that happens in the gunicorn master, before the worker's gevent patching, it
waits in C with a plain poll() and the whole worker stops until the query
returns. Here one request is held inside PostgreSQL by a table lock, and a
second request to the same (single) worker must still be answered."""
from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading

import psycopg
import pytest

from tests.support import free_port, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _answers(port: int, path: str) -> bool:
    try:
        return _get(port, path, timeout=2)[0] == 200
    except OSError:
        return False


@pytest.fixture
def gevent_server(config_factory, procs, tmp_path):
    port = free_port()
    path = config_factory(server={"bind": f"127.0.0.1:{port}", "workers": 1,
                                  "worker_class": "gevent"})
    log = open(tmp_path / "serve.log", "w+")
    p = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(path), "serve"],
                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    procs.append(p)
    wait_until(lambda: _answers(port, "/api/v1/openapi.json") or p.poll() is not None, 60,
                "the web server to answer")
    assert p.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
    yield port
    p.terminate()
    p.wait(timeout=30)


def test_a_request_waiting_on_postgres_does_not_stop_the_gevent_worker(gevent_server,
                                                                       database_url):
    port = gevent_server
    held: dict = {}
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE market_data IN ACCESS EXCLUSIVE MODE")

        def slow():
            held["answer"] = _get(port, "/api/v1/historical/AAPL", timeout=60)

        t = threading.Thread(target=slow, daemon=True)
        t.start()
        with psycopg.connect(database_url, autocommit=True) as watch:
            wait_until(lambda: watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'").fetchone()[0] > 0, 30,
                "the historical request to wait for the table lock")
        # the same worker answers another request while that one waits
        status, body = _get(port, "/api/v1/openapi.json", timeout=10)
        assert status == 200
        assert b'"openapi"' in body
        assert t.is_alive() and "answer" not in held, "the locked request should still wait"
        locker.rollback()  # releases the lock
    t.join(timeout=30)
    assert held["answer"][0] == 200


def test_psycopg_imported_before_the_gevent_patch_is_switched_to_gevent_waiting():
    """The worker-side guard: some import reached psycopg before gevent patched
    the process; the worker corrects psycopg's wait function at start."""
    code = (
        "import psycopg, psycopg.waiting as w\n"
        "assert w.wait is w.wait_c\n"
        "from gevent import monkey; monkey.patch_all()\n"
        "from appliance.web.server import cooperative_psycopg\n"
        "assert cooperative_psycopg() is True\n"
        "assert w.wait is not w.wait_c\n"
        "assert cooperative_psycopg() is False\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_the_worker_builds_the_trading_calendar_before_serving(runtime, monkeypatch):
    """Building the calendar is seconds of CPU: a gevent worker does it at
    start, not in the first /health or alert evaluation (which would hold
    every other request of that worker meanwhile)."""
    from appliance.core import calendar
    from appliance.web import create_app
    from appliance.web.server import warm_up
    monkeypatch.setattr(calendar, "_cache", {})
    app = create_app(runtime=runtime)
    assert runtime.config["calendar"] not in calendar._cache
    warm_up(app)
    assert runtime.config["calendar"] in calendar._cache


def test_each_instance_has_its_own_gunicorn_control_socket(config_factory, tmp_path):
    """Not the shared ``~/.gunicorn/gunicorn.ctl``: one per data_dir (or none
    when that path is too long for a unix socket)."""
    from appliance.config.loader import load_config
    from appliance.web.server import gunicorn_options
    cfg = load_config(config_factory(data_dir=str(tmp_path / "v")))
    opts = gunicorn_options(cfg)
    assert opts["control_socket"] == str(tmp_path / "v" / "gunicorn.ctl")
    assert opts["control_socket_mode"] == 0o600
    deep = tmp_path / ("d" * 120)
    opts = gunicorn_options(load_config(config_factory(data_dir=str(deep))))
    assert opts.get("control_socket_disable") is True and "control_socket" not in opts
