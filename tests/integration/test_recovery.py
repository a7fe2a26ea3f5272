"""Recovery an operator can trust: a restore keeps the operations history, a
fresh host recovers from the backup drive alone with the commands of
OPERATIONS.md as written, and the numbers stay true afterwards."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from appliance.alerts import rules as alerts
from appliance.config.loader import DEFAULTS
from appliance.ingest import daily
from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.ops import backups, history
from appliance.ops.backups import run_backup, run_restore_test
from appliance.runtime.runtime import Runtime
from tests.conftest import write_config
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]


def _backfill(rt, **params):
    from appliance import store
    with rt.conn() as c:  # the symbols table as `appliance up` leaves it (a restore syncs it)
        store.sync_symbols(c, rt.config.symbols)
    res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill, params=params)
    assert res["status"] == "ok", res
    return res


def _runs(url: str) -> list[tuple]:
    with psycopg.connect(url) as c:
        return c.execute("SELECT id, job, status, error FROM job_runs ORDER BY id").fetchall()


def _drop_kept(url: str, live: str) -> None:
    with psycopg.connect(backups.url_for(url, "postgres"), autocommit=True) as c:
        for (name,) in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                 (f"{live}_old_%",)).fetchall():
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_restore_keeps_the_operations_history_newer_than_the_archive(
        runtime, database_url):
    rt = runtime
    _backfill(rt)
    with psycopg.connect(database_url) as c:
        inflight = c.execute(
            """INSERT INTO job_runs (job, slot, status, started_at, heartbeat_at)
               VALUES ('spot_check', 'manual:inflight', 'running', now(), now())
               RETURNING id""").fetchone()[0]
    b = runs.execute(rt, "backup", runs.manual_slot(), run_backup, params={})
    assert b["status"] == "ok"
    # the spot-check that was running when the dump was taken ends after it
    with rt.conn() as c:
        runs.finish(c, inflight, "failed", {}, "vendor unreachable")
    t = runs.execute(rt, "restore_test", runs.manual_slot(), run_restore_test,
                     params={"backup": "latest"})
    assert t["status"] == "ok"
    before = _runs(database_url)
    live = backups.db_name(database_url)
    try:
        res = backups.full_restore(rt, "latest")
        assert res["history"]["lineage"] == "same"
        after = _runs(database_url)
        assert after == before, "the restore rewound or changed the job history"
        # the backup run that took the dump is ok, not 'running' for ever
        assert (b["run_id"], "backup", "ok", None) in after
        assert not [r for r in after if r[2] in ("running", "queued")]
        # no run id is reused: the next run gets an id past every earlier one
        with rt.conn() as c:
            nxt = runs.claim(c, "disk_check", runs.manual_slot())
            assert nxt > max(r[0] for r in before)
            cat = {r["filename"]: r for r in backups.list_backups(c)}
            assert cat[b["filename"]]["restore_test_status"] == "passed"
            # no alert opened on the archive's word: the backup did not fail
            assert c.execute("""SELECT count(*) FROM alerts WHERE key LIKE 'backup%%'
                                AND status = 'open'""").fetchone()[0] == 0
        assert "error" not in res["alerts"]
    finally:
        _drop_kept(database_url, live)


def test_the_manifest_records_restore_tests_so_a_rescan_knows_what_was_proven(
        runtime, database_url):
    rt = runtime
    _backfill(rt)
    b = runs.execute(rt, "backup", runs.manual_slot(), run_backup, params={})
    runs.execute(rt, "restore_test", runs.manual_slot(), run_restore_test,
                 params={"backup": "latest"})
    mpath = backups.manifest_path_for(Path(rt.config["backup"]["path"]) / b["filename"])
    m = json.loads(mpath.read_text())
    assert m["job_run_id"] == b["run_id"]
    assert [t["passed"] for t in m["restore_tests"]] == [True]
    assert oct(mpath.stat().st_mode & 0o777) == "0o600"
    with rt.conn() as c:  # a catalogue that lost the result gets it back from the drive
        c.execute("UPDATE backups SET restore_test_status = NULL, restore_test_at = NULL")
        backups.rescan(c, rt.config)
        row = backups.list_backups(c)[0]
    assert row["restore_test_status"] == "passed"


def _recovery_commands() -> list[str]:
    """The `appliance …` commands of OPERATIONS.md's recovery procedure, in order."""
    text = (ROOT / "OPERATIONS.md").read_text()
    sec = text.split("### Recovery after complete system failure", 1)[1].split("\n## ", 1)[0]
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", sec, re.S):
        cmds += [ln.split("#")[0].strip() for ln in block.splitlines()
                 if ln.strip().startswith("appliance ")]
    cmds += re.findall(r"`(appliance kept-databases[^`]*)`", sec)
    return cmds


