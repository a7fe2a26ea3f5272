"""A backup process killed mid-dump and a disk that fills up during a dump:
no partial archive is left where backups are looked for, older backups stay
byte for byte as they were, an alert opens and the next backup is good.

Both run `appliance backup` as a real process; a lock held on ``splits`` makes
pg_dump wait after it has opened its output file, so the fault lands mid-dump.
(tests/integration/test_backups.py covers the in-process variants.)
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import psycopg
import pytest

from appliance.alerts import rules as alerts
from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.ops import backups
from appliance.ops.backups import run_backup
from appliance.runtime.runtime import Runtime

from .helpers import cli, kill_group, wait_until

pytestmark = pytest.mark.reliability


@pytest.fixture
def tmpfs(tmpfs):
    """A 32 MiB tmpfs of the test's own (tests/conftest.py's)."""
    return tmpfs("32m")


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.iterdir()) if p.is_file()}


def _visible(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))


def _loaded_runtime(path: Path) -> Runtime:
    rt = Runtime.from_path(path)
    rt.open()
    assert runs.execute(rt, "backfill", runs.manual_slot(), run_backfill)["status"] == "ok"
    return rt


def _backup(rt) -> dict:
    return runs.execute(rt, "backup", runs.manual_slot(), run_backup)


def _open_alerts(rt) -> dict[str, str]:
    with rt.conn() as c:
        return dict(c.execute("SELECT key, message FROM alerts WHERE status = 'open'"))


def test_a_backup_process_killed_mid_dump_leaves_older_backups_intact(
        config_factory, database_url, survived):
    path = config_factory(alerts={"job_failures_max": 1},
                          jobs={"timeout_seconds": 10, "retries": 0})
    rt = _loaded_runtime(path)
    bdir = Path(rt.config["backup"]["path"])
    blocker = psycopg.connect(database_url)
    try:
        first = _backup(rt)
        assert first["status"] == "ok"
        before = _hashes(bdir)
        blocker.execute("LOCK TABLE splits IN ACCESS EXCLUSIVE MODE")
        p = cli(path, "backup")
        try:
            partial = wait_until(lambda: [n for n in os.listdir(bdir) if n.endswith(".partial")],
                                 60, "pg_dump's partial file")
        finally:
            kill_group(p)  # the CLI process and its pg_dump, as an OOM kill would
            blocker.rollback()
        # nothing that looks like a backup: only the older ones, byte-identical
        assert _visible(bdir) == sorted(before), _visible(bdir)
        assert {n: h for n, h in _hashes(bdir).items() if n in before} == before
        with rt.conn() as c:
            backups.rescan(c, rt.config)
            listed = [b["filename"] for b in backups.list_backups(c)]
            assert listed == [first["filename"]], listed
            # the killed run is failed once its timeout has passed ...
            c.execute("UPDATE job_runs SET heartbeat_at = now() - interval '11 s' "
                      "WHERE status = 'running'")
            assert runs.mark_stale(c, 10) == 1
        # ... and an alert says backups fail
        now = dt.datetime.now(dt.UTC)
        assert "job_failing" in alerts.evaluate(rt, now=now, notify=False)["opened"]
        assert "backup" in _open_alerts(rt)["job_failing"]
        # the next backup removes the leftover and is good; the alert resolves
        second = _backup(rt)
        assert second["status"] == "ok", second
        assert not [n for n in os.listdir(bdir) if n.startswith(".")], os.listdir(bdir)
        assert {n: h for n, h in _hashes(bdir).items() if n in before} == before
        assert "job_failing" in alerts.evaluate(rt, now=now, notify=False)["resolved"]
    finally:
        blocker.close()
        rt.close()
    survived(f"backup process group SIGKILLed mid-dump ({partial[0]} present): 0 partial "
             f"archives listed, {len(before)} older files byte-identical, the run marked failed "
             f"after its 10 s timeout, alert job_failing opened; the next backup "
             f"({second['size_bytes']} bytes) was ok and removed the leftover")


def test_a_disk_full_mid_dump_leaves_nothing_and_opens_an_alert(config_factory, database_url,
                                                                tmpfs, survived):
    path = config_factory(backup={"path": str(tmpfs), "min_free_pct": 0})
    rt = _loaded_runtime(path)
    blocker = psycopg.connect(database_url)
    try:
        first = _backup(rt)
        assert first["status"] == "ok"
        before = _hashes(tmpfs)
        blocker.execute("LOCK TABLE splits IN ACCESS EXCLUSIVE MODE")
        p = cli(path, "backup")  # the free-space check passes: the disk fills afterwards
        try:
            wait_until(lambda: [n for n in os.listdir(tmpfs) if n.endswith(".partial")], 60,
                       "pg_dump's partial file")
            st = os.statvfs(tmpfs)
            left = first["size_bytes"] // 3
            (tmpfs / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - left))
            blocker.rollback()
            out, _ = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                kill_group(p)
        assert p.returncode != 0, out
        assert "No space left on device" in out, out[-2000:]
        (tmpfs / "filler").unlink()
        # not a byte of the failed backup remains; the older backup is as it was
        assert _hashes(tmpfs) == before, sorted(os.listdir(tmpfs))
        opened = _open_alerts(rt)
        assert "backup_failed" in opened and "No space left" in opened["backup_failed"], opened
        second = _backup(rt)
        assert second["status"] == "ok"
        assert "backup_failed" not in _open_alerts(rt)
    finally:
        blocker.close()
        rt.close()
    survived(f"disk filled mid-dump ({left} bytes left for a {first['size_bytes']}-byte "
             f"archive): `appliance backup` exited {p.returncode} naming 'No space left on "
             f"device', 0 bytes of it left behind, {len(before)} older files byte-identical, "
             f"alert backup_failed opened; after freeing space the next backup was ok and the "
             f"alert resolved")
