"""The appliance on three hosts: a primary with Redis and the web server, a
streaming replica with workers, and a second worker host.

Three systemd-nspawn hosts (``tests/deploy/cluster.py``) on a private bridge
are deployed with ``ansible-playbook -i <inventory> ansible/site.yml`` and the
groups of ansible/inventory.cluster.example.yml:

    mda-c1 10.77.0.11  db, redis, web (and the scheduler)
    mda-c2 10.77.0.12  db_replica, workers
    mda-c3 10.77.0.13  workers

The fake Polygon listens on the machine's bridge address 10.77.0.1. The tests
run in file order and build on each other (one cluster per module).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from tests.deploy import cluster as clustermod
from tests.deploy import host as hostmod

pytestmark = [pytest.mark.deploy, pytest.mark.cluster, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
NAMES = ["mda-c1", "mda-c2", "mda-c3"]
SOURCE_DIR = "/opt/appliance/src"
VENV = "/opt/appliance/venv"
ENV_FILE = "/etc/appliance/appliance.env"
WORKERS_PER_HOST = 2
SYMBOLS = [f"S{i:03d}" for i in range(300)]
HISTORY_SESSIONS = 20
PAGE_SIZE = 10                  # two aggregate pages per symbol
REQUESTS_PER_MINUTE = 600       # binding: a backfill sends well over 600 requests
API_KEY = "cluster-polygon-key"
ADMIN_TOKEN = "cluster-admin-token-5b2d4f6a8c0e1f3a"
DB_PASSWORD = "7c2e3f9a1c7e5b2d4f6a8c0e1b3d5f7a"
REDIS_PASSWORD = "1a1f8e6c4a2f0d1b3e5c7a9f2d4b6e8c"
#: the cluster CA's certificate on every host (role cluster_tls)
CLUSTER_CA = "/etc/ssl/appliance-cluster/ca.crt"
CHUNKS_MIGRATION = REPO / "appliance" / "store" / "migrations" / "0004_chunks.sql"
SOURCE_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "node_modules", "__pycache__", "*.pyc", "build", "dist",
    "*.egg-info", ".pytest_cache", "tests", "bench", "var", "ansible", ".ansible",
)

_pytest_config = None


def _log(msg: str) -> None:
    line = f"[cluster-journey {time.strftime('%H:%M:%S')}] {msg}"
    plugins = _pytest_config.pluginmanager if _pytest_config is not None else None
    reporter = plugins.get_plugin("terminalreporter") if plugins else None
    capture = plugins.get_plugin("capturemanager") if plugins else None
    if reporter is None or capture is None:
        print(line, flush=True)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Journey:
    cluster: clustermod.Cluster
    fake: object
    truth: object
    workdir: Path
    web: str
    timings: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    group_vars: dict = field(default_factory=dict)
    symbols: list = field(default_factory=lambda: list(SYMBOLS))
    requests_per_minute: int = REQUESTS_PER_MINUTE

    @property
    def primary(self) -> hostmod.Host:
        return self.cluster.hosts[0]

    @property
    def replica(self) -> hostmod.Host:
        return self.cluster.hosts[1]

    def inventory(self) -> dict:
        c = self.cluster
        hosts = {h.name: {"ansible_connection": "community.docker.nsenter",
                          "ansible_nsenter_pid": h.pid,
                          "ansible_python_interpreter": "/usr/bin/python3",
                          "appliance_private_address": c.address(h)} for h in c.hosts}
        n1, n2, n3 = NAMES
        shared = {
            # everything the deploy needs is in the root filesystem already
            "host_apt_update_cache": False,
            "appliance_pip_extra_args": f"--no-index --find-links {clustermod.WHEELHOUSE}",
            "appliance_server_bind": f"{c.addresses[0]}:8000",
            "appliance_worker_count": WORKERS_PER_HOST,
            "appliance_provider": "polygon",
            "appliance_polygon_base_url": self.fake.base_url,
            "appliance_polygon_requests_per_minute": self.requests_per_minute,
            "appliance_polygon_api_key": API_KEY,
            "appliance_history_start": self.state["first"].isoformat(),
            "appliance_symbols": list(self.symbols),
            "appliance_database_max_replica_lag_seconds": 30,
            "appliance_alerts": {"validation_rate_warn_pct": 90,
                                 "validation_rate_critical_pct": 50,
                                 "stale_after_sessions": 1, "disk_free_min_pct": 20,
                                 "backup_max_age_days": 8, "for_seconds": {"replica_lag": 0}},
            "appliance_db_password": DB_PASSWORD,
            "appliance_db_replication_password": "5e2d4f6a8c0e1b3d5f7a9c2e7c2e3f9a",
            "appliance_redis_password": REDIS_PASSWORD,
            "appliance_admin_token": ADMIN_TOKEN,
            "appliance_secret_key": "cluster-secret-key-4b6e8c0a1f8e6c4a2f0d",
        }
        # The shared settings go where ansible/inventory.cluster.example.yml says,
        # group_vars/cluster/main.yml next to the inventory: vars in the inventory
        # file itself rank below the playbook's group_vars/all.yml.
        self.group_vars = {"cluster": shared}
        return {"all": {"children": {"cluster": {
            "hosts": hosts,
            "children": {"db": {"hosts": {n1: None}}, "redis": {"hosts": {n1: None}},
                         "web": {"hosts": {n1: None}}, "db_replica": {"hosts": {n2: None}},
                         "workers": {"hosts": {n2: None, n3: None}}}}}}}

    def deploy(self, label: str) -> subprocess.CompletedProcess:
        inv = self.workdir / "inventory.yml"
        inv.write_text(yaml.safe_dump(self.inventory(), sort_keys=False))
        for group, values in self.group_vars.items():
            d = self.workdir / "group_vars" / group
            d.mkdir(parents=True, exist_ok=True)
            (d / "main.yml").write_text(yaml.safe_dump(values, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env.update(ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_FORCE_COLOR="0", ANSIBLE_DEPRECATION_WARNINGS="0",
                   ANSIBLE_LOCAL_TEMP=str(self.workdir / "ansible-local"),
                   ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks",
                   PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        t0 = time.monotonic()
        p = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(inv), "site.yml"], cwd=ANSIBLE_DIR,
                           env=env, capture_output=True, text=True, timeout=1500)
        self.timings[f"ansible-playbook ({label})"] = time.monotonic() - t0
        (self.workdir / f"ansible-{label}.log").write_text(p.stdout + p.stderr)
        _log(f"ansible-playbook ({label}): exit {p.returncode} in {time.monotonic() - t0:.0f} s")
        return p

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.web + path, timeout=30,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kw)

    def api(self, path: str) -> dict:
        r = self.get(path)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text[:500]}"
        return r.json()

    def candles(self, symbol: str) -> list[dict]:
        start = self.truth.bars[symbol].session[0].astype(dt.date)
        return self.api(f"/api/v1/historical/{symbol}?start={start}&end={dt.date.today()}"
                        f"&include_invalid=true&adjusted=false")["data"]

    def reads(self) -> dict[str, float]:
        """appliance_db_reads_total by target, from /metrics."""
        text = self.get("/metrics").text
        return {m.group(1): float(m.group(2)) for m in re.finditer(
            r'^appliance_db_reads_total\{target="(\w+)"\}\s+([\d.e+]+)', text, re.M)}

    def wait(self, what: str, predicate, timeout: float = 120, every: float = 1):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(every)

    def journal(self, h: hostmod.Host, lines: int = 60) -> str:
        return h.sh(f"journalctl --no-pager -n {lines} -u 'appliance-*' -u postgresql@15-main "
                    "-u postgresql", check=False).stdout


@pytest.fixture(scope="module")
def journey(tmp_path_factory, pytestconfig):
    global _pytest_config
    _pytest_config = pytestconfig
    if os.environ.get("APPLIANCE_TEST_CLUSTER") != "1":
        pytest.skip("the three-host journey runs only when asked (APPLIANCE_TEST_CLUSTER=1): "
                    "it takes longer than the rest of the deploy tests")
    reason = hostmod.unavailable()
    if reason:
        pytest.skip(reason)
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip(f"ansible-playbook is not installed in {BIN} (pip install '.[deploy]')")
    from appliance.core import calendar as tcal
    from tests.fakes.polygon_fake import PolygonFake, make_truth

    t_start = time.monotonic()
    workdir = tmp_path_factory.mktemp("cluster-journey")
    latest = tcal.latest_completed_session("XNYS", dt.datetime.now(dt.UTC))
    first = tcal.previous_sessions("XNYS", latest, HISTORY_SESSIONS)[0].astype(dt.date)
    truth = make_truth(SYMBOLS, first, latest, seed=17)
    c = clustermod.Cluster(workdir, NAMES)
    fake = None
    timings: dict = {}
    try:
        t0 = time.monotonic()
        tarball = clustermod.cluster_rootfs(REPO, SOURCE_IGNORE, log=_log)
        timings["root filesystem (cache)"] = time.monotonic() - t0
        t0 = time.monotonic()
        c.start(tarball, REPO, SOURCE_DIR, SOURCE_IGNORE, log=_log)
        timings["unpack, prepare and boot 3 hosts"] = time.monotonic() - t0
        # The vendor's own limit is the configured one: a request over it is a 429.
        fake = PolygonFake(truth.bars, truth.splits, api_key=API_KEY, page_size=PAGE_SIZE,
                           requests_per_minute=REQUESTS_PER_MINUTE, bind=clustermod.GATEWAY)
        fake.start()
        j = Journey(c, fake, truth, workdir, f"http://{c.addresses[0]}:8000", timings)
        j.state["first"] = first
        j.state["first_deploy"] = j.deploy("first")
        yield j
    finally:
        t0 = time.monotonic()
        c.destroy()
        timings["teardown"] = time.monotonic() - t0
        if fake is not None:
            fake.stop()
        timings["total"] = time.monotonic() - t_start
        _log("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


# ---------------------------------------------------------------------------


def test_1_the_playbook_deploys_each_host_its_part(journey):
    p = journey.state["first_deploy"]
    if p.returncode != 0:
        journals = "\n".join(f"--- {h.name}\n{journey.journal(h, 30)}"
                             for h in journey.cluster.hosts if h.running)
        pytest.fail(f"ansible-playbook failed:\n{_tail(p.stdout + p.stderr, 80)}\n{journals}")
    h1, h2, h3 = journey.cluster.hosts
    workers = [f"appliance-worker@{i}.service" for i in range(1, WORKERS_PER_HOST + 1)]
    want = {h1: ["appliance-web.service", "appliance-scheduler.service", "postgresql",
                 "redis-server"],
            h2: [*workers, "postgresql"], h3: workers}
    absent = {h1: workers, h2: ["appliance-web.service", "appliance-scheduler.service",
                                "redis-server"],
              h3: ["appliance-web.service", "appliance-scheduler.service", "postgresql"]}
    for h in journey.cluster.hosts:
        def active(h=h):
            return all(h.sh(f"systemctl is-active {u}", check=False).stdout.strip() == "active"
                       for u in want[h])
        journey.wait(f"{h.name}: {want[h]} active", active, timeout=90)
        for u in absent[h]:
            assert h.sh(f"systemctl is-active {u}", check=False).stdout.strip() != "active", \
                f"{u} runs on {h.name}"
    # one key seals the running config in Redis for every host's processes
    keys = {h.name: h.sh("sha256sum /var/lib/appliance/config.key").stdout.split()[0]
            for h in journey.cluster.hosts}
    assert len(set(keys.values())) == 1, keys
    body = journey.wait("/health 200", lambda: (r := journey.get("/health")).status_code == 200
                        and r.json(), timeout=90)
    assert body["database"] == "ok" and body["redis"] == "ok", body
    assert body["replica"]["configured"] and body["replica"]["state"] == "ok", body["replica"]
    _log(f"/health: {body['status']} {body['reasons']} replica {body['replica']}")


def test_2_the_replica_streams_through_its_slot(journey):
    h1, h2, _ = journey.cluster.hosts
    rows = clustermod.sql(h1, "SELECT client_addr, state FROM pg_stat_replication")
    assert rows == f"{journey.cluster.addresses[1]}|streaming", rows
    slots = clustermod.sql(h1, "SELECT slot_name, active FROM pg_replication_slots")
    assert slots == "mda_c2|t", slots
    assert clustermod.sql(h2, "SELECT pg_is_in_recovery()") == "t"
    # a write on the primary shows on the replica
    clustermod.sql(h1, "CREATE TABLE IF NOT EXISTS cluster_probe (x int); "
                       "INSERT INTO cluster_probe VALUES (42)")
    journey.wait("the probe row on the replica",
                 lambda: clustermod.sql(h2, "SELECT x FROM cluster_probe", check=False) == "42",
                 timeout=30)
    clustermod.sql(h1, "DROP TABLE cluster_probe")


def test_3_postgresql_and_redis_admit_only_the_inventorys_hosts(journey):
    h1, h2, h3 = journey.cluster.hosts
    primary = journey.cluster.addresses[0]
    # from a worker host, with the password, over TLS checked against the
    # cluster's CA (appliance_cluster_tls, on by default): admitted
    tls = f"sslmode=verify-full&sslrootcert={CLUSTER_CA}"
    url = f"postgresql://appliance:{DB_PASSWORD}@{primary}/market_data"
    assert h3.sh(f"psql {shlex.quote(url + '?' + tls)} -XAtqc 'SELECT 1'").stdout.strip() == "1"
    # in clear: refused (hostssl)
    plain = h3.sh(f"psql {shlex.quote(url + '?sslmode=disable')} -XAtqc 'SELECT 1'", check=False)
    assert plain.returncode != 0 and "no encryption" in plain.stdout + plain.stderr, plain
    rcli = f"redis-cli --tls --cacert {CLUSTER_CA} -h {primary}"
    pong = h3.sh(f"REDISCLI_AUTH={REDIS_PASSWORD} {rcli} ping").stdout.strip()
    assert pong == "PONG"
    assert "NOAUTH" in h3.sh(f"{rcli} ping", check=False).stdout
    # Redis has no plain port: a client in clear gets no answer
    clear = h3.sh(f"REDISCLI_AUTH={REDIS_PASSWORD} redis-cli -h {primary} ping", check=False)
    assert "PONG" not in clear.stdout, clear
    # from the machine (10.77.0.1, on the bridge but not in the inventory): refused
    if shutil.which("psql"):
        p = subprocess.run(["psql", f"postgresql://appliance:{DB_PASSWORD}@{primary}/market_data",
                            "-XAtqc", "SELECT 1"], capture_output=True, text=True, timeout=30)
        assert p.returncode != 0 and "no pg_hba.conf entry" in p.stderr, p.stdout + p.stderr
    hba = h1.sh("cat /etc/postgresql/15/main/pg_hba.conf").stdout
    loopback = {ln.split()[3] for ln in hba.splitlines() if ln.startswith("host ")}
    assert loopback == {"127.0.0.1/32", "::1/128"}, hba
    remote = {ln.split()[3] for ln in hba.splitlines() if ln.startswith("hostssl ")}
    assert remote == {f"{a}/32" for a in journey.cluster.addresses}, hba


def test_3b_the_appliances_and_the_replicas_connections_are_encrypted(journey):
    """After the deploy (its migrations, a scheduler, workers, the web server
    and the replica all connected): every connection from another host is
    TLS, and Redis's clients all came in over its TLS-only port."""
    h1 = journey.cluster.hosts[0]
    rows = clustermod.sql(h1, "SELECT a.usename, s.ssl FROM pg_stat_activity a "
                              "JOIN pg_stat_ssl s USING (pid) WHERE a.client_addr IS NOT NULL "
                              "AND a.client_addr <> '127.0.0.1' ORDER BY 1, 2")
    pairs = [tuple(ln.split("|")) for ln in rows.splitlines()]
    assert ("replicator", "t") in pairs, rows
    assert any(u == "appliance" for u, _ in pairs), rows
    assert all(ssl == "t" for _, ssl in pairs), rows
    rcli = (f"REDISCLI_AUTH={REDIS_PASSWORD} redis-cli --tls --cacert {CLUSTER_CA} "
            f"-h {journey.cluster.addresses[0]}")
    port = h1.sh(f"{rcli} config get port").stdout.split()
    assert port == ["port", "0"], port
    clients = int(re.search(r"connected_clients:(\d+)",
                            h1.sh(f"{rcli} info clients").stdout).group(1))
    # the web server, the scheduler and the workers of both worker hosts
    assert clients >= 1 + 1 + 2 * WORKERS_PER_HOST, clients


