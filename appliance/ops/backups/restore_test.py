"""The restore test: verify an archive, restore it into a scratch database,
compare it with its manifest, drop the scratch database. The live database
is never touched."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import psycopg

from appliance import store
from appliance.core.errors import BackupError
from appliance.jobs.registry import JobResult
from appliance.ops.backups.catalogue import BackupRef, record_restore_test, register, resolve_backup
from appliance.ops.backups.common import Steps, db_name, sha256_file, tool_target, url_for, utcnow
from appliance.ops.backups.manifest import compare_with_manifest, note_restore_test, snapshot_counts
from appliance.ops.backups.tools import (
    Tools,
    _create_db,
    _first_error,
    _maintenance_conn,
    _run_tool,
    drop_db,
    drop_stale_scratch,
    find_tools,
    list_archive,
    scratch_name,
    server_major,
)
from appliance.store import pool as db

log = logging.getLogger("appliance.backups")


RESTORE_TEST_STEPS = [
    ("verify sha256", "verifying sha256"),
    ("pg_restore --list", "listing the archive"),
    ("create scratch database", "creating the scratch database"),
    ("restore", "restoring"),
    ("count rows", "counting rows"),
    ("compare with manifest", "comparing with the manifest"),
    ("validation summary", "validating candles"),
    ("drop scratch database", "dropping the scratch database"),
]


class CheckFailed(Exception):
    def __init__(self, step: str, reason: str):
        super().__init__(reason)
        self.step = step
        self.reason = reason


def verify_archive_file(ref: BackupRef) -> dict:
    """Size and sha256 of the archive against its manifest; raises CheckFailed.
    An archive of a TimescaleDB database (written by older versions, whose
    manifest says ``database.timescaledb``) is refused: the appliance stores
    plain PostgreSQL only and cannot restore hypertables."""
    a, m = ref.archive, ref.manifest
    if (m.get("database") or {}).get("timescaledb"):
        raise CheckFailed("verify sha256", f"{a.name} was taken from a TimescaleDB database; "
                                           f"this version stores plain PostgreSQL only and "
                                           f"cannot restore it")
    if not a.exists():
        raise CheckFailed("verify sha256", f"archive missing: {a}")
    size = a.stat().st_size
    want_size = m["archive"].get("size_bytes")
    if want_size is not None and size < want_size:
        raise CheckFailed("verify sha256", f"archive truncated: manifest {want_size} bytes, "
                                           f"file {size} bytes")
    digest = sha256_file(a)
    want = m["archive"].get("sha256")
    if digest != want:
        raise CheckFailed("verify sha256", f"sha256 mismatch: manifest {want}, file {digest}")
    if want_size is not None and size != want_size:
        raise CheckFailed("verify sha256", f"size mismatch: manifest {want_size} bytes, "
                                           f"file {size} bytes")
    return {"sha256": digest, "size_bytes": size}


def restore_into(tools: Tools, url: str, dbname: str, archive: Path, jobs: int) -> float:
    """pg_restore --exit-on-error --jobs --no-owner into ``dbname``; seconds taken.
    Raises CheckFailed('restore', reason)."""
    target, env = tool_target(url, dbname)
    t = time.monotonic()
    rc, _, err = _run_tool([tools("pg_restore"), "--exit-on-error", f"--jobs={max(1, jobs)}",
                            "--no-owner", "--no-password", f"--dbname={target}", str(archive)], env)
    secs = time.monotonic() - t
    if rc != 0:
        first = _first_error(err)
        # a cut-off archive shows as a short read, or (its table of contents
        # intact, read with --jobs) as data blocks that are not there
        if "end of file" in err or "unexpected end" in err or "could not find block ID" in err:
            raise CheckFailed("restore", f"archive truncated: pg_restore failed: {first}")
        raise CheckFailed("restore", f"pg_restore failed: {first}")
    return secs


def check_restored(url: str, dbname: str, manifest: dict, steps: Steps | None = None) -> dict:
    """Counts in the restored database compared with the manifest. Returns
    {comparisons, mismatches, validation, counts}."""
    if steps:
        steps.start("count rows")
    with psycopg.connect(url_for(url, dbname), connect_timeout=10) as c:
        got = snapshot_counts(c)
    if steps:
        steps.ok("count rows", f"{got['validation']['candles']} candles in "
                               f"{len(got['tables'])} tables")
        steps.start("compare with manifest")
    comps, bad = compare_with_manifest(manifest, got)
    return {"comparisons": comps, "mismatches": bad, "validation": got["validation"],
            "counts": got}


def _check_toc(tools, ref: BackupRef) -> int:
    """The archive's table of contents reads and has the manifest's entries."""
    try:
        entries = list_archive(tools, ref.archive)
    except BackupError as e:
        raise CheckFailed("pg_restore --list", f"archive unreadable: {e.message}") from None
    want = ref.manifest["archive"].get("toc_entries")
    if want is not None and want != entries:
        raise CheckFailed("pg_restore --list", f"table of contents: manifest {want} "
                                               f"entries, archive {entries}")
    return entries


def _drop_scratch(url: str, mconn, scratch: str, live: str, steps: Steps,
                  error: str | None) -> str | None:
    """Drop the scratch database, whatever happened before; returns the
    test's error, with a failed drop added to it."""
    if error is None:
        steps.start("drop scratch database")
    try:
        if mconn is None or mconn.closed:
            mconn = _maintenance_conn(url)
        try:
            drop_db(mconn, scratch, live)
        finally:
            mconn.close()
        if error is None:
            steps.ok("drop scratch database", scratch)
        else:
            steps._item("drop scratch database").update(status="ok", detail=scratch)  # noqa: SLF001
            steps.push()
        return error
    except Exception as e:
        log.exception("could not drop scratch database %s", scratch)
        msg = f"could not drop the scratch database {scratch}: {e}"
        steps._item("drop scratch database").update(status="failed", detail=msg)  # noqa: SLF001
        steps.push()
        return f"{error}; {msg}" if error else msg


