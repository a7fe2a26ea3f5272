"""Taking a backup: free space and mount checks, ``pg_dump -Fc`` into a hidden
file, a full read, the manifest written last, retention; and the job
suspension a full restore sets."""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from appliance import __version__, store
from appliance.alerts import rules as alerts
from appliance.alerts.disks import backup_drive_missing
from appliance.core.errors import ApplianceError, BackupError, LockBusy
from appliance.core.units import disk_usage, human_bytes
from appliance.core.version import source_commit
from appliance.jobs.registry import JobResult
from appliance.ops.backups.catalogue import backup_dir, upsert_backup
from appliance.ops.backups.common import (
    ALERT_KEY,
    BACKUP_LOCK,
    MANIFEST_FORMAT,
    NAME_RE,
    PARTIAL_RE,
    SUSPEND_KEY,
    SUSPEND_TTL_S,
    Steps,
    _fsync_dir,
    _fsync_file,
    db_name,
    sha256_file,
    tool_target,
    utcnow,
)
from appliance.ops.backups.manifest import manifest_path_for, snapshot_counts
from appliance.ops.backups.retention import apply_retention
from appliance.ops.backups.tools import (
    _first_error,
    find_tools,
    list_archive,
    read_archive,
    server_major,
)
from appliance.runtime.children import die_with_parent
from appliance.runtime.replica import primary_identifier, probe
from appliance.store import pool as db

log = logging.getLogger("appliance.backups")


def clean_leftovers(conn, bdir: Path) -> list[str]:
    """Remove what an interrupted backup left: hidden ``*.partial`` files and
    archives whose manifest (written last) never appeared. Call only while
    holding the backup lock."""
    removed = []
    if not bdir.is_dir():
        return removed
    for p in bdir.iterdir():
        orphan = NAME_RE.match(p.name) and not manifest_path_for(p).exists()
        if PARTIAL_RE.match(p.name) or orphan:
            try:
                p.unlink()
                removed.append(p.name)
            except OSError as e:
                log.warning("could not remove leftover %s: %s", p, e)
    if removed and conn is not None:
        store.add_event(conn, "warning", "backup",
                        f"removed {len(removed)} leftover file(s) of an interrupted backup",
                        {"files": removed, "path": str(bdir)})
    return removed


def estimate_archive_size(conn, cfg) -> tuple[int, str]:
    """Expected archive size and how it was estimated. With an earlier backup:
    its archive size scaled by the database's growth since, plus 25%; without
    one: the whole database size (archives are compressed and hold no index
    data, so this is an upper bound)."""
    dbsize = store.databases.current_size(conn)
    row = store.last_archive_and_database_size(conn)
    if row and row[1]:
        est = int(row[0] * max(1.0, dbsize / row[1]) * 1.25)
        return est, f"last archive {human_bytes(row[0])} scaled by database growth + 25%"
    return int(dbsize), f"database size {human_bytes(dbsize)} (no earlier backup)"


def check_free_space(conn, cfg, bdir: Path) -> dict:
    """Raises BackupError when ``bdir`` lacks estimate + backup.min_free_pct."""
    est, how = estimate_archive_size(conn, cfg)
    du = disk_usage(bdir)
    pct = float(cfg["backup"]["min_free_pct"])
    keep = int(du.total * pct / 100)
    need = est + keep
    info = {"free_bytes": du.free, "total_bytes": du.total, "estimate_bytes": est,
            "estimate": how, "keep_free_bytes": keep, "needed_bytes": need}
    if du.free < need:
        raise BackupError(
            f"not enough free space on {bdir}: {human_bytes(du.free)} free, {human_bytes(need)} needed "
            f"(estimated archive {human_bytes(est)} from {how}, plus backup.min_free_pct {pct:g}% of "
            f"{human_bytes(du.total)} kept free); nothing was written", permanent=True)
    return info


