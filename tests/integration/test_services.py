"""The embedded services and `appliance up`, as real processes."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psycopg
import pytest
import yaml

from appliance.runtime import services
from tests.support import free_port, wait_until


@pytest.fixture
def short_dir():
    import shutil
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="appl-s-", dir="/tmp"))
    yield d
    services.stop_embedded_redis(d)
    services.stop_embedded_postgres(d)
    shutil.rmtree(d, ignore_errors=True)


def test_embedded_postgres_keeps_its_data_across_restarts(short_dir):
    url = services.embedded_postgres(short_dir)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE kept (x int)")
        c.execute("INSERT INTO kept VALUES (42)")
    services.stop_embedded_postgres(short_dir)
    url = services.embedded_postgres(short_dir)
    with psycopg.connect(url) as c:
        assert c.execute("SELECT x FROM kept").fetchone() == (42,)


def test_embedded_postgres_recovers_after_being_killed(short_dir):
    services.embedded_postgres(short_dir)
    pid = int((short_dir / "pg" / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            return True
    wait_until(gone, 10, "the killed postmaster to be gone", 0.05)
    assert (short_dir / "pg" / "postmaster.pid").exists()  # stale pid file left behind
    url = services.embedded_postgres(short_dir)
    with psycopg.connect(url) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_embedded_redis_keeps_its_data_across_restarts(short_dir):
    import redis
    url = services.embedded_redis(short_dir)
    redis.Redis.from_url(url).set("k", "v")
    services.stop_embedded_redis(short_dir)
    url = services.embedded_redis(short_dir)
    assert redis.Redis.from_url(url).get("k") == b"v"


def _write_cfg(d: Path, port: int, **extra) -> Path:
    cfg = {"data_dir": str(d / "var"), "server": {"bind": f"127.0.0.1:{port}", "workers": 1},
           "symbols": ["AAPL", "MSFT"], "history": {"start": "2025-06-02"},
           "backup": {"path": str(d / "backups")}, **extra}
    p = d / "appliance.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _get(url: str, timeout: float = 2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def test_serve_refuses_a_port_in_use_with_a_clear_message(short_dir):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        cfg = _write_cfg(short_dir, port)
        r = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(cfg), "up"],
                           capture_output=True, text=True, timeout=60)
    finally:
        s.close()
    assert r.returncode == 1
    assert f"server.bind 127.0.0.1:{port} is already in use" in r.stderr
    assert "Traceback" not in r.stderr


def test_up_serves_with_embedded_services_and_stops_cleanly_on_sigterm(short_dir):
    port = free_port()
    cfg = _write_cfg(short_dir, port)
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(cfg), "up"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def health_with_data():
            try:
                body = _get(f"http://127.0.0.1:{port}/health")[1]
            except OSError:
                return None
            return body if body.get("latest_data") else None
        body = wait_until(health_with_data, 90, "/health with the first stored data", 0.5)
        assert body["database"] == "ok" and body["redis"] == "ok"
        assert body["latest_data"] is not None, "the initial backfill did not store data"
        # latest_data appears with the first stored symbol; the initial
        # backfill stores the second one moments later
        wait_until(lambda: _get(f"http://127.0.0.1:{port}/api/v1/status")[1]["database"]
                   ["symbols_available"] == 2, 60, "both symbols stored", 0.5)
        body = wait_until(lambda: (lambda b: b if b.get("processes") is not None else None)(
            _get(f"http://127.0.0.1:{port}/health")[1]), 30, "/health listing the processes", 1)
        assert {r: p["state"] for r, p in body["processes"].items()} == \
            {"serve": "running", "worker": "running", "scheduler": "running"}
        # without systemd the log, children's lines included, is in data_dir
        log_file = short_dir / "var" / "log" / "appliance.log"
        wait_until(lambda: "appliance up in" in log_file.read_text(), 60,
                   "'appliance up in' in the log file", 0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert "appliance stopped" in out
    logged = log_file.read_text()
    assert "appliance up in" in logged and "Booting worker" in logged
    # the embedded servers stopped with it
    assert services._postmaster_info(short_dir / "var" / "pg") is None
    assert not services._redis_alive(f"unix://{short_dir}/var/redis/redis.sock")


def _pid_of(pidfile: Path) -> int:
    return int(pidfile.read_text().split()[0])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        return True


def test_up_starts_again_an_embedded_server_that_was_killed_but_not_one_stopped(short_dir):
    """`make up`'s embedded PostgreSQL and Redis killed (as the OOM killer
    would) while the appliance runs: `up` finds them dead and starts them
    again, the data as it was; one stopped on purpose stays stopped."""
    from appliance.cli.supervisor import WATCH_S
    port = free_port()
    cfg = _write_cfg(short_dir, port)
    var = short_dir / "var"
    log_file = var / "log" / "appliance.log"
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(cfg), "up"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def health(**want):
        try:
            body = _get(f"{base}/health", timeout=5)[1]
        except (OSError, ValueError):
            return None
        return body if all(body.get(k) == v for k, v in want.items()) else None

    def bars() -> list:
        return _get(f"{base}/api/v1/historical/AAPL?start=2025-06-02", timeout=5)[1]["data"]

    try:
        wait_until(lambda: (h := health(database="ok", redis="ok")) and h.get("latest_data"),
                   90, "/health with the first stored data", 0.5)
        wait_until(lambda: len(bars()) > 0 or None, 60, "AAPL's bars served", 0.5)
        before = bars()

        pg_pid = _pid_of(var / "pg" / "postmaster.pid")
        os.kill(pg_pid, signal.SIGKILL)
        wait_until(lambda: _gone(pg_pid), 10, "the killed postmaster to be gone", 0.05)
        wait_until(lambda: "embedded PostgreSQL started again" in log_file.read_text(), 60,
                   "up to start PostgreSQL again", 0.5)
        assert "embedded PostgreSQL has died" in log_file.read_text()
        assert _pid_of(var / "pg" / "postmaster.pid") != pg_pid
        wait_until(lambda: health(database="ok", redis="ok"), 30, "/health ok again", 0.5)
        assert bars() == before  # nothing lost, served again

        rd_pid = _pid_of(var / "redis" / "redis.pid")
        os.kill(rd_pid, signal.SIGKILL)
        wait_until(lambda: "embedded Redis started again" in log_file.read_text(), 60,
                   "up to start Redis again", 0.5)
        wait_until(lambda: health(database="ok", redis="ok"), 30, "/health ok again", 0.5)
        assert _pid_of(var / "redis" / "redis.pid") != rd_pid

        with psycopg.connect(services.embedded_postgres(var, start=False)) as c:
            events = [r[0] for r in c.execute(
                "SELECT message FROM events WHERE kind = 'service' ORDER BY id")]
        assert [e.split(";")[0] for e in events] == ["embedded PostgreSQL had died",
                                                    "embedded Redis had died"], events

        # stopped on purpose (its pid file removed): left stopped, by up and by
        # its children (a worker restarted meanwhile attaches, never starts one)
        import psutil
        services.stop_embedded_redis(var)
        redis_url = f"unix://{var}/redis/redis.sock"
        assert not services._redis_alive(redis_url), log_file.read_text()[-3000:]
        restarts = log_file.read_text().count("restarted ")
        for child in psutil.Process(proc.pid).children():  # the worker, if it is up now
            try:
                if " worker" in " ".join(child.cmdline()):
                    child.kill()
            except psutil.NoSuchProcess:
                pass  # it lost Redis and is gone already: up restarts it anyway
        wait_until(lambda: log_file.read_text().count("restarted ") > restarts, 30,
                   "up to restart a child while Redis is stopped", 0.2)
        import time
        time.sleep(3 * WATCH_S)
        assert not services._redis_alive(redis_url), log_file.read_text()[-3000:]
        assert log_file.read_text().count("embedded Redis started again") == 1
        # and says so, once: nothing works without it until up is started again
        said = "embedded Redis was stopped (not killed: it removed its pid file)"
        assert log_file.read_text().count(said) == 1, log_file.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert services._postmaster_info(var / "pg") is None


def test_up_gives_up_on_a_child_that_keeps_failing_at_start_and_says_why(short_dir):
    # the web server's worker class cannot be imported: the defect a missing
    # runtime dependency caused (gunicorn's gevent worker without `packaging`)
    shadow = short_dir / "shadow"
    shadow.mkdir()
    (shadow / "gevent.py").write_text("raise ImportError('gevent is broken in this test')\n")
    port = free_port()
    cfg = _write_cfg(short_dir, port)
    env = {**os.environ, "PYTHONPATH": str(shadow)}
    r = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(cfg), "up",
                        "--no-initial-backfill"], capture_output=True, text=True, timeout=240,
                       env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "serve exited 5 times in a row" in r.stderr
    tail = r.stderr.split("giving up. Its last error lines:", 1)[1]
    assert "gevent is broken in this test" in tail
    assert "appliance up in" not in r.stderr, "up reported success while serve failed"
    assert "appliance stopped: a process would not start" in r.stderr
    assert services._postmaster_info(short_dir / "var" / "pg") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="pgserver's root path: needs root")
def test_as_root_the_embedded_postgres_opens_no_folder_to_reading(tmp_path):
    """As root, pgserver runs PostgreSQL as its own user and used to chmod every
    folder above the data folder (and above its binaries) g+rx,o+rx. Now the
    data folder keeps 0700, and var/ and the folders above gain only the search
    bits the server's user needs to reach it (g+x,o+x, 0711: nothing becomes
    listable or readable)."""
    import shutil
    import tempfile
    parent = Path(tempfile.mkdtemp(prefix="appl-root-", dir="/tmp"))
    var = parent / "var"
    try:
        parent.chmod(0o700)
        var.mkdir(mode=0o700)
        services.embedded_postgres(var)
        modes = {p: p.stat().st_mode & 0o777 for p in (parent, var, var / "pg")}
        assert modes[var / "pg"] == 0o700, oct(modes[var / "pg"])
        for p in (parent, var):
            assert modes[p] in (0o700, 0o711), f"{p}: {oct(modes[p])}"
        with psycopg.connect(services.embedded_postgres(var, start=False)) as conn:
            # a server process loads a library from the server's own folders
            conn.execute("DO $$ BEGIN PERFORM 1; END $$")
        var.chmod(0o700)  # as secure_dir does at the next start
        services.stop_embedded_postgres(var)
        assert services._postmaster_info(var / "pg") is None  # it stopped
    finally:
        services.stop_embedded_postgres(var)
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root makes the user PostgreSQL runs as")
def test_the_server_user_is_made_with_useradd_from_sbin_when_path_lacks_it(monkeypatch):
    """``su`` without ``-`` leaves /usr/sbin off PATH: the embedded PostgreSQL
    could not start as root ("No such file or directory: 'useradd'")."""
    import pwd
    name = f"apptest{os.getpid() % 100000}"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    try:
        with pytest.raises(services.ServiceError) as e:
            services.ensure_server_user(name, sbin=())
        assert f"useradd -s /bin/bash {name}" in str(e.value)
        services.ensure_server_user(name)
        assert pwd.getpwnam(name).pw_shell == "/bin/bash"
        services.ensure_server_user(name)  # there already: nothing to do
    finally:
        subprocess.run(["/usr/sbin/userdel", name], capture_output=True)