def _record_outcome(rt, ref: BackupRef, result: dict, run_id: int | None) -> None:
    """In the manifest on the drive (so a new host knows), the catalogue and
    the events."""
    passed, seconds, error = result["passed"], result["seconds"], result["error"]
    note_restore_test(ref.manifest_path, passed=passed, seconds=seconds, error=error,
                      run_id=run_id)
    # a file outside the catalogue is named by its path, and only its run says how it went
    what = ref.filename if ref.id is not None else f"{ref.archive} (not in the catalogue)"
    with rt.conn() as conn:
        if ref.id is not None:
            record_restore_test(conn, ref.id, passed=passed, seconds=seconds, result=result)
        if passed:
            store.add_event(conn, "info", "restore_test",
                            f"restore test of {what} passed in {seconds:.1f} s",
                            {"backup_id": ref.id, "path": str(ref.archive), "seconds": seconds})
        else:
            store.add_event(conn, "error", "restore_test",
                            f"restore test of {what} failed: {error}",
                            {"backup_id": ref.id, "path": str(ref.archive), "seconds": seconds,
                             "error": error})


def too_new(ref) -> str | None:
    """Why this code cannot restore an archive a newer version made (its
    schema has migrations this code does not know); None when it can. The
    plan said yes to one, and the restore refused it only after pg_restore."""
    m = ref.manifest
    have, known = m.get("schema_version"), db.latest_version()
    if not isinstance(have, int) or have <= known:
        return None
    made = f"appliance {m.get('appliance_version')}" + (
        f" (commit {m['appliance_commit']})" if m.get("appliance_commit") else "")
    return (f"the backup {ref.filename} has schema version {have}, newer than this "
            f"appliance's {known}: {made} made it. Restore it with that version or a later "
            f"one, or restore a backup this version made (the plan of each says its schema "
            f"version)")


def record_damage(rt, ref: BackupRef, reason: str, found_by: str) -> None:
    """``found_by`` (a restore, its plan) found the archive of ``ref`` not
    whole: recorded as a failed restore test of it, so that the catalogue,
    the console, the manifest on the drive and the ``restore_test_failed``
    alert say so instead of 'ok'. Not recorded when the database cannot be
    reached (a recovery: the operator reads the reason on the terminal), nor
    for an archive that is not there (missing is the catalogue's word for it)."""
    if not ref.archive.exists():
        return
    steps = [{"name": n, "status": "failed" if n == "verify sha256" else "skipped",
              "detail": reason if n == "verify sha256" else ""} for n, _ in RESTORE_TEST_STEPS]
    result = {"backup_id": ref.id, "filename": ref.filename, "path": str(ref.archive),
              "checks": [], "started_at": utcnow().isoformat(), "passed": False, "seconds": 0.0,
              "error": f"{reason} (found by {found_by})", "scratch_database": None,
              "steps": steps}
    try:
        _record_outcome(rt, ref, result, None)
    except Exception as e:  # noqa: BLE001 - the refusal itself is what matters
        log.warning("could not record that %s is damaged: %s", ref.filename, e)