def _free_space(rt, cfg, lock_conn, bdir: Path) -> tuple[dict, list[str]]:
    """``check_free_space``; when the space is short, retention is applied
    first (it deletes only archives it would delete after this backup anyway)
    and the space checked again: lowering ``retention.backups_keep`` on a full
    drive freed nothing, since retention ran only after a backup the full
    drive refused. Returns (the space, the file names retention deleted)."""
    try:
        return check_free_space(lock_conn, cfg, bdir), []
    except BackupError:
        with rt.conn() as conn:
            early = apply_retention(conn, cfg)
        if not early:
            raise
        log.info("backup: not enough free space; retention deleted %s first", early)
        return check_free_space(lock_conn, cfg, bdir), early


def check_backup_path(cfg) -> Path:
    """The backup directory, created when missing, unless ``backup.require_mount``:
    then ``backup.path`` must already exist on a mounted filesystem other than
    the root one and the data directory's (the path itself or a folder on the
    drive, as the Ansible role lays it out), so that an unmounted external
    drive fails loudly instead of filling the system disk (an empty mount
    point on a /srv or /var partition too). A missing path is never created
    then: on an unmounted drive it would land on the system disk."""
    bdir = backup_dir(cfg)
    if cfg["backup"].get("require_mount"):
        if why := backup_drive_missing(cfg):
            raise BackupError(
                f"backup.path {bdir} is not a mount point nor a folder on one ({why}) and "
                f"backup.require_mount is true: is the backup drive mounted? Nothing was "
                f"written", permanent=True)
    else:
        try:
            bdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise BackupError(f"cannot create backup.path {bdir}: {e}", permanent=True) from None
    try:  # backups hold every secret the database holds: 0700, whatever the umask
        if bdir.stat().st_mode & 0o777 != 0o700:
            bdir.chmod(0o700)
    except OSError as e:
        log.warning("cannot make backup.path %s mode 0700: %s", bdir, e)
    if not os.access(bdir, os.W_OK | os.X_OK):
        raise BackupError(f"backup.path {bdir} is not writable by this user", permanent=True)
    return bdir


def jobs_suspended(rt) -> dict | None:
    try:
        v = rt.redis.get(SUSPEND_KEY)
    except Exception:  # noqa: BLE001 - Redis down: nothing can be suspended through it
        return None
    if v is None:
        return None
    try:
        return json.loads(v)
    except ValueError:
        return {"reason": v.decode(errors="replace") if isinstance(v, bytes) else str(v)}


def wait_while_suspended(rt, poll_s: float = 2.0, max_wait_s: float = SUSPEND_TTL_S) -> float:
    """For workers: block while ``appliance:jobs:suspended`` exists (a full
    restore is swapping the database); returns the seconds waited."""
    t0 = time.monotonic()
    while jobs_suspended(rt) and time.monotonic() - t0 < max_wait_s:
        time.sleep(poll_s)
    return time.monotonic() - t0


BACKUP_STEPS = [
    ("check backup path", "checking the backup path"),
    ("check free space", "checking free space"),
    ("pg_dump", "dumping"),
    ("count rows", "counting rows in the dump's snapshot"),
    ("verify archive", "verifying the archive (pg_restore --list, full read)"),
    ("sha256", "computing sha256"),
    ("write manifest", "writing the manifest"),
    ("retention", "applying retention"),
]


