"""Backups, restore tests and the full restore on real PostgreSQL and Redis.

The full-disk cases use a real tmpfs mounted for the test (root is needed; the
tests skip themselves when mounting is not permitted).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from appliance.core.errors import BackupError, LockBusy
from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.ops import backups
from appliance.ops.backups import run_backup, run_restore_test
from appliance.ops.backups.catalogue import resolve_backup
from appliance.ops.statusview import render_lines, snapshot
from appliance.runtime.runtime import Runtime
from appliance.store.locks import BACKFILL_LOCK
from tests.minute_store import store_minutes
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
DATA_TABLES = ("market_data", "symbols", "symbol_stats", "splits", "missing_sessions",
               "revisions", "backfill_checkpoints")


# --------------------------------------------------------------------------- helpers

def _backfill(rt):
    from appliance import store
    with rt.conn() as c:  # the symbols table as `appliance up` leaves it (a restore syncs it)
        store.sync_symbols(c, rt.config.symbols)
    res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill, params={})
    assert res["status"] == "ok", res
    return res


def _backup(rt):
    return runs.execute(rt, "backup", runs.manual_slot(), run_backup, params={})


def _restore_test(rt, backup="latest"):
    return runs.execute(rt, "restore_test", runs.manual_slot(), run_restore_test,
                        params={"backup": str(backup)})


def _fingerprint(url: str) -> dict:
    """Row counts of the data tables and a checksum of every candle."""
    with psycopg.connect(url) as c:
        out = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in DATA_TABLES}
        out["md5"] = c.execute(
            """SELECT md5(string_agg(m::text, '|' ORDER BY symbol, ts)) FROM market_data m"""
        ).fetchone()[0]
    return out


def _server_url(url: str) -> str:
    return backups.url_for(url, "postgres")


def _databases(url: str, like: str) -> list[str]:
    with psycopg.connect(_server_url(url), autocommit=True) as c:
        return [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                        (like,))]


def _own_databases(url: str) -> list[str]:
    """The databases of this test: its own and those named after it (a restore
    test's scratch database); other tests' (xdist workers) are not its business."""
    return _databases(url, backups.db_name(url) + "%")


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def _events(rt, kind=None):
    with rt.conn() as c:
        return [r[0] for r in c.execute(
            "SELECT message FROM events WHERE %s::text IS NULL OR kind = %s ORDER BY id",
            (kind, kind))]


def _open_alerts(rt):
    with rt.conn() as c:
        return c.execute("SELECT key, severity, message FROM alerts WHERE status = 'open'"
                         ).fetchall()


@pytest.fixture
def loaded(runtime):
    _backfill(runtime)
    return runtime


def _runtime_with(config_factory, **overrides) -> Runtime:
    rt = Runtime.from_path(config_factory(**overrides))
    rt.open()
    return rt


# --------------------------------------------------------------------------- backup

def test_backup_writes_an_archive_and_a_manifest_from_one_snapshot(loaded, database_url):
    rt = loaded
    res = _backup(rt)
    assert res["status"] == "ok", res
    bdir = Path(rt.config["backup"]["path"])
    name = res["filename"]
    assert name.startswith("market_data_") and name.endswith(".dump")
    assert _files(bdir) == [name, name[:-5] + ".json"]
    m = json.loads((bdir / (name[:-5] + ".json")).read_text())
    archive = bdir / name
    assert m["archive"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert m["archive"]["size_bytes"] == archive.stat().st_size
    assert m["archive"]["toc_entries"] > 10
    from appliance import __version__
    from appliance.store import pool as db
    assert m["appliance_version"] == __version__
    assert m["schema_version"] == db.latest_version()
    assert m["postgres"]["server_version"]
    # plain PostgreSQL is the only store: the manifest names no TimescaleDB
    assert set(m["database"]) == {"name", "size_bytes"}
    assert m["config_sha256"] == rt.config.sha256
    assert m["duration_seconds"] > 0
    fp = _fingerprint(database_url)
    assert m["row_counts"]["tables"]["market_data"] == fp["market_data"] > 0
    assert set(m["row_counts"]["symbols"]) == {"AAPL", "MSFT"}
    assert sum(m["row_counts"]["symbols"].values()) == fp["market_data"]
    assert m["validation"]["candles"] == fp["market_data"]
    # the catalogue
    with rt.conn() as c:
        rows = backups.list_backups(c)
    assert len(rows) == 1 and rows[0]["filename"] == name and rows[0]["status"] == "ok"
    assert rows[0]["sha256"] == m["archive"]["sha256"]
    assert rows[0]["manifest"]["candles"] == fp["market_data"]
    json.dumps(rows)  # JSON-friendly as it is
    # progress steps a client can poll
    with rt.conn() as c:
        prog = runs.get(c, res["run_id"])["progress"]
    assert prog["phase"] == "done"
    assert [s["status"] for s in prog["steps"]] == ["ok"] * len(prog["steps"])


def test_manifest_counts_are_those_of_the_dump_snapshot_while_rows_are_written(
        loaded, database_url):
    """Rows inserted while pg_dump runs are neither in the archive nor in the counts."""
    rt = loaded
    stop = threading.Event()

    def writer():
        with psycopg.connect(database_url, autocommit=True) as c:
            i = 0
            while not stop.is_set():
                c.execute("INSERT INTO events (level, kind, message) VALUES ('info', 'x', %s)",
                          (f"noise {i}",))
                i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        res = _backup(rt)
    finally:
        stop.set()
        t.join()
    assert res["status"] == "ok"
    rt_res = _restore_test(rt, res["backup_id"])
    assert rt_res["status"] == "ok", rt_res


def test_rescan_rebuilds_the_catalogue_from_the_manifests_alone(loaded):
    rt = loaded
    a = _backup(rt)
    b = _backup(rt)
    with rt.conn() as c:
        c.execute("DELETE FROM backups")
    with rt.conn() as c:
        res = backups.rescan(c, rt.config)
        rows = backups.list_backups(c)
    assert res["manifests"] == 2 and res["added"] == 2
    assert [r["filename"] for r in rows] == [b["filename"], a["filename"]]
    assert all(r["status"] == "ok" and r["sha256"] for r in rows)


def test_rescan_calls_a_cut_short_archive_damaged_not_missing(loaded):
    """A truncated archive on disk was 'missing' after a rescan, which said
    it had marked none missing."""
    rt = loaded
    b = _backup(rt)
    src = Path(b["path"])
    with open(src, "r+b") as f:
        f.truncate(src.stat().st_size // 2)
    with rt.conn() as c:
        res = backups.rescan(c, rt.config)
        row = next(r for r in backups.list_backups(c) if r["filename"] == b["filename"])
        ev = c.execute("SELECT level, message FROM events WHERE kind = 'backup' "
                       "ORDER BY id DESC LIMIT 1").fetchone()
    assert (res["marked_damaged"], res["marked_missing"], row["status"]) == (1, 0, "damaged")
    assert ev[0] == "warning" and "1 damaged (size differs from the manifest)" in ev[1], ev
    src.unlink()
    with rt.conn() as c:
        res = backups.rescan(c, rt.config)
        row = next(r for r in backups.list_backups(c) if r["filename"] == b["filename"])
    assert (res["marked_damaged"], res["marked_missing"], row["status"]) == (0, 1, "missing")


def test_latest_on_an_unmounted_drive_says_the_drive_is_not_mounted(config_factory, tmp_path):
    target = tmp_path / "drive"
    target.mkdir()  # a folder on the root filesystem where the drive should be
    rt = _runtime_with(config_factory, backup={"path": str(target), "require_mount": True})
    try:
        with pytest.raises(BackupError, match="no backup found .*; the backup drive is not "
                                              "mounted"):
            resolve_backup(rt.config, "latest", None)
        # the catalogue still lists an archive taken while the drive was there:
        # the listing, /api/v1/status and `appliance status` say it is unreadable
        with rt.conn() as conn:
            conn.execute("""INSERT INTO backups (filename, path, created_at, size_bytes, status,
                                                 restore_test_status)
                            VALUES ('md-20261201T000000Z.dump', %s, now(), 1, 'ok', 'passed')""",
                         (str(target / "md-20261201T000000Z.dump"),))
        r = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config",
                            str(rt.config.path), "backups"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("the backup drive is not mounted ("), r.stdout
        assert "md-20261201T000000Z.dump" in r.stdout
        st = snapshot(rt)
        assert st["backups"]["drive_error"].startswith("the backup drive is not mounted (")
        lines = [t for _, t in render_lines(st)]
        at = next(i for i, t in enumerate(lines) if t.startswith("Backups    latest md-"))
        assert "cannot be read, tested or restored" in lines[at + 1], lines
        from appliance.web import create_app
        html = create_app(runtime=rt).test_client().get("/dashboard").get_data(as_text=True)
        card = html[html.index('id="card-backup"'):][:600]
        assert "the backup drive is not mounted (" in card and "degraded" in html[
            html.rindex('<div class="card', 0, html.index('id="card-backup"')):
            html.index('id="card-backup"')], card
    finally:
        rt.close()


def test_backup_refuses_an_unmounted_path_when_a_mount_is_required(config_factory, tmp_path):
    target = tmp_path / "not-mounted"
    rt = _runtime_with(config_factory, backup={"path": str(target), "require_mount": True})
    try:
        with pytest.raises(BackupError, match="not a mount point"):
            _backup(rt)
        assert not target.exists()
        assert any(k == "backup_failed" for k, _, _ in _open_alerts(rt))
    finally:
        rt.close()


def test_an_empty_mount_point_on_the_data_disk_is_no_drive(config_factory, tmpfs):
    # /srv (or /var) a partition of its own holding data_dir, the backup
    # drive's mount point an empty folder on it: the drive is not mounted
    disk = tmpfs("16m")
    mount_point = disk / "backup-drive"
    mount_point.mkdir()
    rt = _runtime_with(config_factory, data_dir=str(disk / "data"),
                       backup={"path": str(mount_point), "require_mount": True})
    try:
        with pytest.raises(BackupError, match="is on the filesystem of data_dir") as e:
            _backup(rt)
        assert "is the backup drive mounted?" in e.value.message
        assert not os.listdir(mount_point)  # nothing written on the system disk
        # the disk check and the console say so, not the system disk's free space
        from appliance.alerts.rules import disk_check
        checked = runs.execute(rt, "disk_check", runs.manual_slot(), disk_check, params={})
        assert "the backup drive is not mounted" in checked["disks"]["backup"]["error"]
        assert "free_pct" not in checked["disks"]["backup"]
        from appliance.web import create_app
        page = create_app(runtime=rt).test_client().get("/backups").get_data(as_text=True)
        assert "the backup drive is not mounted" in page and "not created yet" not in page
        # a restore of an archive the catalogue lists names the missing drive too
        with pytest.raises(BackupError, match="the backup drive is not mounted"):
            resolve_backup(rt.config, str(mount_point / "market_data_20240101_000000.dump"))
    finally:
        rt.close()


def test_backup_accepts_a_mounted_path_when_a_mount_is_required(config_factory, tmpfs):
    d = tmpfs("64m")
    rt = _runtime_with(config_factory, backup={"path": str(d), "require_mount": True,
                                               "min_free_pct": 1})
    try:
        assert _backup(rt)["status"] == "ok"
    finally:
        rt.close()


def test_backup_accepts_a_folder_on_a_mounted_drive_when_a_mount_is_required(config_factory,
                                                                              tmpfs):
    # The Ansible role's layout: the drive at the mount point, backups in a
    # folder on it owned by the service user.
    d = tmpfs("64m") / "market-data-backups"
    d.mkdir()
    rt = _runtime_with(config_factory, backup={"path": str(d), "require_mount": True,
                                               "min_free_pct": 1})
    try:
        assert _backup(rt)["status"] == "ok"
        assert any(f.endswith(".dump") for f in _files(d))
    finally:
        rt.close()


def test_backup_on_a_full_path_writes_nothing_and_raises_an_alert(config_factory, tmpfs):
    d = tmpfs("1m")
    (d / "keep.txt").write_text("operator's file")
    rt = _runtime_with(config_factory, backup={"path": str(d), "min_free_pct": 5})
    try:
        _backfill(rt)
        with pytest.raises(BackupError, match="not enough free space") as ei:
            _backup(rt)
        assert "needed" in str(ei.value) and "nothing was written" in str(ei.value)
        assert _files(d) == ["keep.txt"]
        alerts = _open_alerts(rt)
        assert [(k, s) for k, s, _ in alerts] == [("backup_failed", "critical")]
        assert any("not enough free space" in m for m in _events(rt, "backup"))
        # the Backups page says it too, not only the Alerts page
        from appliance.web import create_app
        page = create_app(runtime=rt).test_client().get("/backups").get_data(as_text=True)
        assert "Alert <code>backup_failed</code> (critical):" in page, page
        assert "not enough free space" in page
    finally:
        rt.close()


def test_a_lowered_backups_keep_frees_a_full_drive_for_the_next_backup(config_factory, tmpfs):
    """The disk_low_backup response: lower retention.backups_keep. Retention
    ran only after a backup, which the full drive refused first: nothing was
    freed. Now a backup short of space applies retention first."""
    d = tmpfs("64m")
    backup = {"path": str(d), "min_free_pct": 1}
    rt = _runtime_with(config_factory, backup=backup, retention={"backups_keep": 20})
    made = []
    try:
        _backfill(rt)
        made.append(_backup(rt)["filename"])  # the first is estimated from the database
        # then the drive nearly full: room for a few archives
        size = (d / made[0]).stat().st_size
        free = os.statvfs(d).f_bavail * os.statvfs(d).f_frsize
        (d / "filler").write_bytes(b"\0" * (free - 5 * size - 700_000))
        with pytest.raises(BackupError, match="not enough free space"):
            for _ in range(20):
                made.append(_backup(rt)["filename"])
    finally:
        rt.close()
    assert len(made) >= 3, made
    rt = _runtime_with(config_factory, backup=backup, retention={"backups_keep": 2})
    try:
        res = _backup(rt)
        assert res["status"] == "ok", res
        kept = sorted(f for f in _files(d) if f.endswith(".dump"))
        assert kept == sorted([made[-1], res["filename"]]), (kept, made)
        assert sorted(res["retention_deleted"]) == sorted(made[:-1])
        assert not [k for k, _, _ in _open_alerts(rt) if k == "backup_failed"]
    finally:
        rt.close()


def test_disk_filling_up_midway_leaves_nothing_and_older_backups_intact(
        config_factory, tmpfs, monkeypatch):
    """The estimate is wrong (the free-space check passes), the disk fills
    during pg_dump: the partial file goes, the older backup stays as it was."""
    d = tmpfs("2m")
    rt = _runtime_with(config_factory, backup={"path": str(d), "min_free_pct": 0})
    try:
        _backfill(rt)
        monkeypatch.setattr(backups.archive, "estimate_archive_size", lambda conn, cfg: (1, "test"))
        first = _backup(rt)
        assert first["status"] == "ok"
        before = {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in _files(d)}
        # leave less room than one archive
        free = os.statvfs(d).f_bavail * os.statvfs(d).f_frsize
        (d / "filler").write_bytes(b"\0" * max(0, free - first["size_bytes"] // 3))
        with pytest.raises(BackupError, match="pg_dump failed: .*No space left on device"):
            _backup(rt)
        (d / "filler").unlink()
        after = {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in _files(d)}
        assert after == before
        assert any(k == "backup_failed" for k, _, _ in _open_alerts(rt))
        # the next good backup resolves the alert
        assert _backup(rt)["status"] == "ok"
        assert _open_alerts(rt) == []
    finally:
        rt.close()


def _pg_dump_pids(marker: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"pg_dump") and any(marker.encode() in a for a in cmd):
            out.append(int(p.name))
    return out


def test_a_pg_dump_killed_mid_dump_leaves_no_partial_file(loaded, database_url):
    rt = loaded
    bdir = Path(rt.config["backup"]["path"])
    first = _backup(rt)
    before = _files(bdir)
    # a lock makes pg_dump wait mid-dump (after it opened its output file)
    blocker = psycopg.connect(database_url)
    blocker.execute("LOCK TABLE splits IN ACCESS EXCLUSIVE MODE")
    errors = []

    def go():
        try:
            _backup(rt)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=go)
    t.start()
    try:
        pids = wait_until(lambda: _pg_dump_pids(str(bdir)), 30, "pg_dump running", 0.05)
        wait_until(lambda: any(".partial" in n for n in _files(bdir)), 30,
                   "a .partial file", 0.05)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    finally:
        blocker.rollback()
        blocker.close()
        t.join(60)
    assert errors and "pg_dump failed" in str(errors[0]) and "signal 9" in str(errors[0])
    assert _files(bdir) == before
    assert first["filename"] in before


def test_a_killed_backup_process_leaves_only_a_hidden_partial_that_the_next_run_removes(
        loaded, database_url, config_path):
    rt = loaded
    bdir = Path(rt.config["backup"]["path"])
    blocker = psycopg.connect(database_url)
    blocker.execute("LOCK TABLE splits IN ACCESS EXCLUSIVE MODE")
    code = ("import sys; from appliance.runtime.runtime import Runtime; from appliance.jobs import runs;"
            " from appliance.ops.backups import run_backup; rt = Runtime.from_path(sys.argv[1]);"
            " rt.open(); runs.execute(rt, 'backup', runs.manual_slot(), run_backup)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(config_path)], cwd=ROOT)
    try:
        wait_until(lambda: any(".partial" in n for n in _files(bdir)), 30,
                   "a .partial file", 0.05)
        dump_pids = _pg_dump_pids(str(bdir))
        proc.kill()
        proc.wait()
        # pg_dump dies with its parent
        wait_until(lambda: all(not Path(f"/proc/{p}").exists()
                               or b"zombie" in Path(f"/proc/{p}/status").read_bytes().lower()
                               for p in dump_pids), 30, "pg_dump gone with its parent", 0.05)
    finally:
        blocker.rollback()
        blocker.close()
    leftovers = _files(bdir)
    assert leftovers and all(n.startswith(".") and n.endswith(".partial") for n in leftovers)
    with rt.conn() as c:
        backups.rescan(c, rt.config)
        assert backups.list_backups(c) == []
    res = _backup(rt)
    assert res["status"] == "ok"
    assert _files(bdir) == [res["filename"], res["filename"][:-5] + ".json"]
    assert any("leftover" in m for m in _events(rt, "backup"))


def test_a_client_older_than_the_server_is_a_clear_error(loaded, monkeypatch, tmp_path):
    old = tmp_path / "oldbin"
    old.mkdir()
    for tool in ("pg_dump", "pg_restore"):
        f = old / tool
        f.write_text("#!/bin/sh\necho '%s (PostgreSQL) 9.6.24'\n" % tool)  # noqa: UP031
        f.chmod(0o755)
    monkeypatch.setenv("APPLIANCE_PG_BIN_DIR", str(old))
    with pytest.raises(BackupError, match="version mismatch.*older"):
        _backup(loaded)
    assert _files(Path(loaded.config["backup"]["path"])) == []


# --------------------------------------------------------------------------- retention

def test_retention_keeps_exactly_n_and_never_the_newest_passed_one(config_factory):
    rt = _runtime_with(config_factory, retention={"backups_keep": 2})
    try:
        _backfill(rt)
        first = _backup(rt)
        assert _restore_test(rt, first["backup_id"])["status"] == "ok"
        made = [first] + [_backup(rt) for _ in range(3)]
        bdir = Path(rt.config["backup"]["path"])
        with rt.conn() as c:
            ok = [r["filename"] for r in backups.list_backups(c) if r["status"] == "ok"]
            deleted = [r["filename"] for r in backups.list_backups(c) if r["status"] == "deleted"]
        # the newest two, plus the newest one whose restore test passed
        assert ok == [made[3]["filename"], made[2]["filename"], made[0]["filename"]]
        assert deleted == [made[1]["filename"]]
        assert sorted(n for n in _files(bdir) if n.endswith(".dump")) == sorted(ok)
        assert any(f"backup {made[1]['filename']} deleted by retention" in m
                   for m in _events(rt, "backup"))
        # once a newer one passes, the old passed one goes too: exactly N stay
        assert _restore_test(rt, made[3]["backup_id"])["status"] == "ok"
        _backup(rt)
        with rt.conn() as c:
            ok = [r["filename"] for r in backups.list_backups(c) if r["status"] == "ok"]
        assert len(ok) == 2 and made[3]["filename"] in ok
        assert len([n for n in _files(bdir) if n.endswith(".dump")]) == 2
    finally:
        rt.close()


# --------------------------------------------------------------------------- restore test

def test_restore_test_passes_and_leaves_the_live_database_untouched(loaded, database_url):
    rt = loaded
    b = _backup(rt)
    live_before = _fingerprint(database_url)
    dbs_before = _own_databases(database_url)
    res = _restore_test(rt, "latest")
    assert res["status"] == "ok", res
    assert res["backup_id"] == b["backup_id"]
    assert res["validation"]["candles"] == live_before["market_data"]
    assert res["validation"]["validated"] + res["validation"]["invalid"] == \
        live_before["market_data"]
    assert _fingerprint(database_url) == live_before
    assert _own_databases(database_url) == dbs_before  # the scratch database is gone
    with rt.conn() as c:
        row = backups.get_backup(c, b["backup_id"])
        prog = runs.get(c, res["run_id"])["progress"]
    assert row["restore_test_status"] == "passed"
    assert row["restore_test_seconds"] > 0
    result = row["restore_test_result"]
    names = {x["check"] for x in result["checks"]}
    assert {"schema version", "rows market_data", "rows per symbol", "candles gaps"} <= names
    assert all(x["ok"] for x in result["checks"])
    assert [s["name"] for s in prog["steps"]] == [n for n, _ in backups.RESTORE_TEST_STEPS]
    assert all(s["status"] == "ok" for s in prog["steps"]), prog
    assert prog["phase"] == "passed"
    assert any("passed" in m for m in _events(rt, "restore_test"))


def _minute_fingerprint(url: str) -> tuple:
    """Minute sessions per yearly partition and a checksum of every row."""
    with psycopg.connect(url) as c:
        per = c.execute("""SELECT tableoid::regclass::text, count(*) FROM minute_bars
                           GROUP BY 1 ORDER BY 1""").fetchall()
        md5 = c.execute("""SELECT md5(string_agg(b::text, '|' ORDER BY symbol, session))
                           FROM minute_bars b""").fetchone()[0]
    return per, md5


def test_partitioned_minute_bars_pass_the_restore_test_and_come_back_whole(
        loaded, database_url):
    rt = loaded
    store_minutes(rt, "AAPL", "2003-12-22", "2004-01-09")  # two years without partition
    store_minutes(rt, "MSFT", "2024-03-04", "2024-03-08", seed=6)
    minutes = _minute_fingerprint(database_url)
    assert [p for p, _ in minutes[0]] == ["minute_bars_y2003", "minute_bars_y2004",
                                          "minute_bars_y2024"]
    b = _backup(rt)
    assert b["status"] == "ok", b
    m = json.loads((Path(rt.config["backup"]["path"]) / (b["filename"][:-5] + ".json"))
                   .read_text())
    tables = m["row_counts"]["tables"]
    # the parent is counted, as market_data is; its partitions are not tables of their own
    assert tables["minute_bars"] == sum(n for _, n in minutes[0])
    assert not [t for t in tables if t.startswith(("minute_bars_y", "market_data_y"))]
    res = _restore_test(rt, "latest")
    assert res["status"] == "ok", res
    with rt.conn() as c:
        checks = {x["check"]: x for x in
                  backups.get_backup(c, b["backup_id"])["restore_test_result"]["checks"]}
    assert checks["rows minute_bars"]["ok"]
    assert checks["rows minute_bars"]["restored"] == tables["minute_bars"]
    with rt.conn() as c:  # lost, then restored
        c.execute("TRUNCATE minute_bars")
    res = backups.full_restore(rt, "latest")
    try:
        assert res["status"] == "ok", res
        assert _minute_fingerprint(database_url) == minutes
    finally:
        with psycopg.connect(_server_url(database_url), autocommit=True) as c:
            for name in _databases(database_url, f"{backups.db_name(database_url)}_old_%"):
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def _assert_failed(rt, res, reason: str, database_url, live_before, dbs_before):
    assert res["status"] == "failed", res
    assert reason in res["error"], res["error"]
    with rt.conn() as c:
        row = backups.get_backup(c, res["backup_id"])
    assert row["restore_test_status"] == "failed"
    assert reason in row["restore_test_result"]["error"]
    assert _fingerprint(database_url) == live_before
    assert _own_databases(database_url) == dbs_before
    assert any(reason in m for m in _events(rt, "restore_test"))


def test_a_flipped_byte_fails_the_restore_test_with_a_sha256_mismatch(loaded, database_url):
    rt = loaded
    b = _backup(rt)
    live_before, dbs_before = _fingerprint(database_url), _own_databases(database_url)
    archive = Path(b["path"])
    _flip_byte(archive, archive.stat().st_size // 2)
    res = _restore_test(rt, b["backup_id"])
    _assert_failed(rt, res, "sha256 mismatch: manifest " + b["sha256"], database_url,
                   live_before, dbs_before)
    assert hashlib.sha256(archive.read_bytes()).hexdigest() in res["error"]


def test_a_truncated_archive_fails_the_restore_test_as_truncated(loaded, database_url):
    rt = loaded
    b = _backup(rt)
    live_before, dbs_before = _fingerprint(database_url), _own_databases(database_url)
    archive = Path(b["path"])
    os.truncate(archive, archive.stat().st_size * 2 // 3)
    res = _restore_test(rt, b["backup_id"])
    _assert_failed(rt, res, "archive truncated: manifest", database_url, live_before, dbs_before)


def test_a_truncated_archive_with_a_matching_manifest_is_caught_by_pg_restore(
        loaded, database_url):
    """The manifest is rewritten to match the truncated file: the checksums
    agree, the table of contents is intact, pg_restore still finds the end missing."""
    rt = loaded
    b = _backup(rt)
    live_before, dbs_before = _fingerprint(database_url), _own_databases(database_url)
    archive = Path(b["path"])
    os.truncate(archive, archive.stat().st_size * 2 // 3)
    mpath = archive.with_suffix(".json")
    m = json.loads(mpath.read_text())
    m["archive"]["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
    m["archive"]["size_bytes"] = archive.stat().st_size
    mpath.write_text(json.dumps(m))
    res = _restore_test(rt, str(archive))
    _assert_failed(rt, res, "archive truncated: pg_restore failed", database_url,
                   live_before, dbs_before)
    with rt.conn() as c:
        prog = runs.get(c, res["run_id"])["progress"]
    st = {s["name"]: s["status"] for s in prog["steps"]}
    assert st["verify sha256"] == "ok" and st["pg_restore --list"] == "ok"
    assert st["restore"] == "failed" and st["drop scratch database"] == "ok"


def test_a_manifest_that_disagrees_with_the_data_fails_saying_what_differed(
        loaded, database_url):
    rt = loaded
    b = _backup(rt)
    live_before, dbs_before = _fingerprint(database_url), _own_databases(database_url)
    mpath = Path(b["path"]).with_suffix(".json")
    m = json.loads(mpath.read_text())
    n = m["row_counts"]["tables"]["market_data"]
    m["row_counts"]["tables"]["market_data"] = n + 34
    m["row_counts"]["symbols"]["AAPL"] += 34
    mpath.write_text(json.dumps(m))
    res = _restore_test(rt, str(mpath))
    _assert_failed(rt, res, f"row count market_data: manifest {n + 34}, restored {n}",
                   database_url, live_before, dbs_before)
    assert "rows for symbol AAPL: manifest" in res["error"]


def _mark_timescaledb(backup: dict) -> Path:
    """The manifest of ``backup`` rewritten as an archive of a TimescaleDB
    database would have it (older versions wrote ``database.timescaledb``)."""
    mpath = Path(backup["path"]).with_suffix(".json")
    m = json.loads(mpath.read_text())
    m["database"]["timescaledb"] = True
    mpath.write_text(json.dumps(m))
    return mpath


def test_a_timescaledb_archive_fails_the_restore_test_saying_why(loaded, database_url):
    rt = loaded
    b = _backup(rt)
    live_before, dbs_before = _fingerprint(database_url), _own_databases(database_url)
    mpath = _mark_timescaledb(b)
    res = _restore_test(rt, str(mpath))
    _assert_failed(rt, res, "taken from a TimescaleDB database", database_url,
                   live_before, dbs_before)
    assert "plain PostgreSQL" in res["error"]


def test_a_full_restore_of_a_timescaledb_archive_changes_nothing(loaded, database_url):
    rt = loaded
    b = _backup(rt)
    live = backups.db_name(database_url)
    before = _fingerprint(database_url)
    _mark_timescaledb(b)
    with pytest.raises(BackupError, match="taken from a TimescaleDB database"):
        backups.full_restore(rt, b["filename"])
    assert _fingerprint(database_url) == before
    assert _databases(database_url, f"{live}_%") == []
    assert rt.redis.get(backups.SUSPEND_KEY) is None


def test_restore_test_of_an_unknown_backup_is_an_error(loaded):
    with pytest.raises(BackupError, match="no backup 999"):
        _restore_test(loaded, 999)


def test_the_command_refuses_a_backup_it_cannot_test_and_records_nothing(loaded):
    """``appliance restore-test 999`` (a typo) or a deleted backup's id
    recorded a failed run, and restore_test_failed paged as critical."""
    rt = loaded
    b = _backup(rt)
    with rt.conn() as conn:
        conn.execute("UPDATE backups SET status = 'deleted' WHERE id = %s", (b["backup_id"],))
    for arg, says in (("999", "no backup 999 in the catalogue"),
                      (str(b["backup_id"]), "is deleted; only a backup with status ok")):
        r = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config",
                            str(rt.config.path), "restore-test", arg],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and says in r.stderr, (arg, r.stderr)
    with rt.conn() as conn:
        assert runs.recent(conn, job="restore_test") == []
        tested = conn.execute("SELECT count(*) FROM backups WHERE restore_test_at IS NOT NULL")
        assert tested.fetchone()[0] == 0


# --------------------------------------------------------------------------- full restore

def test_full_restore_brings_back_every_row_after_the_live_database_was_dropped(
        loaded, database_url, config_path):
    rt = loaded
    b = _backup(rt)
    before = _fingerprint(database_url)
    live = backups.db_name(database_url)
    rt.close()
    with psycopg.connect(_server_url(database_url), autocommit=True) as c:
        c.execute(f'DROP DATABASE "{live}" WITH (FORCE)')
    rt2 = Runtime.from_path(config_path)
    try:
        plan = backups.restore_plan_text(rt2, "latest")
        assert b["filename"] in plan and "does not exist" in plan
        msgs = []
        res = backups.full_restore(rt2, "latest", progress=msgs.append)
        assert res["status"] == "ok" and res["old_database"] is None
        assert _fingerprint(database_url) == before
        assert any("jobs suspended" in m for m in msgs) and msgs[-1] == "jobs resumed"
        assert rt2.redis.get(backups.SUSPEND_KEY) is None
        rt2.open()
        with rt2.conn() as c:  # the catalogue knows the backup again, from the disk
            assert [r["filename"] for r in backups.list_backups(c)] == [b["filename"]]
        assert _databases(database_url, f"{live}%") == [live]
    finally:
        rt2.close()


def test_going_back_a_version_restores_the_backup_made_before_the_update(
        loaded, database_url, config_path):
    # OPERATIONS.md, Software update: a backup, then a newer version migrates
    # the live database (here: a migration this code does not know); going
    # back, the older code refuses that schema and restores the backup
    from appliance.core.errors import ServiceError
    from appliance.store import pool as db
    rt = loaded
    b = _backup(rt)
    before = _fingerprint(database_url)
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, 'from_later')",
                  (db.latest_version() + 1,))
    with pytest.raises(ServiceError, match="newer than this appliance's"):
        db.migrate(database_url)
    res = backups.full_restore(rt, b["filename"])
    assert res["status"] == "ok" and res["old_database"], res
    assert _fingerprint(database_url) == before
    assert db.migrate(database_url) == []  # the schema is this version's again
    with psycopg.connect(database_url) as c:
        assert db.schema_version(c) == db.latest_version()


def test_a_backup_a_newer_version_made_is_refused_by_the_plan_and_before_any_step(
        loaded, database_url):
    # going back a version, ``latest`` is the newer version's backup: the plan
    # said it could be done and ``--yes`` refused it only after pg_restore
    from appliance.store import pool as db
    rt = loaded
    newer = db.latest_version() + 1
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, 'from_later')",
                  (newer,))
    b = _backup(rt)
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute("DELETE FROM schema_migrations WHERE version = %s", (newer,))
    before = _fingerprint(database_url)
    plan = backups.restore_plan_text(rt, b["filename"])
    assert plan.startswith(f"Cannot restore: the backup {b['filename']} has schema version "
                           f"{newer}, newer than this appliance's {newer - 1}"), plan
    assert "Restore it with that version or a later one" in plan
    with pytest.raises(BackupError, match=f"^Cannot restore: .* schema version {newer}, newer"):
        backups.full_restore(rt, b["filename"])
    assert _fingerprint(database_url) == before
    assert _databases(database_url, f"{backups.db_name(database_url)}_%") == []
    assert rt.redis.get(backups.SUSPEND_KEY) is None
    with rt.conn() as c:  # a whole archive: no failed restore test recorded against it
        assert backups.get_backup(c, b["backup_id"])["restore_test_status"] != "failed"
    # its restore test passes (the archive is whole) and says this version cannot restore it
    res = run_restore_test(rt, None, None, backup=b["filename"])
    assert res["status"] == "ok", res
    assert res["note"].startswith("the archive restores, but this appliance's restore refuses "
                                  f"it: the backup {b['filename']} has schema version {newer}")
    with rt.conn() as c:
        ev = c.execute("SELECT level, message FROM events WHERE kind = 'restore_test' "
                       "ORDER BY id DESC LIMIT 1").fetchone()
    assert ev == ("warning", res["note"]), ev


def test_a_restore_adds_the_symbols_configured_after_the_backup_and_queues_their_backfill(
        loaded):
    """The restored symbols table is the archive's: a symbol configured after
    the backup was listed only at the next reload, which then called it new."""
    from appliance import store
    from appliance.jobs import runs as runs_mod
    rt = loaded
    late = rt.config.symbols[-1].symbol
    with rt.conn() as c:  # the backup is made before ``late`` was configured
        store.sync_symbols(c, rt.config.symbols)
        c.execute("DELETE FROM market_data WHERE symbol = %s", (late,))
        c.execute("DELETE FROM symbols WHERE symbol = %s", (late,))
    b = _backup(rt)
    with rt.conn() as c:  # then it was: a reload put it in the table
        assert store.sync_symbols(c, rt.config.symbols)["added"] == [late]
    res = backups.full_restore(rt, b["filename"])
    assert res["symbols"]["added"] == [late] and res["symbols"]["removed"] == [], res
    with rt.conn() as c:
        active = c.execute("SELECT active FROM symbols WHERE symbol = %s", (late,)).fetchone()
        run = runs_mod.get(c, res["symbols"]["backfill_run"])
    assert active == (True,)
    assert (run["job"], run["status"], run["trigger"], run["params"]) == (
        "backfill", "queued", "restore", {"symbols": [late]}), run


def test_full_restore_replaces_a_damaged_database_and_keeps_the_old_one(
        loaded, database_url):
    rt = loaded
    _backup(rt)
    before = _fingerprint(database_url)
    live = backups.db_name(database_url)
    with rt.conn() as c:
        c.execute("DELETE FROM market_data WHERE symbol = 'MSFT'")
        c.execute("UPDATE market_data SET close = close * 2")
    damaged = _fingerprint(database_url)
    plan = backups.restore_plan_text(rt, "latest")
    assert "exists; it will be renamed, not dropped" in plan and f"{live}_old_" in plan
    assert _fingerprint(database_url) == damaged  # the plan changes nothing
    res = backups.full_restore(rt, "latest")
    try:
        assert res["status"] == "ok"
        assert _fingerprint(database_url) == before
        old = res["old_database"]
        assert old.startswith(f"{live}_old_")
        assert _fingerprint(backups.url_for(database_url, old)) == damaged
        # the pool of the running process reconnects to the restored database
        with rt.conn() as c:
            assert c.execute("SELECT count(*) FROM market_data").fetchone()[0] == \
                before["market_data"]
        assert _databases(database_url, f"{live}_restore_%") == []
    finally:
        with psycopg.connect(_server_url(database_url), autocommit=True) as c:
            for name in _databases(database_url, f"{live}_old_%"):
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_full_restore_of_a_corrupted_archive_changes_nothing(loaded, database_url):
    rt = loaded
    b = _backup(rt)
    with rt.conn() as c:
        c.execute("DELETE FROM market_data WHERE symbol = 'MSFT'")
    damaged = _fingerprint(database_url)
    live = backups.db_name(database_url)
    _flip_byte(Path(b["path"]), 100)
    with rt.conn() as c:
        before = c.execute("SELECT status, restore_test_status FROM backups WHERE filename = %s",
                           (b["filename"],)).fetchone()
    assert before == ("ok", None)
    with pytest.raises(BackupError, match="sha256 mismatch"):
        backups.full_restore(rt, b["filename"])
    assert _fingerprint(database_url) == damaged
    assert _databases(database_url, f"{live}_%") == []
    assert rt.redis.get(backups.SUSPEND_KEY) is None
    # what it found is kept: the catalogue, the events and the alert say so
    with rt.conn() as c:
        status, err = c.execute("""SELECT restore_test_status, restore_test_result->>'error'
                                   FROM backups WHERE filename = %s""",
                                (b["filename"],)).fetchone()
        ev = [r[0] for r in c.execute("SELECT message FROM events WHERE kind = 'restore_test'")]
    assert status == "failed" and "sha256 mismatch" in err and "found by a restore" in err, err
    assert any(b["filename"] in m and "sha256 mismatch" in m for m in ev), ev
    from appliance.alerts import rules
    assert "restore_test_failed" in rules.evaluate(rt)["opened"]


def test_the_backfill_lock_is_held_during_a_restore(loaded, database_url):
    rt = loaded
    _backup(rt)
    holder = psycopg.connect(database_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (BACKFILL_LOCK,))
    try:
        with pytest.raises(BackupError, match="backfill still holds its lock"):
            backups.full_restore(rt, "latest", wait_s=1)
    finally:
        holder.close()
    assert rt.redis.get(backups.SUSPEND_KEY) is None


def test_no_backup_starts_while_jobs_are_suspended(loaded):
    rt = loaded
    rt.redis.set(backups.SUSPEND_KEY, json.dumps({"reason": "restore of x"}))
    try:
        with pytest.raises(LockBusy, match="jobs are suspended"):
            _backup(rt)
    finally:
        rt.redis.delete(backups.SUSPEND_KEY)
    assert _files(Path(rt.config["backup"]["path"])) == []
    assert _open_alerts(rt) == []
    assert _backup(rt)["status"] == "ok"


def test_a_scratch_database_left_by_a_killed_restore_test_is_dropped_by_the_next(
        loaded, database_url):
    rt = loaded
    _backup(rt)
    live = backups.db_name(database_url)
    stale = f"{live}_rtest_{int(time.time()) - 7 * 86400}_abcdef"
    with psycopg.connect(_server_url(database_url), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{stale}"')
    res = _restore_test(rt)
    assert res["status"] == "ok"
    assert _databases(database_url, f"{live}_rtest_%") == []