def restore_test(rt, backup="latest", report=None, run_id: int | None = None) -> dict:
    """The restore test of one backup (see module doc). Never touches the live
    database except to record the outcome in the catalogue. Returns a dict
    with status 'ok' (passed) or 'failed' and 'error' saying exactly what
    differed; raises BackupError only when ``backup`` cannot be found."""
    cfg = rt.config
    url = rt.endpoints.database_url
    live = db_name(url)
    with rt.conn() as conn:
        ref = resolve_backup(cfg, backup, conn)
        register(conn, ref, cfg)
    steps = Steps(report, RESTORE_TEST_STEPS, backup_id=ref.id, filename=ref.filename)
    t0 = time.monotonic()
    result: dict = {"backup_id": ref.id, "filename": ref.filename, "path": str(ref.archive),
                    "checks": [], "started_at": utcnow().isoformat()}
    scratch = None
    mconn = None
    error = None
    try:
        try:
            steps.start("verify sha256")
            v = verify_archive_file(ref)
            steps.ok("verify sha256", v["sha256"])
            mconn = _maintenance_conn(url)
            tools = find_tools(rt, server_major(mconn))
            steps.start("pg_restore --list")
            steps.ok("pg_restore --list", f"{_check_toc(tools, ref)} entries")
            steps.start("create scratch database")
            stale = drop_stale_scratch(mconn, live, max(3600, cfg["jobs"]["timeout_seconds"]))
            if stale:
                result["dropped_stale_scratch"] = stale
            scratch = scratch_name(live)
            _create_db(mconn, scratch, live)
            steps.ok("create scratch database", scratch)
            jobs = int(cfg["backup"].get("parallel_jobs") or 1)
            steps.start("restore", f"pg_restore --jobs={jobs} into {scratch}")
            secs = restore_into(tools, url, scratch, ref.archive, jobs)
            result["restore_seconds"] = round(secs, 3)
            steps.ok("restore", f"{secs:.1f} s")
            chk = check_restored(url, scratch, ref.manifest, steps)
            result["checks"] = chk["comparisons"]
            if chk["mismatches"]:
                raise CheckFailed("compare with manifest", "; ".join(chk["mismatches"][:20]) +
                                  (f" (and {len(chk['mismatches']) - 20} more)"
                                   if len(chk["mismatches"]) > 20 else ""))
            steps.ok("compare with manifest", f"{len(chk['comparisons'])} comparisons, all equal")
            steps.start("validation summary")
            result["validation"] = chk["validation"]
            vs = chk["validation"]
            steps.ok("validation summary", f"{vs['validated']} validated, {vs['invalid']} "
                                           f"invalid, {vs['gaps']} gaps")
        except CheckFailed as e:
            error = e.reason
            steps.fail(e.step, e.reason)
        except BackupError as e:
            error = e.message
            steps.fail(None, e.message)
        except Exception as e:  # recorded as the test's failure
            log.exception("restore test of %s", ref.filename)
            error = f"{e.__class__.__name__}: {e}"
            steps.fail(None, error)
    finally:
        if scratch is not None:
            error = _drop_scratch(url, mconn, scratch, live, steps, error)
        if mconn is not None and not mconn.closed:
            mconn.close()
    seconds = round(time.monotonic() - t0, 3)
    passed = error is None
    result.update({"passed": passed, "seconds": seconds, "error": error,
                   "scratch_database": scratch, "steps": steps.items})
    _record_outcome(rt, ref, result, run_id)
    steps.done("passed" if passed else "failed")
    return _answer(rt, ref, result)


def _answer(rt, ref: BackupRef, result: dict) -> dict:
    """The job's result from the test's ``result``."""
    passed = result["passed"]
    out = {"status": "ok" if passed else "failed", "backup_id": ref.id,
           "filename": ref.filename, "path": str(ref.archive), "seconds": result["seconds"],
           "restore_seconds": result.get("restore_seconds"),
           "validation": result.get("validation"), "checks": len(result["checks"])}
    if not passed:
        out["error"] = result["error"]
    elif (why := too_new(ref)) is not None:  # whole, but not for this version's restore
        out["note"] = f"the archive restores, but this appliance's restore refuses it: {why}"
        with rt.conn() as conn:
            store.add_event(conn, "warning", "restore_test", out["note"],
                            {"backup_id": ref.id, "path": str(ref.archive)})
    return out


class RestoreTestResult(JobResult, total=False):
    """The ``restore_test`` job's result (the checks themselves are in the
    catalogue: ``restore_tests``)."""
    backup_id: int
    filename: str
    path: str
    seconds: float
    restore_seconds: float | None
    #: validated, invalid, gaps of the restored candles
    validation: dict[str, Any] | None
    #: how many numbers were compared with the manifest
    checks: int
    #: a passed test of an archive a newer version made: this version's restore refuses it
    note: str


def run_restore_test(rt, run_id, report, backup="latest") -> RestoreTestResult:
    """The ``restore_test`` job: prove one backup restores (``backup``:
    'latest', a catalogue id, a file name or a path). Result: status 'ok' when
    it passed, 'failed' with ``error`` saying exactly what differed when it did
    not (a failed test is an outcome, not a crash: it is recorded in the
    catalogue and never retried). An unknown backup raises BackupError."""
    return restore_test(rt, backup, report, run_id=run_id)