def create_backup(rt, report=None, run_id: int | None = None) -> dict:
    """Write one backup (archive + manifest) into backup.path; apply retention.

    Returns the result dict (status ok). Raises BackupError (also LockBusy) with
    a message that says what went wrong; then nothing new is left in the
    directory, older backups are untouched, an event is written by the caller
    (runs.execute) and the ``backup_failed`` alert is open."""
    cfg = rt.config
    steps = Steps(report, BACKUP_STEPS)
    url = rt.endpoints.database_url
    t0 = time.monotonic()
    lock_conn = None
    try:
        steps.start("check backup path")
        bdir = check_backup_path(cfg)
        susp = jobs_suspended(rt)
        if susp:
            raise LockBusy(f"jobs are suspended ({susp.get('reason', 'a restore is running')}); "
                              f"no backup now")
        lock_conn = db.connect(url, autocommit=True)
        if not store.locks.try_lock(lock_conn, BACKUP_LOCK):
            raise LockBusy("another backup is running; this one did not start")
        removed = clean_leftovers(lock_conn, bdir)
        steps.ok("check backup path", f"{bdir}" + (f"; removed leftovers {removed}" if removed
                                                   else ""))
        steps.start("check free space")
        space, early = _free_space(rt, cfg, lock_conn, bdir)
        steps.ok("check free space", f"{human_bytes(space['free_bytes'])} free, "
                                     f"{human_bytes(space['needed_bytes'])} needed"
                 + (f" after retention deleted {len(early)}" if early else ""))
        dump_url, source = dump_source(rt, cfg)
        res = _dump(rt, cfg, dump_url, bdir, steps, lock_conn, space, t0, run_id,
                    source=source)
        steps.start("retention")
        with rt.conn() as conn:
            resolved = alerts.resolve_now(conn, ALERT_KEY)
            deleted = apply_retention(conn, cfg)
        alerts.announce(rt, "resolved", resolved)
        steps.ok("retention", f"deleted {len(deleted)}" if deleted else "nothing to delete")
        res["retention_deleted"] = early + deleted
        steps.done()
        return res
    except BaseException as e:
        msg = e.message if isinstance(e, BackupError) else f"{e.__class__.__name__}: {e}"
        steps.fail(None, msg)
        if not isinstance(e, LockBusy):
            try:
                with rt.conn() as conn:
                    sev = "critical" if getattr(e, "permanent", False) else "warning"
                    opened = alerts.open_now(
                        conn, ALERT_KEY, sev,
                        f"backup failed: {msg}. Response: 1. Fix what the message names (the "
                        f"drive mounted, free space, backup.path). 2. 'appliance backup' (or "
                        f"Back up now in the console); the alert resolves with the next good "
                        f"backup.", {"path": str(backup_dir(cfg))})
                alerts.announce(rt, "open", opened)
            except Exception:  # the database may be what failed
                log.exception("could not open the backup alert")
        if isinstance(e, (ApplianceError, KeyboardInterrupt, SystemExit)):
            raise
        raise BackupError(msg) from e
    finally:
        if lock_conn is not None:
            lock_conn.close()


def dump_source(rt, cfg) -> tuple[str, str]:
    """Where pg_dump reads (``backup.source``): the primary, or the replica of
    ``database.read_url`` when it answers and keeps up; else the primary, with
    a warning event saying why."""
    primary = rt.endpoints.database_url
    if cfg["backup"]["source"] != "replica":
        return primary, "primary"
    read_url = cfg["database"]["read_url"]
    why = "database.read_url is empty"
    if read_url:
        st = probe(read_url, float(cfg["database"]["max_replica_lag_seconds"]),
                   primary_sysid=primary_identifier(primary))
        if st.serving_reads:
            return read_url, "replica"
        why = (f"the replica is {st.state} ({st.error})" if st.state in ("down", "refused")
               else f"the replica lags {st.lag_seconds} s")
    msg = f"backup.source is replica but {why}: dumping from the primary"
    log.warning(msg)
    with rt.conn() as conn:
        store.add_event(conn, "warning", "backup", msg, {"source": "primary"})
    return primary, "primary"


def _new_name(bdir: Path) -> tuple[str, dt.datetime]:
    while True:
        now = utcnow()
        name = f"market_data_{now:%Y%m%d_%H%M%S}.dump"
        if not (bdir / name).exists() and not manifest_path_for(bdir / name).exists():
            return name, now
        time.sleep(0.2)


def _dump_failure(errf, rc: int, bdir: Path) -> str:
    """Why pg_dump failed, from its stderr (a full disk says how full)."""
    errf.seek(0)
    err = errf.read().decode(errors="replace")
    why = _first_error(err) if err.strip() else f"killed by signal {-rc}" if rc < 0 \
        else f"exit code {rc}"
    if "No space left" in err or "could not write" in err:
        du = disk_usage(bdir)
        why += f" (backup path full: {human_bytes(du.free)} free)"
    return why