def _backfill(journey) -> int:
    r = requests.post(journey.web + "/api/v1/backfill", json={}, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 202, r.text[:1000]
    return r.json()["job_id"]


def _chunks_by_host(journey, run_id: int) -> dict[str, int]:
    """Done chunks of the run by the host that finished them (done_by is hostname:pid)."""
    out = clustermod.sql(journey.primary,
                         "SELECT split_part(done_by, ':', 1), count(*) FROM backfill_chunks "
                         f"WHERE run_id = {int(run_id)} AND status = 'done' GROUP BY 1 ORDER BY 1")
    return {ln.split("|")[0]: int(ln.split("|")[1]) for ln in out.splitlines() if ln}


def _parent_host(journey, run_id: int) -> str:
    """The host whose worker runs the backfill itself (backfill_fanouts.owner, hostname:pid)."""
    return clustermod.sql(journey.primary, "SELECT split_part(owner, ':', 1) FROM "
                                           f"backfill_fanouts WHERE run_id = {int(run_id)}")


def test_4_a_backfill_is_shared_by_both_worker_hosts_and_survives_losing_one(journey):
    h2, h3 = journey.cluster.hosts[1:]
    workers = " ".join(f"appliance-worker@{i}.service" for i in range(1, WORKERS_PER_HOST + 1))
    # The run itself (the parent, which fans out and records the result) goes to
    # mda-c2: mda-c3's workers start once it has fanned out. The host that goes
    # away is one that only does chunks.
    h3.sh(f"systemctl stop {workers}")
    t0 = time.monotonic()
    run_id = _backfill(journey)
    parent = journey.wait("the backfill fanned out", lambda: _parent_host(journey, run_id),
                          timeout=120)
    assert parent == h2.name, parent
    h3.sh(f"systemctl start {workers}")
    # host 3 goes away without a shutdown once it has done some chunks
    journey.wait("chunks done on mda-c3",
                 lambda: _chunks_by_host(journey, run_id).get(h3.name, 0) >= 3, timeout=300,
                 every=0.5)
    h3.destroy()
    # what mda-c3 held when it went away (it can no longer finish or beat them)
    held = clustermod.sql(journey.primary, "SELECT id FROM backfill_chunks WHERE "
                          f"run_id = {run_id} AND status = 'running' "
                          f"AND claimed_by LIKE '{h3.name}:%' ORDER BY id").split()
    _log(f"mda-c3 powered off mid-backfill holding chunk(s) {held}; done so far "
         f"{_chunks_by_host(journey, run_id)}")

    def finished():
        run = journey.api(f"/api/v1/jobs/{run_id}")
        return run if run["status"] in ("ok", "partial", "failed") else None
    run = journey.wait(f"backfill run {run_id}", finished, timeout=900, every=3)
    journey.timings["backfill"] = time.monotonic() - t0
    assert run["status"] == "ok", json.dumps(run)[:2000]
    by_host = _chunks_by_host(journey, run_id)
    assert by_host.get(h2.name, 0) > 0 and by_host.get(h3.name, 0) > 0, by_host
    assert sum(by_host.values()) == len(SYMBOLS), by_host
    # every chunk was done once: none is left running, failed, or done twice
    statuses = clustermod.sql(journey.primary, "SELECT status, count(*) FROM backfill_chunks "
                              f"WHERE run_id = {run_id} GROUP BY 1")
    assert statuses == f"done|{len(SYMBOLS)}", statuses
    # the worker host ran with the running config it was given (sealed by the web host)
    unsealed = h2.sh("journalctl --no-pager -u 'appliance-worker@*' | grep -c 'cannot be "
                     "unsealed'", check=False).stdout.strip()
    assert unsealed == "0", journey.journal(h2)
    # the chunks mda-c3 held were taken over and finished on mda-c2
    if held:
        finishers = clustermod.sql(journey.primary, "SELECT DISTINCT split_part(done_by, ':', 1) "
                                   f"FROM backfill_chunks WHERE id IN ({', '.join(held)})")
        assert finishers == h2.name, finishers
    # the store equals the vendor's truth, nothing lost or doubled
    got = {s["symbol"]: s["records"] for s in journey.api("/api/v1/symbols")["symbols"]}
    want = {s: len(journey.truth.bars[s]) for s in SYMBOLS}
    assert got == want
    for symbol in SYMBOLS[::50]:
        rows = journey.candles(symbol)
        for (d, o, h, lo, c, v, _vw, _n), row in zip(journey.truth.rows(symbol), rows, strict=False):
            assert row["time"][:10] == d.isoformat()
            assert (row["open"], row["high"], row["low"], row["close"], row["volume"]) == \
                (o, h, lo, c, v), f"{symbol} {d}: {row}"
    # the vendor never saw more than the limit in any 60 s window, and never said 429
    times = sorted(journey.fake.times)
    worst = max(sum(1 for u in times[i:] if u - t < 60) for i, t in enumerate(times))
    assert worst <= REQUESTS_PER_MINUTE, f"{worst} requests in one 60 s window"
    assert journey.fake.rate_limited == 0
    _log(f"backfill: {len(times)} vendor requests, at most {worst} in 60 s, chunks {by_host}")


def test_5_api_reads_are_served_by_the_replica(journey):
    h2 = journey.replica
    before = journey.reads()
    symbol = SYMBOLS[0]
    r = journey.get(f"/api/v1/historical/{symbol}?start={journey.state['first']}")
    assert r.status_code == 200, r.text[:500]  # the backfill of test 4 stored its bars
    assert r.json()["count"] > 0, r.text[:500]
    after = journey.reads()
    assert after.get("replica", 0) > before.get("replica", 0), (before, after)
    conns = clustermod.sql(h2, "SELECT count(*) FROM pg_stat_activity WHERE usename = "
                               f"'appliance' AND client_addr = '{journey.cluster.addresses[0]}'")
    assert int(conns) >= 1, "no connection from the web host on the replica"


def test_6_reads_fall_back_to_the_primary_while_the_replica_is_down(journey):
    h2 = journey.replica
    path = f"/api/v1/historical/{SYMBOLS[0]}?start={journey.state['first']}"
    expected = journey.get(path)
    h2.sh("systemctl stop postgresql")
    # `systemctl stop postgresql` can return while the cluster's own unit is
    # still shutting down; the reads below are those of a stopped replica
    journey.wait("the replica stopped", lambda: h2.sh(
        "pg_isready -q -h 127.0.0.1 -p 5432", check=False).returncode == 2, timeout=60)
    try:
        before = journey.reads()
        for _ in range(5):
            r = journey.get(path)
            assert r.status_code == expected.status_code and r.json() == expected.json(), \
                f"{r.text[:500]}\n{journey.journal(journey.primary, 40)}"
        after = journey.reads()
        assert after.get("primary", 0) >= before.get("primary", 0) + 5, (before, after)
        journey.wait("/health replica down",
                     lambda: journey.get("/health").json()["replica"]["state"] == "down",
                     timeout=30)

        def alert_open():
            alerts = journey.api("/api/v1/alerts")["alerts"]
            return any(a["key"] == "replica_lag" and a["status"] == "open" for a in alerts)
        journey.wait("replica_lag alert open", alert_open, timeout=180, every=3)
    finally:
        h2.sh("systemctl start postgresql")
    journey.wait("/health replica ok",
                 lambda: journey.get("/health").json()["replica"]["state"] == "ok", timeout=90)

    # each web process finds out on its own (its next probe of the replica)
    def served_by_replica():
        before = journey.reads()
        assert journey.get(path).status_code == expected.status_code
        return journey.reads().get("replica", 0) > before.get("replica", 0)
    journey.wait("a read served by the replica again", served_by_replica, timeout=60)
    rows = clustermod.sql(journey.primary, "SELECT state FROM pg_stat_replication")
    assert rows == "streaming", rows
