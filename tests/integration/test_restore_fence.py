"""A restore is a fence: jobs queued before it never run into the restored
history, the alerts are evaluated again from the real state, and a restore
test of a file outside the catalogue is recorded as that file."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from rq import Queue

from appliance.alerts import rules as alerts
from appliance.config.loader import DEFAULTS
from appliance.ingest.backfill import run_backfill
from appliance.jobs import queue as queue_mod
from appliance.jobs import runs
from appliance.ops import backups
from appliance.ops.backups import run_backup
from appliance.runtime.runtime import Runtime
from tests.conftest import _as_url, _replace_db, write_config

QUIET = {job: "0 0 1 1 *" for job in DEFAULTS["schedules"]}


def _rows(url: str) -> dict[int, tuple]:
    with psycopg.connect(url) as c:
        return {r[0]: r[1:] for r in c.execute(
            "SELECT id, job, status, result::text FROM job_runs ORDER BY id")}


def _drop_kept(url: str) -> None:
    live = backups.db_name(url)
    with psycopg.connect(backups.url_for(url, "postgres"), autocommit=True) as c:
        for (name,) in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                 (f"{live}_old_%",)).fetchall():
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_host(pg_server_url, template_db, redis_url, tmp_path):
    """A second install: its own (migrated, new lineage) database, the same
    backup drive as the ``runtime`` fixture's config. Yields its config path."""
    name = "appl_f_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_server_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = _as_url(_replace_db(pg_server_url, name))
    with psycopg.connect(url) as c:
        c.execute("UPDATE appliance_instance SET id = gen_random_uuid()")
    host = tmp_path / "fresh"
    host.mkdir()
    path = write_config(host / "appliance.yaml", url, redis_url, schedules=QUIET,
                        backup={"path": str(tmp_path / "backups"), "min_free_pct": 1})
    yield path, url
    _drop_kept(url)
    with psycopg.connect(pg_server_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _archive(rt) -> dict:
    res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill, params={})
    assert res["status"] == "ok", res
    with rt.conn() as c:  # a backup failed once; the good one below resolves it after its dump
        alerts.open_now(c, "backup_failed", "critical", "backup failed: disk full", {})
    b = runs.execute(rt, "backup", runs.manual_slot(), run_backup, params={})
    assert b["status"] == "ok", b
    return b


def _worker_burst(path) -> str:
    p = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(path),
                        "worker", "--burst"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "APPLIANCE_LOG_LEVEL": "INFO"})
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr


def test_a_job_queued_before_a_restore_never_runs_into_the_restored_history(
        runtime, fresh_host):
    _archive(runtime)
    path, url = fresh_host
    rt = Runtime.from_path(path)
    rt.open()
    try:
        queued = queue_mod.enqueue(rt, "disk_check", {})
        archived = _rows(database_url_of(runtime))
        assert queued in archived, "the test needs the queued run's id to exist in the archive"
        res = backups.full_restore(rt, "latest")
        assert res["history"]["lineage"] == "other"
        assert res["fence"]["repointed"] == 1, res.get("fence")
        _worker_burst(path)
        after = _rows(url)
        # the archive's runs are as they were: none took a stale job's result
        for rid, row in archived.items():
            assert after[rid][0] == row[0], f"run {rid} changed its job after the restore"
        assert after[queued] == archived[queued], "the stale job ran into a restored run"
        mine = [rid for rid, r in after.items() if r[0] == "disk_check"]
        assert len(mine) == 1 and mine[0] > max(archived), after
        assert after[mine[0]][1] == "ok"
        assert not [r for r in after.values() if r[1] in ("queued", "running")]
        assert Queue(queue_mod.QUEUE_NAME, connection=rt.redis).count == 0
    finally:
        rt.close()


def test_a_stale_job_that_a_worker_already_held_is_not_run_into_a_restored_row(
        runtime, fresh_host):
    _archive(runtime)
    path, url = fresh_host
    rt = Runtime.from_path(path)
    rt.open()
    try:
        backups.full_restore(rt, "latest")
        before = _rows(url)
        stale = min(before)  # the archive's first run, a backfill
        res = runs.execute(rt, "disk_check", runs.manual_slot(), lambda *a, **k: {},
                           run_id=stale, rq_job_id="gone-" + uuid.uuid4().hex)
        assert res["status"] == "skipped" and res["run_id"] is None
        assert _rows(url)[stale] == before[stale]
    finally:
        rt.close()


def test_a_restore_evaluates_the_alerts_again_and_resolves_what_no_longer_holds(
        runtime, fresh_host):
    _archive(runtime)
    path, url = fresh_host
    rt = Runtime.from_path(path)  # as the CLI does: the pool is not opened first
    try:
        res = backups.full_restore(rt, "latest")
        assert "error" not in res["alerts"], res["alerts"]
        with psycopg.connect(url) as c:
            st, msg = c.execute("SELECT status, message FROM alerts WHERE key = 'backup_failed'"
                                " ORDER BY id DESC LIMIT 1").fetchone()
        assert st == "resolved"
        assert "restore" in msg
    finally:
        rt.close()


def database_url_of(rt) -> str:
    return rt.endpoints.database_url