def _publish(tmp: Path, final: Path, mtmp: Path, manifest: dict) -> None:
    """Rename the checked archive into place, then write its manifest (the
    commit marker) the same way: a crash leaves no manifest without its
    archive."""
    os.chmod(tmp, 0o600)
    os.rename(tmp, final)
    with os.fdopen(os.open(mtmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
                   encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        json.dump(manifest, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.rename(mtmp, manifest_path_for(final))
    _fsync_dir(final.parent)


def _export_snapshot(snap_conn) -> str:
    """Open the repeatable-read transaction whose snapshot pg_dump and the
    manifest's counts share; return the snapshot's name."""
    snap_conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    snap_conn.read_only = True
    return store.export_snapshot(snap_conn)


def _catalogue(rt, final: Path, started: dt.datetime, manifest: dict, t0: float) -> int:
    """Record a published backup in the catalogue, with an event."""
    size, digest = manifest["archive"]["size_bytes"], manifest["archive"]["sha256"]
    with rt.conn() as conn:
        bid = upsert_backup(conn, filename=final.name, path=str(final), created_at=started,
                            size_bytes=size, sha256=digest, manifest=manifest)
        store.add_event(conn, "info", "backup",
                        f"backup {final.name} written: {human_bytes(size)}, "
                        f"{manifest['validation']['candles']} candles, "
                        f"{time.monotonic() - t0:.1f} s",
                        {"backup_id": bid, "filename": final.name, "size_bytes": size,
                         "sha256": digest})
    return bid


def _remove_unpublished(tmp: Path, mtmp: Path, final: Path, started: dt.datetime) -> None:
    """What a failed run wrote, never an older backup of the same name."""
    for p in (tmp, mtmp, final, manifest_path_for(final)):
        if p.exists() and (p in (tmp, mtmp) or not _is_older_backup(p, started)):
            try:
                p.unlink()
            except OSError:
                log.exception("could not remove %s", p)


def _manifest(cfg, url: str, name: str, started: dt.datetime, t0: float, dump_s: float,
              tools, info, counts: dict, snapshot: str, space: dict, run_id: int | None,
              archive: dict) -> dict:
    """What the manifest records: the archive, the versions, the counts of
    the dump's snapshot, and where it came from."""
    return {
        "format": MANIFEST_FORMAT,
        "kind": "market-data-appliance backup",
        "filename": name,
        "created_at": started.isoformat(),
        "finished_at": utcnow().isoformat(),
        "duration_seconds": round(time.monotonic() - t0, 3),
        "dump_seconds": round(dump_s, 3),
        "archive": archive,
        "postgres": {"server_version": info[0], "server_version_num": int(info[1]),
                     "pg_dump_version": tools.version},
        "appliance_version": __version__,
        "appliance_commit": source_commit(),  # a source checkout's; null for a package
        "schema_version": counts["schema_version"],
        "database": {"name": db_name(url), "size_bytes": int(info[2])},
        "row_counts": {"tables": counts["tables"], "symbols": counts["symbols"]},
        "validation": counts["validation"],
        "config_sha256": cfg.sha256,
        "snapshot": snapshot,
        "host": socket.gethostname(),
        "free_space_check": space,
        "job_run_id": run_id,
        "restore_tests": [],
    }


def _dump(rt, cfg, url, bdir, steps: Steps, lock_conn, space: dict, t0: float,
          run_id: int | None = None, *, source: str = "primary") -> dict:
    name, started = _new_name(bdir)
    final = bdir / name
    tmp = bdir / f".{name}.partial"
    mtmp = bdir / f".{manifest_path_for(final).name}.partial"
    published = False
    snap_conn = None
    proc = None
    errf = tempfile.TemporaryFile()
    try:
        major = server_major(lock_conn)
        tools = find_tools(rt, major)
        steps.start("pg_dump", f"{tools('pg_dump')} ({tools.major})")
        snap_conn = db.connect(url)
        snapshot = _export_snapshot(snap_conn)
        target, env = tool_target(url)
        td = time.monotonic()
        # without the columns' TOAST compression methods: an archive of a
        # server with LZ4 restores onto one without it (the embedded
        # PostgreSQL), and migrating the restored database sets LZ4 again
        # where its server has it (store.pool.toast_compression)
        proc = subprocess.Popen(
            [tools("pg_dump"), "--format=custom", f"--snapshot={snapshot}", "--no-password",
             "--no-toast-compression",
             f"--file={tmp}", f"--dbname={target}"],
            env=env, stdout=subprocess.DEVNULL, stderr=errf, preexec_fn=die_with_parent,
            umask=0o077)  # the archive is 0600 whatever the umask
        steps.start("count rows")
        counts = snapshot_counts(snap_conn)
        info = store.database_facts(snap_conn)
        steps.ok("count rows", f"{counts['validation']['candles']} candles, "
                               f"{len(counts['tables'])} tables")
        steps.phase, steps.current = steps.phases["pg_dump"], "pg_dump"
        steps.push()
        rc = proc.wait()
        dump_s = time.monotonic() - td
        snap_conn.rollback()
        snap_conn.close()
        snap_conn = None
        if rc != 0:
            raise BackupError(f"pg_dump failed: {_dump_failure(errf, rc, bdir)}")
        steps.ok("pg_dump", f"{human_bytes(tmp.stat().st_size)} in {dump_s:.1f} s")
        steps.start("verify archive")
        _fsync_file(tmp)
        entries = list_archive(tools, tmp)
        read_archive(tools, tmp)
        steps.ok("verify archive", f"{entries} TOC entries, archive reads to the end")
        steps.start("sha256")
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
        steps.ok("sha256", digest)
        steps.start("write manifest")
        manifest = _manifest(
            cfg, url, name, started, t0, dump_s, tools, info, counts, snapshot, space, run_id,
            archive={"sha256": digest, "size_bytes": size, "format": "custom",
                     "toc_entries": entries})
        manifest["source"] = source
        _publish(tmp, final, mtmp, manifest)
        published = True
        steps.ok("write manifest", manifest_path_for(final).name)
        bid = _catalogue(rt, final, started, manifest, t0)
        return {"status": "ok", "backup_id": bid, "filename": name, "path": str(final),
                "size_bytes": size, "sha256": digest, "candles": counts["validation"]["candles"],
                "dump_seconds": round(dump_s, 3), "schema_version": counts["schema_version"]}
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        errf.close()
        if snap_conn is not None:
            try:
                snap_conn.close()
            except Exception:  # noqa: BLE001
                pass
        if not published:
            _remove_unpublished(tmp, mtmp, final, started)


def _is_older_backup(p: Path, started: dt.datetime) -> bool:
    """Never remove a file this run did not create (its name is this run's,
    but be careful anyway: it must be at least as new as this run)."""
    try:
        return dt.datetime.fromtimestamp(p.stat().st_mtime, dt.UTC) < \
            started - dt.timedelta(seconds=2)
    except OSError:
        return True


class BackupResult(JobResult, total=False):
    """The ``backup`` job's result."""
    backup_id: int
    filename: str
    path: str
    size_bytes: int
    sha256: str
    candles: int
    dump_seconds: float
    schema_version: int
    #: file names retention deleted after this backup
    retention_deleted: list[str]
    run_id: int


def run_backup(rt, run_id, report) -> BackupResult:
    """The ``backup`` job: one ``pg_dump -Fc`` archive + manifest in
    ``backup.path``, then retention (``create_backup``). Result: status ok with
    backup_id, filename, size_bytes, sha256, run_id, … A failure raises
    BackupError (``permanent`` for a missing mount, too little free space or
    mismatched client tools: retrying does not help) after opening the
    ``backup_failed`` alert; ``runs.execute`` records the run and an event."""
    res = create_backup(rt, report, run_id=run_id)
    res["run_id"] = run_id
    return res
