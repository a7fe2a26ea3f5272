"""The operator's journey on a real systemd host.

A Debian 12 container with systemd as PID 1 (``tests/deploy/host.py``) is
deployed with ``ansible-playbook -i <inventory> ansible/site.yml``, exactly as
ansible/README.md says, and then operated: services up and enabled, a
backfill from a loopback Polygon, a backup to a real ext4 drive mounted by
UUID, the console's one-click restore test, a config edit that reloads
without restarting, a power cycle, a backup with the drive gone, and a full
restore.

The tests run in file order and build on each other (one host per module).
The host shares the machine's network: PostgreSQL, Redis and the web server
are deployed on free ports so they never meet the machine's own services.
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

from tests.deploy import host as hostmod
from tests.deploy.test_ansible import _changed_tasks

pytestmark = [pytest.mark.deploy, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"

HOST_NAME = f"mda-journey-{os.getpid()}"  # concurrent runs get their own machine
SOURCE_DIR = "/opt/appliance/src"
VENV = "/opt/appliance/venv"
ENV_FILE = "/etc/appliance/appliance.env"
MOUNT_POINT = "/mnt/external-backup"
BACKUP_DIR = f"{MOUNT_POINT}/market-data-backups"
SERVICE_USER = "appliance"
WORKERS = 2
SERVICES = ["appliance-web.service", "appliance-scheduler.service",
            *[f"appliance-worker@{i}.service" for i in range(1, WORKERS + 1)]]
UNITS = [*SERVICES, "market-data-api.target", "market-data-api.service"]
SYMBOLS = ["AAPL", "MSFT"]
ADDED_SYMBOL = "IBM"
HISTORY_SESSIONS = 40
API_KEY = "journey-polygon-key"
ADMIN_TOKEN = "journey-admin-token-5b2d4f6a8c0e"
SOURCE_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "node_modules", "__pycache__", "*.pyc", "build", "dist",
    "*.egg-info", ".pytest_cache", "tests", "bench", "var", "ansible", ".ansible",
)


_pytest_config = None  # set by the fixture: progress shows even with output captured


def _log(msg: str) -> None:
    line = f"[host-journey {time.strftime('%H:%M:%S')}] {msg}"
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


def _recap(output: str) -> dict[str, int]:
    match = re.search(rf"^{HOST_NAME}\s*:\s*(.*)$", output, re.MULTILINE)
    assert match, f"no PLAY RECAP line for {HOST_NAME}:\n{_tail(output)}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


@dataclass
class Journey:
    host: hostmod.Host
    drive: hostmod.BackupDrive
    fake: object
    truth: object
    workdir: Path
    inventory: Path
    hostvars: dict
    web: str
    timings: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)

    # -- deployment --------------------------------------------------------------
    def write_inventory(self) -> None:
        hv = dict(self.hostvars, ansible_nsenter_pid=self.host.pid)
        self.inventory.write_text(yaml.safe_dump(
            {"all": {"children": {"appliance": {"hosts": {HOST_NAME: hv}}}}}, sort_keys=False))

    def deploy(self, label: str) -> subprocess.CompletedProcess:
        self.write_inventory()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env.update(ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_FORCE_COLOR="0", ANSIBLE_DEPRECATION_WARNINGS="0",
                   ANSIBLE_LOCAL_TEMP=str(self.workdir / "ansible-local"),
                   # per-task durations in the logs: where a slow deploy spends its time
                   ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks",
                   PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        t0 = time.monotonic()
        p = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(self.inventory), "site.yml"],
                           cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=900)
        self.timings[f"ansible-playbook ({label})"] = time.monotonic() - t0
        (self.workdir / f"ansible-{label}.log").write_text(p.stdout + p.stderr)
        _log(f"ansible-playbook ({label}): exit {p.returncode} in {time.monotonic() - t0:.0f} s")
        return p

    # -- operating ---------------------------------------------------------------
    def appliance(self, *args: str, check: bool = True, timeout: float = 300):
        """The deployed CLI as the service user, with the services' environment
        (the README's `systemd-run --pipe --wait` recipe)."""
        cmd = ("systemd-run --pipe --wait --quiet --collect -p User=appliance "
               f"-p EnvironmentFile={ENV_FILE} {VENV}/bin/appliance "
               + " ".join(shlex.quote(a) for a in args))
        return self.host.sh(cmd, check=check, timeout=timeout)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.web + path, timeout=30, **kw)

    def api(self, path: str) -> dict:
        r = self.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text[:500]}"
        return r.json()

    def main_pids(self) -> dict[str, str]:
        return {u: self.host.systemctl_show(u, "MainPID")["MainPID"] for u in SERVICES}

    def candle_count(self) -> int:
        return sum(s["records"] for s in self.api("/api/v1/symbols")["symbols"])

    def candles(self, symbol: str) -> list[dict]:
        start = self.truth.bars[symbol].session[0].astype(dt.date)
        body = self.api(f"/api/v1/historical/{symbol}?start={start}&end={dt.date.today()}"
                        f"&include_invalid=true&adjusted=false")
        return body["data"]

    def archives(self) -> list[str]:
        out = self.host.sh(f"ls -1 {BACKUP_DIR} 2>/dev/null || true").stdout
        return sorted(f for f in out.split() if f.endswith((".dump", ".json")))

    def wait_active(self, timeout: float = 90) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            states = {u: self.host.sh(f"systemctl is-active {u}", check=False).stdout.strip()
                      for u in UNITS}
            healthy = False
            try:
                healthy = self.get("/health").status_code == 200
            except requests.RequestException:
                pass
            if healthy and all(s == "active" for s in states.values()):
                return states
            if time.monotonic() > deadline:
                return states
            time.sleep(1)

    def wait_run(self, run_id: int, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.api(f"/api/v1/jobs/{run_id}")
            if run["status"] in ("ok", "partial", "failed"):
                return run
            assert time.monotonic() < deadline, f"job run {run_id} still {run['status']}: {run}"
            time.sleep(1)

    def journal(self, units=("appliance-*",), lines: int = 60) -> str:
        us = " ".join(f"-u {shlex.quote(u)}" for u in units)
        return self.host.sh(f"journalctl --no-pager -n {lines} {us}", check=False).stdout


class Console:
    """The browser's side of the HTMX console: a cookie session, the login
    form's CSRF token, then the token htmx sends from <body hx-headers>."""

    def __init__(self, base: str):
        self.base = base
        self.s = requests.Session()
        self.csrf = ""

    def _csrf_from(self, html: str) -> str:
        m = re.search(r'"X-CSRFToken":\s*"([^"]+)"', html) or \
            re.search(r'name="csrf_token" value="([^"]+)"', html)
        assert m, f"no CSRF token in the page:\n{html[:1000]}"
        return m.group(1)

    def login(self, token: str) -> None:
        page = self.s.get(f"{self.base}/login?next=/backups", timeout=30)
        assert page.status_code == 200, page.text[:500]
        form_csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert form_csrf, "the login form carries no csrf_token field"
        r = self.s.post(f"{self.base}/login", data={"csrf_token": form_csrf.group(1),
                                                     "next": "/backups", "token": token},
                        timeout=30)
        assert r.status_code == 200 and r.url.endswith("/backups"), \
            f"login did not land on /backups: {r.status_code} {r.url}\n{r.text[:500]}"
        self.csrf = self._csrf_from(r.text)
        self.backups_page = r.text

    def htmx(self, method: str, path: str, target: str, **kw) -> requests.Response:
        headers = {"HX-Request": "true", "HX-Target": target, "X-CSRFToken": self.csrf,
                   "HX-Current-URL": f"{self.base}/backups"}
        return self.s.request(method, f"{self.base}{path}", headers=headers, timeout=60, **kw)


# ---------------------------------------------------------------------------
# The host, deployed once for the module
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def journey(tmp_path_factory, pytestconfig):
    global _pytest_config
    _pytest_config = pytestconfig
    reason = hostmod.unavailable()
    if reason:
        pytest.skip(reason)
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip(f"ansible-playbook is not installed in {BIN} (pip install '.[deploy]')")
    from appliance.core import calendar as tcal
    from tests.fakes.polygon_fake import PolygonFake, make_truth

    t_start = time.monotonic()
    workdir = tmp_path_factory.mktemp("host-journey")
    latest = tcal.latest_completed_session("XNYS", dt.datetime.now(dt.UTC))
    first = tcal.previous_sessions("XNYS", latest, HISTORY_SESSIONS)[0].astype(dt.date)
    truth = make_truth([*SYMBOLS, ADDED_SYMBOL], first, latest, seed=13)
    fake = PolygonFake(truth.bars, truth.splits, api_key=API_KEY)
    drive = host = None
    timings: dict = {}
    try:
        fake.start()
        t0 = time.monotonic()
        tarball = hostmod.rootfs_tarball(log=_log)
        timings["root filesystem (cache)"] = time.monotonic() - t0
        drive = hostmod.BackupDrive(workdir / "backup-drive.img")
        host = hostmod.Host(workdir, HOST_NAME, drive)
        t0 = time.monotonic()
        host.prepare(tarball, REPO, SOURCE_DIR, SOURCE_IGNORE)
        timings["unpack and prepare"] = time.monotonic() - t0
        t0 = time.monotonic()
        host.boot()
        timings["boot"] = time.monotonic() - t0
        _log(f"host {HOST_NAME} booted (PID 1 is {host.pid}), drive {drive.device} "
             f"UUID {drive.uuid}, fake Polygon at {fake.base_url}")
        web_port = hostmod.free_port()
        hostvars = {
            "ansible_connection": "community.docker.nsenter",
            "ansible_python_interpreter": "/usr/bin/python3",
            "backup_drive_uuid": drive.uuid,
            "postgresql_port": hostmod.free_port(),
            "redis_port": hostmod.free_port(),
            "appliance_server_bind": f"127.0.0.1:{web_port}",
            "appliance_worker_count": WORKERS,
            "appliance_provider": "polygon",
            "appliance_polygon_base_url": fake.base_url,
            "appliance_polygon_requests_per_minute": 6000,
            "appliance_polygon_api_key": API_KEY,
            "appliance_history_start": first.isoformat(),
            "appliance_symbols": list(SYMBOLS),
            "appliance_db_password": "9c2e3f9a1c7e5b2d4f6a8c0e1b3d5f7a",
            "appliance_redis_password": "0a1f8e6c4a2f0d1b3e5c7a9f2d4b6e8c",
            "appliance_admin_token": ADMIN_TOKEN,
            "appliance_secret_key": "journey-secret-key-4b6e8c0a1f8e6c4a2f0d",
        }
        j = Journey(host, drive, fake, truth, workdir, workdir / "inventory.yml", hostvars,
                    f"http://127.0.0.1:{web_port}", timings)
        j.state["first_deploy"] = j.deploy("first")
        yield j
    finally:
        if host is not None:
            t0 = time.monotonic()
            host.destroy()
            timings["teardown"] = time.monotonic() - t0
        if drive is not None:
            drive.detach()
        fake.stop()
        timings["total"] = time.monotonic() - t_start
        _log("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


# ---------------------------------------------------------------------------
# The journey, in order
# ---------------------------------------------------------------------------


def test_1_the_playbook_deploys_a_running_enabled_healthy_appliance(journey):
    p = journey.state["first_deploy"]
    assert p.returncode == 0, f"ansible-playbook failed:\n{_tail(p.stdout + p.stderr, 80)}"
    states = journey.wait_active()
    assert all(s == "active" for s in states.values()), \
        f"units not active: {states}\n{journey.journal()}"
    status = journey.host.sh("systemctl status --no-pager market-data-api", check=False)
    assert status.returncode == 0, f"systemctl status market-data-api:\n{status.stdout}"
    enabled = {u: journey.host.sh(f"systemctl is-enabled {u}", check=False).stdout.strip()
               for u in UNITS}
    assert all(s == "enabled" for s in enabled.values()), f"units not enabled: {enabled}"
    for server in ("postgresql", "redis-server"):
        assert journey.host.sh(f"systemctl is-enabled {server}", check=False).stdout.strip() \
            == "enabled", f"{server} is not enabled"
    r = journey.get("/health")
    body = r.json()
    # A fresh install has no candles yet: that is its only allowed complaint.
    assert r.status_code == 200 and body["database"] == "ok" and body["redis"] == "ok" \
        and body["scheduler_running"] and body["worker_alive"] \
        and set(body["reasons"]) <= {"no data stored yet"}, \
        f"/health answered {r.status_code}: {json.dumps(body, indent=1)[:2000]}"
    _log(f"/health after the deploy: {body['status']} {body['reasons']}")


def test_2_a_backfill_stores_exactly_the_vendors_candles(journey):
    p = journey.appliance("backfill", timeout=300, check=False)
    assert p.returncode == 0, f"appliance backfill failed:\n{p.stdout}\n{p.stderr}"
    for symbol in SYMBOLS:
        want = journey.truth.rows(symbol)
        got = journey.candles(symbol)
        assert len(got) == len(want), \
            f"{symbol}: {len(got)} candles stored, the vendor served {len(want)}"
        for (d, o, h, lo, c, v, _vw, _n), row in zip(want, got, strict=False):
            assert row["time"][:10] == d.isoformat(), f"{symbol}: {row['time']} != {d}"
            assert (row["open"], row["high"], row["low"], row["close"], row["volume"]) == \
                (o, h, lo, c, v), f"{symbol} {d}: stored {row}, vendor {(o, h, lo, c, v)}"
    journey.state["candles"] = journey.candle_count()
    assert journey.state["candles"] == sum(len(journey.truth.bars[s]) for s in SYMBOLS)
    r = journey.get("/health")
    assert r.status_code == 200, r.text[:2000]


def test_3_appliance_backup_writes_to_the_mounted_drive(journey):
    mount = journey.host.sh(f"findmnt -n -o SOURCE,FSTYPE,OPTIONS {MOUNT_POINT}", check=False)
    assert mount.returncode == 0, f"{MOUNT_POINT} is not mounted on the host"
    fstab = journey.host.sh("cat /etc/fstab").stdout
    line = [ln for ln in fstab.splitlines() if f" {MOUNT_POINT} " in ln]
    assert line and line[0].startswith(f"UUID={journey.drive.uuid} ") and "nofail" in line[0], \
        f"no UUID=/nofail fstab line for the drive:\n{fstab}"
    p = journey.appliance("backup", timeout=300, check=False)
    assert p.returncode == 0, f"appliance backup failed:\n{p.stdout}\n{p.stderr}"
    res = json.loads(p.stdout[p.stdout.index("{"):])
    archive = f"{BACKUP_DIR}/{res['filename']}"
    on = journey.host.sh(f"findmnt -n -o SOURCE --target {archive}").stdout.strip()
    assert on == journey.drive.device, f"{archive} is on {on!r}, not on the drive"
    owner = journey.host.sh(f"stat -c %U {archive}").stdout.strip()
    assert owner == SERVICE_USER, f"{archive} is owned by {owner}"
    journey.state["first_backup"] = res["filename"]
    journey.state["archives"] = journey.archives()
    assert res["filename"] in journey.state["archives"]


def test_4_the_consoles_one_click_restore_test_passes(journey):
    console = Console(journey.web)
    console.login(ADMIN_TOKEN)
    ids = re.findall(r'hx-post="/backups/(\d+)/restore-test"', console.backups_page)
    assert ids, f"no restore-test button on /backups:\n{console.backups_page[:2000]}"
    backup_id = ids[0]
    r = console.htmx("POST", f"/backups/{backup_id}/restore-test", "restore-panel")
    assert r.status_code == 200 and "restore-run-" in r.text, \
        f"restore-test button answered {r.status_code}:\n{r.text[:1500]}"
    run_id = re.search(r'id="restore-run-(\d+)"', r.text).group(1)
    deadline = time.monotonic() + 240
    while 'data-polling="1"' in r.text:
        assert time.monotonic() < deadline, f"restore test still running:\n{r.text[:1500]}"
        time.sleep(1)
        r = console.htmx("GET", f"/restore-tests/{run_id}", f"restore-run-{run_id}")
        assert r.status_code == 200, r.text[:1000]
    assert "Restore test passed" in r.text, \
        f"restore test did not pass:\n{re.sub(r'<[^>]+>', ' ', r.text)[:3000]}\n" \
        f"{journey.journal(('appliance-worker@*',))}"
    # With data, a backup and a passed restore test the appliance is green.
    body = journey.get("/health").json()
    assert body["status"] == "healthy", f"/health: {json.dumps(body, indent=1)[:2000]}"


def test_5_a_config_edit_reloads_without_restart_and_backfills_the_new_symbol(journey):
    pids = journey.main_pids()
    assert all(p != "0" for p in pids.values()), pids
    journey.hostvars["appliance_symbols"] = [*SYMBOLS, ADDED_SYMBOL]
    p = journey.deploy("symbol added")
    out = p.stdout + p.stderr
    assert p.returncode == 0, _tail(out, 80)
    assert _changed_tasks(p.stdout) == [
        "appliance : Write appliance.yaml (validated before it replaces the old one)",
        "appliance : Reload appliance",
    ], f"unexpected changes: {_changed_tasks(p.stdout)}"
    assert journey.main_pids() == pids, "a service restarted on a config change"
    deadline = time.monotonic() + 180
    want = len(journey.truth.bars[ADDED_SYMBOL])
    while True:
        got = {s["symbol"]: s["records"] for s in journey.api("/api/v1/symbols")["symbols"]}
        if got.get(ADDED_SYMBOL) == want:
            break
        assert time.monotonic() < deadline, \
            f"{ADDED_SYMBOL}: {got.get(ADDED_SYMBOL)} candles, want {want}\n{journey.journal()}"
        time.sleep(2)
    assert len(journey.candles(ADDED_SYMBOL)) == want
    assert journey.main_pids() == pids, "a service restarted while backfilling the new symbol"
    again = journey.deploy("unchanged")
    assert again.returncode == 0, _tail(again.stdout + again.stderr, 80)
    recap = _recap(again.stdout)
    assert recap["changed"] == 0, f"second run changed: {_changed_tasks(again.stdout)}"
    journey.state["candles"] = journey.candle_count()


def test_5b_a_token_rotated_in_the_environment_file_takes_effect_on_reload(journey):
    """OPERATIONS.md, *Rotating tokens and keys*, on the systemd host as
    written: the new value in appliance.env, then `systemctl reload
    market-data-api`, from a fresh root shell (host.sh has a clean
    environment). The running processes pick it up; nothing restarts."""
    pids = journey.main_pids()
    rotated = "journey-rotated-token-" + "9" * 16

    def rotate(old: str, new: str) -> None:
        journey.host.sh(f"sed -i 's/^APPLIANCE_ADMIN_TOKEN=.*/APPLIANCE_ADMIN_TOKEN=\"{new}\"/' "
                        f"{ENV_FILE} && grep -q '{new}' {ENV_FILE}")
        for unit in ("market-data-api", "appliance-web"):  # both as documented
            p = journey.host.sh(f"systemctl reload {unit}", check=False)
            assert p.returncode == 0, p.stdout + p.stderr + journey.journal()

        def post(token: str) -> int:
            return requests.post(journey.web + "/api/v1/jobs/alerts/run", json={}, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}).status_code
        deadline = time.monotonic() + 10
        while post(old) != 401:
            assert time.monotonic() < deadline, "the old token still works after the reload\n" \
                + journey.journal()
            time.sleep(0.5)
        assert post(new) == 202

    rotate(ADMIN_TOKEN, rotated)
    rotate(rotated, ADMIN_TOKEN)  # back, for the steps after this one
    assert journey.main_pids() == pids, "a service restarted for a token rotation"


def test_6_after_a_power_cycle_every_service_comes_back_with_its_data(journey):
    before = journey.state["candles"]
    t0 = time.monotonic()
    journey.host.poweroff()
    journey.host.boot()
    journey.timings["power cycle"] = time.monotonic() - t0
    states = journey.wait_active()
    assert all(s == "active" for s in states.values()), \
        f"after reboot: {states}\n{journey.journal()}"
    assert journey.candle_count() == before, "candles lost in the power cycle"
    # Without udev in the container no .device unit appears for the drive, so
    # the nofail fstab mount times out at boot; a real host mounts it.
    mounted = journey.host.sh(f"mountpoint -q {MOUNT_POINT}", check=False).returncode == 0
    _log(f"after the power cycle the backup drive is {'mounted' if mounted else 'not mounted'}")


def test_7_a_backup_without_the_drive_fails_loudly_and_loses_nothing(journey):
    host = journey.host
    if host.sh(f"mountpoint -q {MOUNT_POINT}", check=False).returncode == 0:
        host.sh(f"umount {MOUNT_POINT}")
    before = journey.state["candles"]
    r = requests.post(journey.web + "/api/v1/backups", json={}, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 202, r.text[:1000]
    run = journey.wait_run(r.json()["job_id"])
    assert run["status"] == "failed", f"backup without the drive: {run}"
    text = json.dumps(run)
    assert "is the backup drive mounted" in text, f"unclear error: {text[:2000]}"
    _log(f"backup without the drive: {run.get('error') or run.get('errors')}")
    alerts = journey.api("/api/v1/alerts")["alerts"]
    assert any(a["key"] == "backup_failed" and a["status"] == "open" for a in alerts), \
        f"no open backup_failed alert: {alerts}"
    stray = host.sh(f"ls -A {MOUNT_POINT}").stdout.split()
    assert stray == [], f"the backup wrote to the system disk under {MOUNT_POINT}: {stray}"
    assert journey.candle_count() == before
    host.sh(f"mount {MOUNT_POINT}")
    assert journey.archives() == journey.state["archives"], "archives changed on the drive"


def test_8_appliance_restore_of_the_latest_backup_gives_back_the_same_data(journey):
    host = journey.host
    assert host.sh(f"mountpoint -q {MOUNT_POINT}", check=False).returncode == 0
    before = {s: journey.candles(s) for s in [*SYMBOLS, ADDED_SYMBOL]}
    p = journey.appliance("backup", timeout=300, check=False)
    assert p.returncode == 0, f"appliance backup after remount failed:\n{p.stdout}\n{p.stderr}"
    p = journey.appliance("restore", "latest", "--yes", timeout=600, check=False)
    assert p.returncode == 0, f"appliance restore latest --yes failed:\n{p.stdout}\n{p.stderr}"
    res = json.loads(p.stdout[p.stdout.index("{"):])
    assert res["status"] == "ok", res
    states = journey.wait_active()
    assert all(s == "active" for s in states.values()), states
    after = {s: journey.candles(s) for s in before}
    assert after == before, "the restored data differs from the data before the restore"


def test_9_systemd_analyze_security_of_each_unit(journey):
    rows = []
    # market-data-api.service only runs /bin/true (it stands for the target);
    # it is listed so that the table covers every service unit deployed.
    for unit in [*SERVICES, "market-data-api.service"]:
        out = journey.host.sh(f"systemd-analyze security --no-pager {unit}", check=False)
        m = re.search(r"Overall exposure level for \S+:\s*([\d.]+)\s+(\S+)", out.stdout)
        assert m, f"no exposure score for {unit}:\n{out.stdout[-1500:]}{out.stderr[-500:]}"
        rows.append((unit, m.group(1), m.group(2)))
    table = "| unit | exposure | rating |\n|---|---|---|\n" + "\n".join(
        f"| `{u}` | {s} | {r} |" for u, s, r in rows)
    _log("systemd-analyze security on the deployed host:\n" + table)
    (journey.workdir / "security.md").write_text(table + "\n")