def test_a_restore_test_of_a_copy_outside_the_catalogue_is_recorded_as_that_copy(
        runtime, tmp_path):
    from appliance.ops.backups import run_restore_test
    rt = runtime
    b = _archive(rt)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    src = Path(b["path"])
    copy = elsewhere / src.name
    copy.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    (elsewhere / src.with_suffix(".json").name).write_text(
        src.with_suffix(".json").read_text())
    res = runs.execute(rt, "restore_test", runs.manual_slot(), run_restore_test,
                       params={"backup": str(copy)})
    assert res["status"] == "failed" and "truncated" in res["error"]
    assert res["backup_id"] is None and res["path"] == str(copy)
    with rt.conn() as c:
        row = c.execute("SELECT path, restore_test_status FROM backups WHERE id = %s",
                        (b["backup_id"],)).fetchone()
        assert row == (str(src), None), "the intact archive was marked by its copy's test"
        alerts.evaluate(rt)
        assert c.execute("SELECT count(*) FROM alerts WHERE key = 'restore_test_failed' "
                         "AND status IN ('pending', 'open')").fetchone()[0] == 0
        ev = [r[0] for r in c.execute("SELECT message FROM events WHERE kind = 'restore_test'")]
    assert any(str(copy) in m and "not in the catalogue" in m for m in ev), ev


def _cli(cfg, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=300)


def test_a_restore_of_a_missing_or_unusable_archive_says_it_cannot(runtime, config_path,
                                                                    tmp_path):
    gone = tmp_path / "nowhere" / "market_data_20260101_000000.dump"
    p = _cli(config_path, "restore", str(gone))
    out = p.stdout + p.stderr
    assert p.returncode == 1
    assert "Cannot restore" in out and "no archive" in out and str(gone) in out, out
    assert "no manifest" not in out and "--yes" not in out, out
    p = _cli(config_path, "restore", str(gone), "--yes")  # said as the plan says it
    out = p.stdout + p.stderr
    assert p.returncode == 1 and f"Cannot restore: no archive at {gone}" in out, out
    b = _archive(runtime)
    src = Path(b["path"])
    with open(src, "r+b") as f:
        f.truncate(src.stat().st_size // 2)
    p = _cli(config_path, "restore", str(src))
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "Cannot restore" in out and "truncated" in out, out
    assert "--yes" not in out, out
    # with --yes: refused before any job is suspended or waited for
    p = _cli(config_path, "restore", str(src), "--yes")
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "Cannot restore" in out and "truncated" in out, out
    assert "suspended" not in out and "backfill lock" not in out, out

    # the same size, other bytes: the plan reads the whole file and says so
    b = _archive(runtime)
    src = Path(b["path"])
    with open(src, "r+b") as f:
        f.seek(src.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    p = _cli(config_path, "restore", str(src))
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "Cannot restore" in out and "damaged" in out, out
    assert "sha256 mismatch" in out and "--yes" not in out, out
    # and the catalogue no longer calls it fine
    lines = _cli(config_path, "backups").stdout.splitlines()
    listed = [i for i, ln in enumerate(lines) if b["filename"] in ln
              and not ln.strip().startswith("why:")]
    assert len(listed) == 1 and "restore test: failed" in lines[listed[0]], lines
    # with the reason, there and on the console's Backups page
    why = lines[listed[0] + 1].strip()
    assert why.startswith("why: ") and "sha256 mismatch" in why, lines
    from appliance.web import create_app
    html = create_app(runtime=runtime).test_client().get("/backups").get_data(as_text=True)
    assert why[len("why: "):][:60] in html.replace("&#39;", "'"), html


def test_a_failing_alert_evaluation_fails_the_restore_loudly(runtime, fresh_host):
    """The evaluation after the swap really fails (the restored database
    refuses the alert events): the restore raises, naming that step."""
    from appliance.core.errors import BackupError
    rt = runtime
    with rt.conn() as c:
        # an archived alert whose condition no longer holds: resolving it writes an event
        c.execute("""INSERT INTO alerts (key, severity, status, message, details, opened_at)
                     VALUES ('disk_low_data', 'warning', 'open', 'low disk', '{}', now())""")
        c.execute("""CREATE FUNCTION no_alert_events() RETURNS trigger LANGUAGE plpgsql AS
                     $$ BEGIN RAISE EXCEPTION 'alert events refused'; END $$""")
        c.execute("""CREATE TRIGGER no_alert_events BEFORE INSERT ON events FOR EACH ROW
                     WHEN (NEW.kind = 'alert' AND NEW.message LIKE 'alert disk_low_data %')
                     EXECUTE FUNCTION no_alert_events()""")
    _archive(rt)
    path, url = fresh_host
    second = Runtime.from_path(path)
    try:
        with pytest.raises(BackupError, match="evaluating the alerts after it failed") as ei:
            backups.full_restore(second, "latest")
        assert "alert events refused" in ei.value.message
        assert "was restored" in ei.value.message
    finally:
        second.close()


def test_a_job_taken_off_the_queue_before_the_swap_runs_as_its_restored_run(
        runtime, fresh_host):
    """A worker had taken the job (it waits for the restore to end): when it
    starts, its run is found again under its RQ job id, never the archive's."""
    _archive(runtime)
    path, url = fresh_host
    rt = Runtime.from_path(path)
    rt.open()
    try:
        old_id = queue_mod.enqueue(rt, "disk_check", {})
        with rt.conn() as c:
            rq_id = runs.get(c, old_id)["rq_job_id"]
        Queue(queue_mod.QUEUE_NAME, connection=rt.redis).remove(rq_id)  # a worker has it
        archived = _rows(database_url_of(runtime))
        backups.full_restore(rt, "latest")
        from appliance.alerts.rules import disk_check
        res = runs.execute(rt, "disk_check", runs.manual_slot(), disk_check,
                           run_id=old_id, rq_job_id=rq_id)
        assert res["status"] == "ok" and res["run_id"] != old_id, res
        after = _rows(url)
        assert after[old_id] == archived[old_id], "the held job ran into the archive's run"
        assert after[res["run_id"]][:2] == ("disk_check", "ok")
    finally:
        rt.close()
