"""Cluster traffic over TLS: the appliance on a PostgreSQL that admits TCP
clients by ``hostssl`` only (``sslmode=verify-full``) and a Redis with no
plain port (``rediss://``), its certificates from a throwaway CA.

A backfill runs through RQ (a real ``appliance worker``); the server's own
views then show every connection of the appliance encrypted. A CA that did
not sign the servers' certificates, or a CA file that is not there, is a
clear error naming it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg
import pytest
import redis

from appliance.config.loader import DEFAULTS
from appliance.jobs import queue as queue_mod
from appliance.jobs import runs
from appliance.runtime.runtime import Runtime
from appliance.store import pool as db
from tests import tls_servers
from tests.conftest import write_config
from tests.support import wait_until

pytestmark = pytest.mark.skipif(not tls_servers.available(),
                                reason="needs PostgreSQL 15's initdb and redis-server")

QUIET = {job: "0 0 1 1 *" for job in DEFAULTS["schedules"]}


@pytest.fixture(scope="module")
def servers():
    s = tls_servers.TlsServers().start()
    db.migrate(s.pg_url())
    yield s
    s.close()


def _cli(path, *args, **kw):
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=120, **kw)


def _ssl_of_appliance_connections(s) -> list[tuple]:
    """(application, ssl) of every client connection to market_data but this one."""
    with psycopg.connect(s.pg_url()) as c:
        return c.execute(
            """SELECT a.application_name, s.ssl, s.version FROM pg_stat_activity a
               JOIN pg_stat_ssl s USING (pid)
               WHERE a.datname = 'market_data' AND a.backend_type = 'client backend'
                 AND a.pid <> pg_backend_pid()""").fetchall()


def test_a_backfill_runs_through_rq_with_every_connection_encrypted(servers, tmp_path):
    s = servers
    redis.Redis.from_url(s.redis_url(3)).flushdb()
    path = write_config(tmp_path / "appliance.yaml", s.pg_url(), s.redis_url(3),
                        schedules=QUIET, symbols=["AAPL"], history={"start": "2026-11-02"})
    rt = Runtime.from_path(path)
    rt.open()
    w = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(path),
                          "worker", "--name", "tls-w1"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "APPLIANCE_LOG_LEVEL": "INFO"})
    try:
        run_id = queue_mod.enqueue(rt, "backfill", {})

        def status():
            with rt.conn() as conn:
                return runs.get(conn, run_id)["status"]
        wait_until(lambda: status() in ("ok", "partial", "failed"), 60, "the backfill to end")
        assert status() == "ok"
        with rt.conn() as conn:
            stored = conn.execute("SELECT count(*) FROM market_data WHERE symbol = 'AAPL'"
                                  ).fetchone()[0]
        assert stored > 0
        # the worker and this runtime hold connections: all of them over TLS
        conns = _ssl_of_appliance_connections(s)
        assert len(conns) >= 2, conns
        assert all(ssl for _, ssl, _ in conns), conns
        assert all(v.startswith("TLSv1.") for _, _, v in conns), conns
        # Redis: the worker is a client of the TLS-only server (it has no
        # other port), and a client in clear gets nothing from it
        clients = redis.Redis.from_url(s.redis_url(3)).client_list()
        assert len(clients) >= 3, clients  # the worker's, this runtime's, this one
        assert any(c.get("cmd", "").startswith(("blpop", "bzpopmin", "blmove", "brpoplpush"))
                   or c.get("name") for c in clients), [(c.get("name"), c.get("cmd"))
                                                       for c in clients]
        conf = redis.Redis.from_url(s.redis_url(3)).config_get("*port")
        assert conf["port"] == "0" and conf["tls-port"] == str(s.redis_port), conf
        with pytest.raises(redis.ConnectionError):
            redis.Redis(host="127.0.0.1", port=s.redis_port, socket_timeout=2,
                        socket_connect_timeout=2).ping()
        # and PostgreSQL refuses a connection in clear
        with pytest.raises(psycopg.OperationalError, match="no encryption"):
            psycopg.connect(s.pg_url(sslmode="disable"), connect_timeout=3)
        # the web app (its sessions, limits and health probes) on the same servers
        from appliance.web import create_app
        client = create_app(runtime=rt).test_client()
        health = client.get("/health")
        assert health.status_code == 200, health.get_json()
        assert health.get_json()["database"] == "ok" and health.get_json()["redis"] == "ok"
        # a backup: pg_dump (a tool of its own) connects over TLS too
        res = _cli(path, "backup")
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        w.send_signal(signal.SIGTERM)
        out, _ = w.communicate(timeout=30)
        rt.close()
    assert w.returncode == 0, out


def test_a_ca_that_did_not_sign_the_servers_certificates_is_a_clear_error(servers, tmp_path):
    s = servers
    bad_pg = write_config(tmp_path / "pg.yaml", s.pg_url(ca=s.other_ca_file), s.redis_url(4))
    res = _cli(bad_pg, "--use-file", "migrate")
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: cannot connect to PostgreSQL"), res.stderr
    assert "certificate verify failed" in err
    assert f"sslrootcert={s.other_ca_file}" in err
    assert "Traceback" not in res.stderr

    bad_redis = write_config(tmp_path / "rd.yaml", s.pg_url(), s.redis_url(4, ca=s.other_ca_file))
    res = _cli(bad_redis, "worker", "--burst")
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: cannot connect to Redis"), res.stderr
    assert f"ssl_ca_certs={s.other_ca_file}" in err
    assert "Traceback" not in res.stderr


def test_a_ca_file_that_is_not_there_is_refused_by_name(servers, tmp_path):
    s = servers
    missing = tmp_path / "no-such-ca.crt"
    path = write_config(tmp_path / "appliance.yaml", s.pg_url(ca=missing),
                        s.redis_url(5, ca=missing))
    res = _cli(path, "check-config")
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert f"at $.database.url: sslrootcert={missing}" in out and "does not exist" in out, out
    assert f"at $.redis.url: ssl_ca_certs={missing}" in out, out
    plain = write_config(tmp_path / "plain.yaml", s.pg_url(),
                         f"redis://127.0.0.1:{s.redis_port}/5?ssl_ca_certs={s.ca_file}")
    res = _cli(plain, "check-config")
    assert res.returncode == 1
    assert "given with redis:// (clear text): use rediss://" in res.stdout + res.stderr
