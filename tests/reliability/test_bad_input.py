"""Bad config reloads through every path, and hostile clients: everything is
refused with a clear answer and nothing running changes."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from appliance.cli.main import main as cli_main

from .helpers import ADMIN, cli, free_port, kill_group, wait_until

pytestmark = pytest.mark.reliability


def broken_configs(good: str) -> list[tuple[str, bytes]]:
    """At least 50 broken variants of a valid config file."""
    g = yaml.safe_load(good)
    out: list[tuple[str, bytes]] = []

    def add(name, text):
        out.append((name, text.encode() if isinstance(text, str) else text))

    def with_(**over):
        d = json.loads(json.dumps(g))
        for dotted, v in over.items():
            cur = d
            parts = dotted.split("__")
            for part in parts[:-1]:
                cur = cur.setdefault(part, {})
            cur[parts[-1]] = v
        return yaml.safe_dump(d, sort_keys=False)

    # YAML syntax
    add("unclosed-flow", good + "extra: [a, b\n")
    add("bad-indent", good + "server:\n  bind: x\n   workers: 2\n")
    add("tab", good + "dashboard:\n\trefresh_seconds: 5\n")
    add("unclosed-quote", good + 'calendar: "XNYS\n')
    add("stray-colon", good + "symbols: : :\n")
    add("dup-key", good + "calendar: XNYS\ncalendar: XLON\n")
    add("list-top", "- a\n- b\n")
    add("scalar-top", "just a string\n")
    add("empty", "")
    add("comment-only", "# nothing\n")
    # wrong types and ranges
    for name, over in [
        ("workers-str", {"server__workers": "two"}), ("workers-zero", {"server__workers": 0}),
        ("mount-str", {"backup__require_mount": "maybe"}), ("symbols-int", {"symbols": 5}),
        ("history-list", {"history": []}), ("server-str", {"server": "x"}),
        ("refresh-neg", {"dashboard__refresh_seconds": -1}),
        ("pct-150", {"backup__min_free_pct": 150}), ("gap-zero", {"quality__gap_threshold_pct": 0}),
        ("rpm-zero", {"provider__polygon__requests_per_minute": 0}),
        ("provider-bad", {"provider__name": "bloomberg"}), ("bind-bad", {"server__bind": "localhost"}),
        ("grid-order", {"quality__grid": {"green": 0.5, "yellow": 0.9}}),
        ("rate-order", {"alerts__validation_rate_warn_pct": 10}),
        ("date-bad", {"history__start": "2021-02-30"}), ("date-future", {"history__start": "2999-01-01"}),
        ("symbol-lower", {"symbols": ["aapl"]}), ("symbol-long", {"symbols": ["A" * 20]}),
        ("symbols-empty", {"symbols": []}), ("calendar-bad", {"calendar": "nyse!"}),
    ]:
        add(name, with_(**over))
    # unknown keys
    for i, sect in enumerate(["", "server__", "provider__", "backup__", "alerts__", "quality__",
                              "schedules__", "history__"]):
        add(f"unknown-{i}", with_(**{f"{sect}bogus_key_{i}": 1}))
    # cron
    for i, expr in enumerate(["0 25 * * *", "* * *", "61 * * * *", "0 0 32 * *", "abc",
                              "0 0 * * 8"]):
        add(f"cron-{i}", with_(**{"schedules__backfill": expr}))
    # duplicate symbols
    add("dup-sym-1", with_(symbols=["AAPL", "AAPL"]))
    add("dup-sym-2", with_(symbols=["AAPL", {"symbol": "AAPL", "since": "2024-01-02"}]))
    add("dup-sym-3", with_(symbols=["MSFT", "NVDA", "MSFT"]))
    # missing secrets
    for i, key in enumerate(["server__admin_token", "provider__polygon__api_key",
                             "alerts__email__password", "server__read_token"]):
        add(f"secret-{i}", with_(**{key: "${APPLIANCE_RELIABILITY_UNSET_%d}" % i}))  # noqa: UP031
    # hostile bytes
    add("huge", good + "# " + "x" * (1024 * 1024) + "\n")
    add("non-utf8", good.encode() + b"# caf\xe9\n")
    add("nul", good.encode() + b"calendar: X\x00NYS\n")
    add("deep", good + "deep: " + "[" * 3000 + "]" * 3000 + "\n")
    bomb = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['x'] * 9)}]\n"
                   for p, c in zip([None] + list("abcdefgh"), "abcdefghi", strict=False))
    add("alias-bomb", good + bomb)
    return out


def _errors_name_a_line(text: str, path: Path) -> bool:
    return re.search(re.escape(str(path)) + r":\d+: at \$", text) is not None


def test_fifty_broken_configs_are_refused_by_the_api_and_the_cli(runtime, config_path, app,
                                                                 survived):
    good = config_path.read_text()
    corpus = broken_configs(good)
    assert len(corpus) >= 50
    client = app.test_client()
    sha0 = client.get("/api/v1/config").get_json()["sha256"]
    runner = CliRunner()
    refused_api = refused_cli = 0
    try:
        for name, data in corpus:
            config_path.write_bytes(data)
            r = client.post("/api/v1/config/reload", headers=ADMIN)
            assert r.status_code in (409, 422), (name, r.status_code, r.get_data()[:300])
            msg = r.get_json()["error"]["message"]
            assert _errors_name_a_line(msg, config_path), (name, msg[:300])
            refused_api += 1
            res = runner.invoke(cli_main, ["--config", str(config_path), "reload"])
            assert res.exit_code == 1, (name, res.output[:300])
            assert _errors_name_a_line(res.output, config_path), (name, res.output[:300])
            refused_cli += 1
            assert client.get("/api/v1/config").get_json()["sha256"] == sha0, name
    finally:
        config_path.write_text(good)
    assert refused_api == refused_cli == len(corpus)
    with runtime.conn() as conn:
        by = dict(conn.execute("SELECT source, count(*) FROM config_reloads WHERE NOT ok "
                               "GROUP BY source").fetchall())
    assert by["api"] == len(corpus)
    # the CLI records a refusal when it can still read the broken file's connection
    # settings (not when the YAML itself is unreadable)
    assert by["cli"] >= len(corpus) - 15, by
    survived(f"{len(corpus)} broken files: {refused_api} refused by POST /api/v1/config/reload "
             f"and {refused_cli} by `appliance reload`, each naming PATH:LINE; running config "
             f"sha {sha0[:12]} unchanged; {by['api']} + {by['cli']} refusals recorded")


def test_broken_configs_through_sighup_and_the_console_change_nothing(config_factory, tmp_path,
                                                                      database_url, survived):
    port = free_port()
    path = config_factory(data_dir=str(tmp_path / "var"),
                          server={"bind": f"127.0.0.1:{port}", "workers": 1})
    good = path.read_text()
    up = cli(path, "up", "--no-initial-backfill")
    base = f"http://127.0.0.1:{port}"

    def cfg_sha():
        with urllib.request.urlopen(f"{base}/api/v1/config", timeout=5) as r:
            return json.loads(r.read())["sha256"]

    def child_pids():
        import psutil
        # the supervised children (web, worker, scheduler); their own short-lived
        # forks (an RQ work horse running the every-minute alerts job) come and go
        return sorted(c.pid for c in psutil.Process(up.pid).children(recursive=False))

    try:
        wait_until(lambda: _ok(f"{base}/health"), 60, "appliance up to serve")
        sha0, pids0 = cfg_sha(), child_pids()
        sample = [c for c in broken_configs(good)
                  if c[0] in ("tab", "cron-0", "dup-sym-1", "secret-0", "non-utf8")]
        import requests
        s = requests.Session()
        html = s.get(f"{base}/login", timeout=5).text
        tok = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
        s.post(f"{base}/login", data={"token": "test-admin-token-0123456789", "csrf_token": tok,
                                      "next": "/config"}, timeout=5)
        tok = re.search(r'name="csrf_token" value="([^"]+)"',
                        s.get(f"{base}/config", timeout=5).text).group(1)
        for name, data in sample:
            path.write_bytes(data)
            n0 = _refusals(database_url, "sighup")
            os.kill(up.pid, signal.SIGHUP)
            wait_until(lambda: _refusals(database_url, "sighup") > n0, 20,  # noqa: B023
                       f"the SIGHUP refusal of {name}")
            r = s.post(f"{base}/config/reload", data={"csrf_token": tok},
                       headers={"X-CSRFToken": tok, "HX-Request": "true"}, timeout=10)
            assert "refused" in r.text.lower(), (name, r.status_code, r.text[:300])
            assert str(path) in r.text, name
            assert cfg_sha() == sha0, name
        assert child_pids() == pids0, "a process was restarted"
        assert up.poll() is None
        survived(f"{len(sample)} broken files through SIGHUP to `appliance up` and the console's "
                 f"reload: all {2 * len(sample)} refused naming the file, config sha "
                 f"{sha0[:12]} unchanged, the same {len(pids0)} child PIDs")
    finally:
        path.write_text(good)
        up.send_signal(signal.SIGTERM)
        try:
            up.communicate(timeout=60)
        except Exception:  # noqa: BLE001
            kill_group(up)


def _ok(url) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def _refusals(database_url, source) -> int:
    import psycopg
    with psycopg.connect(database_url) as c:
        return c.execute("SELECT count(*) FROM config_reloads WHERE source = %s AND NOT ok",
                         (source,)).fetchone()[0]


HOSTILE = ["../../etc/passwd", "'; DROP TABLE market_data; --", "<script>alert(1)</script>",
           "AAPL%00", "A" * 5000, "%2e%2e%2f%2e%2e%2fetc"]


def test_hostile_symbols_and_bodies_get_clean_errors(client, admin_headers, runtime, survived):
    for sym in HOSTILE:
        for url in (f"/api/v1/historical/{sym}", f"/api/v1/gaps?symbol={sym}"):
            r = client.get(url)
            assert r.status_code in (400, 404), (url, r.status_code)
            assert "error" in r.get_json()
        r = client.post("/api/v1/backfill", headers=admin_headers, json={"symbols": [sym]})
        assert r.status_code == 400 and "error" in r.get_json()
    big = b"{" + b" " * (10 * 1024 * 1024) + b"}"
    for url in ("/api/v1/backfill", "/api/v1/config/reload", "/api/v1/backups"):
        r = client.post(url, headers={**admin_headers, "Content-Type": "application/json"},
                        data=big)
        assert r.status_code == 413 and r.get_json()["error"]["code"]
    with runtime.conn() as conn:  # nothing was dropped or queued
        assert conn.execute("SELECT count(*) FROM job_runs").fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass('market_data') IS NOT NULL").fetchone()[0]
    survived(f"{len(HOSTILE)} hostile symbols x 3 endpoints answered 400/404 JSON; 3 x 10 MB "
             f"bodies answered 413; 0 jobs queued, market_data still there")


def test_a_thousand_slow_clients_do_not_stop_the_server(config_factory, tmp_path, survived):
    port = free_port()
    path = config_factory(data_dir=str(tmp_path / "var"),
                          server={"bind": f"127.0.0.1:{port}", "workers": 2, "threads": 4})
    srv = cli(path, "serve")
    socks: list[socket.socket] = []
    try:
        wait_until(lambda: _ok(f"http://127.0.0.1:{port}/health"), 60, "the server")
        stop = threading.Event()

        def open_slow(n):
            for _ in range(n):
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=2)
                    s.sendall(b"GET /api/v1/symbols HTTP/1.1\r\nHost: x\r\n")  # never finished
                    socks.append(s)
                except OSError:
                    pass

        threads = [threading.Thread(target=open_slow, args=(100,)) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        opened = len(socks)

        def trickle():  # one more byte now and then keeps each connection alive
            while not stop.is_set():
                for s in list(socks):
                    try:
                        s.send(b"X")
                    except OSError:
                        pass
                stop.wait(1.0)

        threading.Thread(target=trickle, daemon=True).start()
        ok = 0
        t0 = time.monotonic()
        for _ in range(20):
            if _ok(f"http://127.0.0.1:{port}/health"):
                ok += 1
        took = time.monotonic() - t0
        stop.set()
    finally:
        for s in socks:
            s.close()
        srv.send_signal(signal.SIGTERM)
        try:
            srv.communicate(timeout=30)
        except Exception:  # noqa: BLE001
            kill_group(srv)
    assert opened >= 900, f"only {opened} slow connections could be opened"
    assert ok == 20, f"{ok}/20 normal requests answered while {opened} slow clients hung on"
    assert took < 60
    survived(f"{opened} slow clients held sockets open sending a byte a second; a normal "
             f"client got {ok}/20 answers in {took:.1f} s")
