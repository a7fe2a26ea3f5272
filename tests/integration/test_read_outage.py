"""An unreachable database answers API reads at once: once the primary pool
has waited out its acquire timeout while failing to connect, reads get their
503 without waiting (``store.pool.Outage``), one read every ``PROBE_S`` still
waits ``PROBE_WAIT_S`` (the probe), and reads come back as soon as the
database does.

The database is the test's real PostgreSQL, reached through a TCP forwarder
on loopback that the test shuts (connections cut, the port refusing) and
opens again on the same port."""
from __future__ import annotations

import socket
import threading
import time
from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict

from appliance.runtime.runtime import Runtime
from appliance.store import pool as db
from appliance.web import create_app
from tests.conftest import write_config
from tests.support import wait_until


class Forwarder:
    """127.0.0.1:port -> the PostgreSQL of ``url`` (TCP or its Unix socket)."""

    def __init__(self, url: str):
        p = conninfo_to_dict(url)
        host, port = p.get("host") or "127.0.0.1", int(p.get("port") or 5432)
        self.target = (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}") if host.startswith("/") \
            else (socket.AF_INET, (host, port))
        self.port = 0
        self.socks: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.lock = threading.Lock()

    def open(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        self.port = lst.getsockname()[1]
        lst.listen(16)
        self.listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            server = socket.socket(self.target[0])
            server.connect(self.target[1])
            with self.lock:
                self.socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def shut(self) -> None:
        """Every connection cut and the port refusing new ones."""
        assert self.listener is not None
        try:  # wakes the accepting thread: a close alone leaves it listening
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def _through(url: str, port: int) -> str:
    p = conninfo_to_dict(url)
    pw = (":" + quote(p["password"])) if p.get("password") else ""
    return f"postgresql://{quote(p.get('user') or 'postgres')}{pw}@127.0.0.1:{port}/{p['dbname']}"


@pytest.fixture
def forwarded(tmp_path, database_url, redis_url):
    fwd = Forwarder(database_url)
    fwd.open()
    path = write_config(tmp_path / "appliance.yaml", _through(database_url, fwd.port), redis_url)
    rt = Runtime.from_path(path)
    rt.open()
    yield fwd, rt
    rt.close()
    try:
        fwd.shut()
    except (AssertionError, OSError):
        pass


def _timed_get(client, url: str, headers: dict):
    t = time.monotonic()
    r = client.get(url, headers=headers)
    return r.status_code, r.get_json(), time.monotonic() - t


def test_reads_are_refused_at_once_while_the_database_is_unreachable(forwarded, admin_headers):
    fwd, rt = forwarded
    client = create_app(runtime=rt).test_client()
    url = "/api/v1/historical/AAPL?start=2024-01-02&end=2024-01-10"
    assert client.get(url, headers=admin_headers).status_code == 200

    fwd.shut()
    # the pooled connection is cut: the first read fails on it, and the reads
    # after it wait out the pool's acquire timeout while it cannot connect
    results = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        results.append(_timed_get(client, url, admin_headers))
        if rt._outage.since is not None:
            break
    assert rt._outage.since is not None, f"the outage was never noticed: {results[-3:]}"
    assert all(s == 503 for s, _, _ in results), results[-3:]
    assert results[-1][2] >= 4.0, "the outage is known once a wait ran out"

    # known: refused at once, saying so; one read every PROBE_S still waits
    fast = []
    for _ in range(20):
        status, body, took = _timed_get(client, url, admin_headers)
        assert status == 503 and body["error"]["code"] == "database_unavailable", body
        fast.append(took)
    assert max(fast) < 1.0, fast
    time.sleep(db.PROBE_S)
    status, _, took = _timed_get(client, url, admin_headers)  # the probe: a short wait
    assert status == 503 and db.PROBE_WAIT_S * 0.9 <= took < db.PROBE_WAIT_S + 1.0, took
    status, _, took = _timed_get(client, url, admin_headers)
    assert status == 503 and took < 1.0, took

    # back after some 10 s: the pool tries to connect every second (not 1, 2,
    # 4, 8, 16 s after the cut: its next try would be 5 s away), and reads answer
    fwd.open()
    back = time.monotonic()
    wait_until(lambda: client.get(url, headers=admin_headers).status_code == 200, 30,
               "reads to answer once the database is reachable again", 0.1)
    assert time.monotonic() - back < 3.5, time.monotonic() - back
    assert rt._outage.since is None
    assert client.get(url, headers=admin_headers).status_code == 200


def test_a_busy_pool_is_not_taken_for_an_outage(forwarded):
    """Every connection busy: the wait runs out (PoolTimeout) but the pool's
    connections never failed, so the next read waits as usual."""
    _fwd, rt = forwarded
    conns = []
    try:
        for _ in range(rt.pool.max_size):
            cm = rt.pool.connection()
            conns.append((cm, cm.__enter__()))
        from psycopg_pool import PoolTimeout
        with pytest.raises(PoolTimeout):
            with rt.primary_read_conn():
                pass
        assert rt._outage.since is None
    finally:
        for cm, _c in conns:
            cm.__exit__(None, None, None)
    with rt.primary_read_conn() as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