def _cli(args: str, cfg: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "APPLIANCE_CONFIG": str(cfg)}
    env = {k: v for k, v in env.items() if not k.startswith("APPLIANCE_TEST_")}
    p = subprocess.run([sys.executable, "-m", "appliance.cli.main", *args.split()[1:]],
                       env=env, capture_output=True, text=True, timeout=300, cwd=cfg.parent)
    if check:
        assert p.returncode == 0, f"{args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def _up_then_ctrl_c(cfg: Path) -> None:
    import signal

    import requests

    from appliance.config.loader import load_config
    from tests.support import wait_until
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    up = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(cfg), "up",
                           "--no-initial-backfill"], env=env, cwd=cfg.parent,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    url = f"http://{load_config(cfg)['server']['bind']}/health"

    def answers():
        if up.poll() is not None:
            raise AssertionError("appliance up exited:\n" + up.stdout.read()[-3000:])
        try:
            return requests.get(url, timeout=5).status_code in (200, 503)
        except requests.RequestException:
            return False
    try:
        wait_until(answers, 120, "appliance up to serve")
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


@pytest.mark.slow
def test_the_recovery_procedure_of_operations_md_works_on_a_fresh_host(
        runtime, database_url, request):
    old = runtime
    _backfill(old)
    b = runs.execute(old, "backup", runs.manual_slot(), run_backup, params={})
    old_runs = {(r[0], r[1]) for r in _runs(database_url)}  # what the archive holds
    # the restore test runs after the dump: only the manifest can tell of it
    t = runs.execute(old, "restore_test", runs.manual_slot(), run_restore_test,
                     params={"backup": "latest"})
    assert t["status"] == "ok"
    bdir = Path(old.config["backup"]["path"])
    manifest = json.loads(backups.manifest_path_for(bdir / b["filename"]).read_text())

    # the fresh host: nothing but the config and the backup drive; embedded
    # PostgreSQL and Redis in a new data_dir (no URLs configured)
    # a short path: pgserver's unix socket lives in data_dir
    host = Path(tempfile.mkdtemp(prefix="fh-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(host, ignore_errors=True))
    # step 1: a source checkout installed. `make install` starts nothing; the
    # harder case is an operator who ran `make up` once instead (here:
    # `appliance up`, as make up runs it) and stopped it with Ctrl-C: its
    # config is the checkout's, whose backups go to var/backups
    cfg = write_config(host / "appliance.yaml", "", "", data_dir=str(host / "var"),
                       backup={"path": str(host / "var" / "backups"), "min_free_pct": 1},
                       server={"bind": f"127.0.0.1:{free_port()}", "workers": 1})
    _up_then_ctrl_c(cfg)
    # step 2: appliance.yaml restored (it names the backup drive); nothing reloaded
    cfg = write_config(host / "appliance.yaml", "", "", data_dir=str(host / "var"),
                       backup={"path": str(bdir), "min_free_pct": 1})
    cmds = _recovery_commands()
    assert cmds[:3] == ["appliance backups --rescan", "appliance restore latest",
                        "appliance restore latest --yes"], cmds
    listing = _cli(cmds[0], cfg)
    # the drive the restored file names is scanned: the appliance is not
    # running, so the file is the config (not the one `up` ran in step 1)
    assert b["filename"] in listing.stdout and "restore test: passed" in listing.stdout
    assert "differs from the running config" not in listing.stderr
    plan = _cli(cmds[1], cfg, check=False)
    assert plan.returncode == 0 and "Nothing was changed" in plan.stdout
    assert "Run again with --yes to do it." in plan.stdout
    res = json.loads(_cli(cmds[2], cfg).stdout)
    assert res["status"] == "ok" and res["history"]["lineage"] in ("other", "none")

    from appliance.runtime import services
    url = services.embedded_postgres(host / "var", dbname="market_data")
    try:
        with psycopg.connect(url) as c:
            counts = dict(c.execute("SELECT symbol, count(*) FROM market_data GROUP BY 1"))
            assert counts == manifest["row_counts"]["symbols"]
            got = {(r[0], r[1]): r[2] for r in c.execute(
                "SELECT id, job, status FROM job_runs")}
            # the old host's history came with the archive, nothing is in flight
            assert old_runs <= set(got), "the old host's runs are missing"
            assert got[(b["run_id"], "backup")] == "ok"
            assert "running" not in got.values() and "queued" not in got.values()
            row = c.execute("SELECT restore_test_status FROM backups WHERE filename = %s",
                            (b["filename"],)).fetchone()
            assert row == ("passed",)
    finally:
        services.stop_embedded_postgres(host / "var")
    for cmd in cmds[3:]:
        if cmd.startswith("appliance kept-databases --drop"):
            kept = _cli("appliance kept-databases", cfg).stdout.split()
            name = next(k for k in kept if "_old_" in k)
            cmd = re.sub(r"market_data_old_\S+", name, cmd)
        out = _cli(cmd, cfg)
        if cmd == "appliance restore-test latest":
            assert json.loads(out.stdout)["status"] == "ok"
    assert "_old_" not in _cli("appliance kept-databases", cfg).stdout


def test_moving_since_earlier_fills_the_history_without_flags(config_factory):
    rt = Runtime.from_path(config_factory(history={"start": "2025-01-02",
                                                  "lookback_sessions": 5},
                                          symbols=["AAPL"]))
    rt.open()
    try:
        _backfill(rt)
        with rt.conn() as c:
            first, n1, compl = c.execute(
                "SELECT first_session, records, completeness FROM symbol_stats").fetchone()
        assert str(first) == "2025-01-02" and compl == 1.0
        # the operator asks for a longer history and reloads
        from appliance.jobs.reload import reload_config
        write_config(rt.config.path, rt.config["database"]["url"], rt.config["redis"]["url"],
                     history={"start": "2025-01-02", "lookback_sessions": 5},
                     symbols=[{"symbol": "AAPL", "since": "2024-01-02"}])
        r = reload_config(rt, source="cli")
        assert r["ok"] and r["backfill_run_id"], r
        with rt.conn() as c:
            # until the backfill ran, completeness counts from the new start
            stats = daily.refresh_stats(c, rt.config, "AAPL")
        assert stats["missing"] == 252 and stats["completeness"] < 0.7  # 2024 is missing
        _backfill(rt, symbols=["AAPL"])
        with rt.conn() as c:
            first, n2, compl = c.execute(
                "SELECT first_session, records, completeness FROM symbol_stats").fetchone()
        assert str(first) == "2024-01-02" and n2 > n1 + 200 and compl == 1.0
        _backfill(rt)  # a plain backfill afterwards asks only for recent sessions
        with rt.conn() as c:
            assert c.execute("SELECT records FROM symbol_stats").fetchone()[0] == n2
    finally:
        rt.close()


def test_a_failed_monthly_job_opens_an_alert_on_its_first_failure(runtime):
    rt = runtime
    assert "spot_check" in alerts.rare_jobs(rt.config["schedules"])
    assert "backfill" not in alerts.rare_jobs(rt.config["schedules"])
    with rt.conn() as c:
        rid = runs.claim(c, "spot_check", runs.manual_slot())
        runs.start(c, rid)
        runs.progress(c, rid, {"phase": "comparing", "symbols_done": 6, "symbols": 7})
        runs.finish(c, rid, "failed", {}, "second source unreachable")
        prog = runs.get(c, rid)["progress"]
    assert prog["phase"] == "failed" and prog["final"] == "failed"
    m = alerts.measure(rt, dt.datetime.now(dt.UTC))
    active, message, details = alerts._jobs_failing(m, rt.config)
    assert active and details["jobs"] == ["spot_check"]
    assert "the last run of spot_check failed" in message


def test_history_lineage_is_per_database(database_url):
    with psycopg.connect(database_url) as c:
        assert history.instance_id(c)


@pytest.mark.slow
def test_the_recovery_procedure_fences_a_queued_job_and_refuses_a_wrong_read_url(
        runtime, database_url, pg_server_url, template_db, redis_url, tmp_path):
    """OPERATIONS.md's recovery section, walked on a second install that had
    queued a job before the restore and whose ``read_url`` names a database
    that is not a standby: the queued job runs as its own restored run, never
    into the archive's, and the replica is refused, never ``ok``."""
    import uuid

    from tests.conftest import _as_url, _replace_db
    old = runtime
    _backfill(old)
    b = runs.execute(old, "backup", runs.manual_slot(), run_backup, params={})  # noqa: F841
    archived = {r[0]: r[1] for r in _runs(database_url)}
    made = []
    for prefix in ("appl_w_", "appl_r_"):
        name = prefix + uuid.uuid4().hex[:10]
        with psycopg.connect(pg_server_url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template_db}"'
                                                     if prefix == "appl_w_" else ""))
        made.append((name, _as_url(_replace_db(pg_server_url, name))))
    (_, url), (_, wrong_replica) = made
    with psycopg.connect(url) as c:  # another install: its own lineage
        c.execute("UPDATE appliance_instance SET id = gen_random_uuid()")
    quiet = {job: "0 0 1 1 *" for job in DEFAULTS["schedules"]}
    host = tmp_path / "second"
    host.mkdir()
    cfg = write_config(host / "appliance.yaml", url, redis_url, schedules=quiet,
                       data_dir=str(host / "var"),
                       database={"url": url, "read_url": wrong_replica},
                       backup={"path": old.config["backup"]["path"], "min_free_pct": 1})
    try:
        queued = _cli("appliance run disk_check --enqueue", cfg).stdout
        rid = int(re.search(r"run (\d+)", queued).group(1))
        assert rid in archived, "the queued run's id must name another run in the archive"
        cmds = _recovery_commands()
        _cli(cmds[0], cfg)
        res = json.loads(_cli(cmds[2], cfg).stdout)
        assert res["status"] == "ok" and res["fence"]["repointed"] == 1, res
        assert "error" not in res["alerts"]
        _cli("appliance worker --burst", cfg)
        after = {r[0]: r[1:] for r in _runs(url)}
        assert {k: v[0] for k, v in after.items() if k in archived} == archived
        mine = [k for k, v in after.items() if v[0] == "disk_check" and k not in archived]
        assert len(mine) == 1 and after[mine[0]][1] == "ok", after
        assert not [v for v in after.values() if v[1] in ("queued", "running")]
        for cmd in cmds[3:]:
            if cmd.startswith("appliance kept-databases --drop"):
                kept = _cli("appliance kept-databases", cfg).stdout.split()
                name = next(k for k in kept if "_old_" in k)
                cmd = re.sub(r"market_data_old_\S+", name, cmd)
            _cli(cmd, cfg)
        # step 6's checks, and the daily `appliance status`: the replica is refused, with why
        from appliance.web import create_app
        rt = Runtime.from_path(cfg)
        rt.open()
        try:
            client = create_app(runtime=rt).test_client()
            h = client.get("/health").get_json()
            assert h["replica"]["state"] == "refused" and "not a standby" in h["replica"]["reason"]
            assert client.get("/api/v1/status").status_code == 200
            assert client.get("/api/v1/symbols").status_code == 200
        finally:
            rt.close()
        st = _cli("appliance status", cfg, check=False)
        assert st.returncode != 0 and "refused" in st.stdout and "not a standby" in st.stdout
    finally:
        _drop_kept(url, backups.db_name(url))
        with psycopg.connect(pg_server_url, autocommit=True) as c:
            for name, _ in made:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
