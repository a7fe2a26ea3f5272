"""``appliance status``: the terminal view and its exit codes, run as the CLI
against real PostgreSQL and Redis (0 healthy, 1 degraded, 2 unhealthy)."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis as redis_lib
import yaml

from appliance.core import calendar as tcal
from tests.conftest import write_config
from tests.support import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(path, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(path),
                           "status", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture
def web_config(config_factory):
    """A config whose server.bind is a free port (the CLI probes it)."""
    return config_factory(server={"bind": f"127.0.0.1:{free_port()}"})


@contextlib.contextmanager
def serving(path):
    """The real web app for the config at ``path``, on its server.bind."""
    from werkzeug.serving import make_server

    from appliance.runtime.runtime import Runtime
    from appliance.web import create_app
    rt = Runtime.from_path(path)
    rt.open()
    host, _, port = rt.config["server"]["bind"].rpartition(":")
    srv = make_server(host, int(port), create_app(runtime=rt), threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield
    finally:
        srv.shutdown()
        t.join(timeout=10)
        rt.close()


def _current_data(database_url, symbols=("AAPL", "MSFT")):
    """symbol_stats saying every symbol is current and fully validated."""
    import psycopg
    latest = tcal.latest_completed_session("XNYS", dt.datetime.now(dt.UTC))
    with psycopg.connect(database_url, autocommit=True) as conn:
        for s in symbols:
            conn.execute(
                """INSERT INTO symbol_stats (symbol, first_session, last_session, records,
                       validated, gaps, expected_sessions, completeness, mean_score,
                       quality_score)
                   VALUES (%s, '2024-01-02', %s, 500, 500, 0, 500, 1, 1, 1)""", (s, latest))
    return latest


def _heartbeats(redis_url):
    r = redis_lib.Redis.from_url(redis_url)
    now = str(time.time())
    r.set("appliance:heartbeat:scheduler", now)
    r.set("appliance:heartbeat:worker", now)
    r.close()


def test_status_exits_0_when_healthy(web_config, database_url, redis_url):
    latest = _current_data(database_url)
    _heartbeats(redis_url)
    with serving(web_config):
        r = _cli(web_config, "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    body = json.loads(r.stdout)
    assert body["status"] == "healthy" and body["reasons"] == []
    assert body["database"]["latest_data"] == latest.isoformat()
    assert body["database"]["latest_data_sessions_behind"] == 0
    assert body["scheduler"]["running"] is True and body["alerts"] == []
    assert body["web"]["status"] == "ok" and body["web"]["reported"] == "healthy"


def test_status_exits_2_when_the_scheduler_is_down_and_prints_plain_text_when_piped(
        web_config):
    with serving(web_config):
        r = _cli(web_config, "--json")
        plain = _cli(web_config)
    # no scheduler, no data: degraded, and critical (Nagios: a dead scheduler pages as such)
    assert r.returncode == 2, r.stderr
    body = json.loads(r.stdout)
    assert body["status"] == "degraded" and body["database"]["status"] == "ok"
    assert body["severity"] == "critical"
    assert "scheduler not running" in body["reasons"]
    assert plain.returncode == 2
    assert "Market Data Appliance: DEGRADED (critical)" in plain.stdout
    assert "Web        answering at http://127.0.0.1:" in plain.stdout
    assert "Scheduler  STOPPED, worker DOWN" in plain.stdout
    assert "Alerts     0 open" in plain.stdout
    assert "\x1b[" not in plain.stdout           # no colour codes into a pipe


def test_status_exits_2_at_once_when_no_worker_runs(web_config, database_url, redis_url):
    # a worker frozen or gone: its heartbeat stale while the scheduler's is
    # fresh; no job would run, which is critical now, not once worker_down opens
    _current_data(database_url)
    _heartbeats(redis_url)
    r = redis_lib.Redis.from_url(redis_url)
    r.set("appliance:heartbeat:worker", str(time.time() - 3600))
    r.close()
    with serving(web_config):
        res = _cli(web_config, "--json")
        plain = _cli(web_config)
    assert res.returncode == 2, (res.stdout, res.stderr)
    body = json.loads(res.stdout)
    assert body["status"] == "degraded" and body["severity"] == "critical", body
    assert any(x.startswith("no worker running (no heartbeat in the last ") for x in body["reasons"])
    assert body["alerts"] == []  # before worker_down has held for its duration
    assert plain.returncode == 2 and "Scheduler  running, worker DOWN" in plain.stdout


def test_status_lists_open_alerts_and_counts_them_as_degraded(web_config, database_url,
                                                              redis_url):
    import psycopg
    _current_data(database_url)
    _heartbeats(redis_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("""INSERT INTO alerts (key, severity, status, message, opened_at)
                        VALUES ('disk_low_backup', 'warning', 'open',
                                'Low disk space (backups): /mnt/backup: 3.0% free', now())""")
    with serving(web_config):
        plain = _cli(web_config)
    assert plain.returncode == 1, plain.stdout
    assert "warning alert: disk_low_backup" in plain.stdout
    assert "Alerts     1 open" in plain.stdout
    assert "[warning] disk_low_backup: Low disk space (backups): /mnt/backup" in plain.stdout


def test_status_exits_2_when_the_web_server_does_not_answer(web_config, database_url,
                                                            redis_url):
    _current_data(database_url)
    _heartbeats(redis_url)
    r = _cli(web_config, "--json")
    assert r.returncode == 2, r.stderr
    body = json.loads(r.stdout)
    assert body["status"] == "unhealthy" and body["web"]["status"] == "error"
    assert body["reasons"][0].startswith("web server not answering at http://127.0.0.1:")
    plain = _cli(web_config)
    assert plain.returncode == 2
    assert "Web        NOT ANSWERING at http://127.0.0.1:" in plain.stdout


def test_status_exits_2_when_postgresql_is_down(tmp_path, redis_url):
    dead = write_config(tmp_path / "dead.yaml",
                        f"postgresql://postgres@127.0.0.1:{free_port()}/none", redis_url)
    r = _cli(dead, "--json")
    assert r.returncode == 2, r.stderr
    body = json.loads(r.stdout)
    assert body["status"] == "unhealthy" and body["database"]["status"] == "error"
    assert any(x.startswith("database unreachable") for x in body["reasons"])
    plain = _cli(dead)
    assert plain.returncode == 2
    assert "Market Data Appliance: UNHEALTHY" in plain.stdout
    assert "Database   ERROR" in plain.stdout


def test_status_reports_a_stopped_embedded_server_and_does_not_start_it(tmp_path, redis_url):
    """It started the embedded PostgreSQL for itself: the web server saw a
    database meanwhile, and status said 'database ok' during an outage."""
    cfg = write_config(tmp_path / "embedded.yaml", "", redis_url)
    for args in (("--json",), ()):
        r = _cli(cfg, *args)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "embedded PostgreSQL in" in r.stdout and "is not running" in r.stdout, r.stdout
    assert json.loads(_cli(cfg, "--json").stdout)["severity"] == "critical"
    assert not (tmp_path / "var" / "pg" / "postmaster.pid").exists()


def test_status_names_both_embedded_servers_when_both_are_stopped(tmp_path):
    """It named only PostgreSQL: the operator started it and found Redis next."""
    cfg = write_config(tmp_path / "embedded.yaml", "", "")
    r = _cli(cfg)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "embedded PostgreSQL in" in r.stdout and "embedded Redis in" in r.stdout, r.stdout
    assert r.stdout.count("is not running") == 2, r.stdout
    assert not (tmp_path / "var" / "redis" / "redis.pid").exists()


def test_status_still_answers_when_redis_is_down(web_config, tmp_path, database_url):
    _current_data(database_url)
    bind = yaml.safe_load(web_config.read_text())["server"]["bind"]
    cfg = write_config(tmp_path / "noredis.yaml", database_url,
                       f"redis://127.0.0.1:{free_port()}/0", server={"bind": bind})
    with serving(web_config):
        r = _cli(cfg, "--json")
    assert r.returncode == 2, r.stderr  # the scheduler's state unknown: critical
    body = json.loads(r.stdout)
    assert body["status"] == "degraded"
    why = [x for x in body["reasons"] if x.startswith("redis unreachable: scheduler state unknown")]
    assert why and "Connection refused" in why[0], body["reasons"]  # and says why


def test_watch_refreshes_plain_text_until_interrupted(config_path):
    p = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(config_path),
                          "status", "--watch", "--interval", "0.3"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        seen, deadline = 0, time.monotonic() + 40
        while seen < 3 and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            seen += line.startswith("Market Data Appliance: ")
        assert seen >= 3, p.stderr.read() if p.poll() is not None else "no refreshes"
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=20) == 2  # the last snapshot's status: no web server
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_watch_on_a_terminal_redraws_in_place_with_colour(config_path):
    """On a terminal the view is rich text redrawn in place (cursor moves up and
    overwrites), not an ever-growing scroll."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"}
    env.pop("NO_COLOR", None)
    p = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(config_path),
                          "status", "--watch", "--interval", "0.3"], stdin=slave, stdout=slave,
                         stderr=subprocess.PIPE, cwd=ROOT, env=env, start_new_session=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and out.count(b"Market Data Appliance: ") < 3:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        assert out.count(b"Market Data Appliance: ") >= 3, (out[-2000:], p.poll())
        assert b"\x1b[" in out                     # colour / cursor control
        assert b"\x1b[1A" in out or b"\x1b[2K" in out  # moves up / erases: redrawn in place
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(timeout=20) == 2
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)


@pytest.mark.parametrize("status,code", [("healthy", 0), ("degraded", 1), ("unhealthy", 2)])
def test_the_health_gauge_numbers_each_status(status, code):
    from appliance.alerts import health
    assert health.status_number(status) == code
