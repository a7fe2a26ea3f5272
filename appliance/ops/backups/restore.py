"""The full restore: the live database replaced by a backup, by renaming,
with the operations history kept (``appliance.ops.history``)."""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable

import psycopg
import redis

from appliance import store
from appliance.alerts import rules as alerts
from appliance.config.redaction import mask_url
from appliance.core.errors import BackupError
from appliance.core.units import human_bytes
from appliance.jobs import queue as queue_mod
from appliance.ops import history
from appliance.ops.backups.catalogue import BackupRef, rescan, resolve_backup
from appliance.ops.backups.common import (
    _MAX_IDENT,
    ALERT_KEY,
    SUSPEND_KEY,
    SUSPEND_TTL_S,
    db_name,
    url_for,
    utcnow,
)
from appliance.ops.backups.fence import fence_queue
from appliance.ops.backups.restore_test import (
    CheckFailed,
    check_restored,
    record_damage,
    restore_into,
    too_new,
    verify_archive_file,
)
from appliance.ops.backups.tools import (
    _create_db,
    _maintenance_conn,
    _try_catalogue_conn,
    drop_db,
    find_tools,
    list_archive,
    server_major,
)
from appliance.store import pool as db
from appliance.store.locks import BACKFILL_LOCK

log = logging.getLogger("appliance.backups")


def restore_plan_text(rt, backup) -> str:
    """What ``appliance restore BACKUP --yes`` would do, step by step."""
    cfg = rt.config
    url = rt.endpoints.database_url
    live = db_name(url)
    conn = _try_catalogue_conn(url)
    try:
        try:
            ref = resolve_backup(cfg, backup, conn if _has_catalogue(conn) else None)
        finally:
            if conn is not None:
                conn.close()
    except BackupError as e:
        return f"{CANNOT} {e.message}"
    m = ref.manifest
    if (why := too_new(ref)) is not None:
        return f"{CANNOT} {why}"
    if (why := _unusable(ref)) is not None:
        record_damage(rt, ref, why, "the restore plan")
        return f"{CANNOT} {why}"
    rc = m.get("row_counts") or {}
    state = "does not exist (it will simply be created)"
    try:
        with _maintenance_conn(url) as mc:
            if store.databases.exists(mc, live):
                state = "exists; it will be renamed, not dropped"
    except BackupError as e:
        state = f"cannot be checked ({e.message})"
    stamp = "YYYYMMDD_HHMMSS"
    lines = [
        f"Restore of {ref.archive}",
        f"  made {m.get('created_at')}, {human_bytes(m['archive'].get('size_bytes'))}, "
        f"sha256 {m['archive'].get('sha256')}",
        f"  schema version {m.get('schema_version')}, appliance {m.get('appliance_version')}"
        + (f" (commit {m['appliance_commit']})" if m.get("appliance_commit") else "") + ", "
        f"PostgreSQL {(m.get('postgres') or {}).get('server_version')}",
        f"  {(rc.get('tables') or {}).get('market_data', 0)} candles for "
        f"{len(rc.get('symbols') or {})} symbols, {len(rc.get('tables') or {})} tables",
        f"into the live database {live!r} on {mask_url(url)} (currently: {state}).",
        "",
        "Steps:",
        f"  1. Suspend jobs: set the Redis key {SUSPEND_KEY} (workers and the scheduler start "
        f"no job while it exists), wait for running jobs, take the backfill lock.",
        "  2. Verify the archive: size and sha256 against the manifest, pg_restore --list.",
        f"  3. Create a new database {live}_restore_{stamp} and pg_restore the archive into it "
        f"(--exit-on-error --jobs={cfg['backup'].get('parallel_jobs')} --no-owner).",
        "  4. Check it like the restore test: schema version, row counts per table and per "
        "symbol against the manifest. On any difference: drop it and stop; nothing else changes. "
        "Then bring its schema up to date (migrations) and merge the live operations history "
        "into it.",
        f"  5. Swap: refuse new connections to {live!r}, end its open connections, then in one "
        f"transaction rename {live!r} -> {live}_old_{stamp} and the new database -> {live!r}.",
        "     Before it, the queue is fenced: jobs waiting in Redis that point into the history "
        "are pointed at their restored runs, or cancelled.",
        "  6. Rebuild the backup catalogue from the manifests on disk, make the symbols table "
        "match the running config (a symbol configured after the backup gets its backfill "
        "queued) and evaluate the alerts against the restored state (a failure here fails the "
        "restore).",
        f"  7. Resume jobs (delete {SUSPEND_KEY}).",
        "",
        f"The previous database is kept as {live}_old_{stamp} until you drop it "
        f"(appliance kept-databases --drop {live}_old_{stamp} --yes).",
        "Data written after this backup was made is not in it: a backfill after the restore "
        "fetches the missing sessions again.",
        "The operations history (job runs, events, alerts, config reloads, the backup "
        "catalogue and its restore-test results) is not rewound: the live "
        "database's is kept (OPERATIONS.md, 'Why a restore never rewinds the operations "
        "history').",
    ]
    return "\n".join(lines)


#: how ``restore_plan_text`` begins when the restore cannot be done
CANNOT = "Cannot restore:"


def _unusable(ref, *, read: bool = True) -> str | None:
    """Why the archive cannot be restored at all, from the file alone:
    missing, not the size its manifest says, or (``read``: the whole file is
    read) not its sha256; None when it is whole."""
    if not ref.archive.exists():
        return f"the archive {ref.archive} is missing"
    want = (ref.manifest.get("archive") or {}).get("size_bytes")
    have = ref.archive.stat().st_size
    if want is not None and have != want:
        kind = "truncated" if have < want else "longer than it should be"
        return (f"the archive {ref.archive} is {human_bytes(have)} ({have} bytes), its manifest "
                f"says {want} bytes: {kind}, it cannot be restored")
    if read:
        try:
            verify_archive_file(ref)
        except CheckFailed as e:
            return f"the archive {ref.archive} is damaged ({e.reason}); it cannot be restored"
    return None


def _history_text(merged: dict) -> str:
    if merged["lineage"] == "same":
        return "kept from the live database (the archive's older copy is not used)"
    text = "taken from the archive"
    if merged["marked_interrupted"]:
        text += f", {merged['marked_interrupted']} run(s) in flight in it marked as they ended"
    if merged["lineage"] == "other":
        text += ", the live database's runs and events appended"
    return text


def _reevaluate_alerts(rt, ref) -> dict:
    """The alert rules over the restored state, so no alert stays open (or
    opens) on the archive's word alone. An archived ``backup_failed`` that a
    good backup made after it disproves is resolved with a note (the backup
    job that would have resolved it did so after its dump). Raises
    BackupError when this cannot be done: the restore is then not ok."""
    note = f"(Resolved after the restore of {ref.filename}: the condition no longer holds.)"
    try:
        if not rt.pool.closed:
            rt.pool.check()  # the swap ended every connection to the old live database
        t0 = utcnow()
        resolved = []
        with rt.conn() as c:
            good = store.last_good_backup_at(c)
            if good is not None:
                resolved = store.alerts.resolve_opened_before(c, ALERT_KEY, good, note)
        res = alerts.evaluate(rt)
        if res.get("error"):
            raise BackupError(res["error"])
        with rt.conn() as c:
            store.alerts.add_note(c, res["resolved"], t0, note)
        if resolved:
            res["resolved"] = [ALERT_KEY] + res["resolved"]
        return res
    except Exception as e:  # noqa: BLE001 - said loudly: the restore is not ok
        msg = e.message if isinstance(e, BackupError) else f"{e.__class__.__name__}: {e}"
        raise BackupError(f"the database was restored from {ref.filename}, but evaluating the "
                          f"alerts after it failed: {msg}. The alerts may be wrong until "
                          f"`appliance run alerts` succeeds") from None


def _fence(rt, new_url: str, ref, say) -> dict:
    """The queued jobs checked against the restored history (``fence_queue``)."""
    try:
        with psycopg.connect(new_url, connect_timeout=10) as c:
            out = fence_queue(rt, c, f"restore of {ref.filename}")
            c.commit()
    except redis.RedisError as e:
        say(f"warning: could not read the queue in Redis ({e}); no worker can take a job "
            f"from it either, and one that does is checked against the history when it starts")
        return {"error": str(e)}
    say(f"queued jobs: {out['kept']} kept, {out['repointed']} pointed at their restored "
        f"runs, {len(out['cancelled'])} cancelled; {len(out['runs_failed'])} queued run(s) "
        f"without a job marked failed")
    return out


def kept_databases(rt) -> list[tuple[str, int]]:
    """(name, size in bytes) of the databases full restores kept."""
    url = rt.endpoints.database_url
    live = db_name(url)
    with _maintenance_conn(url) as mc:
        return store.databases.sizes_like(mc, f"{live}\\_old\\_%")


def drop_kept_database(rt, name: str) -> None:
    url = rt.endpoints.database_url
    with _maintenance_conn(url) as mc:
        drop_db(mc, name, db_name(url))


def _has_catalogue(conn) -> bool:
    if conn is None:
        return False
    try:
        ok = store.scratch.has_catalogue(conn)
        conn.rollback()
        return bool(ok)
    except psycopg.Error:
        return False


def _suspend_jobs(rt, ref, say) -> bool:
    """Set the suspension key that workers and the scheduler honour."""
    try:
        rt.redis.set(SUSPEND_KEY, json.dumps({"reason": f"restore of {ref.filename}",
                                              "since": utcnow().isoformat(),
                                              "pid": os.getpid()}), ex=SUSPEND_TTL_S)
        say(f"jobs suspended ({SUSPEND_KEY})")
        return True
    except Exception as e:  # noqa: BLE001 - no Redis, no worker can take a job either
        say(f"warning: could not set {SUSPEND_KEY} in Redis ({e}); continuing")
        return False


def _wait_until_quiet(live_conn, has_cat: bool, wait_s: float) -> None:
    """Take the backfill lock and wait for running jobs to end."""
    deadline = time.monotonic() + wait_s
    while not store.locks.try_lock(live_conn, BACKFILL_LOCK):
        if time.monotonic() > deadline:
            raise BackupError(f"a backfill still holds its lock after {wait_s:.0f} s; "
                              f"nothing was changed")
        time.sleep(1)
    while has_cat and (busy := store.runs.running_recently(live_conn)):
        if time.monotonic() > deadline:
            raise BackupError(f"jobs still running after {wait_s:.0f} s: {busy}; "
                              f"nothing was changed")
        time.sleep(1)


def _verified(rt, mconn, ref):
    """The archive matches its manifest and reads; the client tools for it."""
    try:
        verify_archive_file(ref)
    except CheckFailed as e:
        record_damage(rt, ref, e.reason, "a restore")
        raise BackupError(e.reason) from None
    tools = find_tools(rt, server_major(mconn))
    list_archive(tools, ref.archive)
    return tools


def _restore_checked(cfg, tools, url: str, new: str, ref, say) -> tuple[float, dict]:
    """pg_restore into ``new``, then the restore test's comparison."""
    try:
        secs = restore_into(tools, url, new, ref.archive,
                            int(cfg["backup"].get("parallel_jobs") or 1))
    except CheckFailed as e:
        raise BackupError(e.reason) from None
    say(f"restored in {secs:.1f} s; comparing with the manifest")
    chk = check_restored(url, new, ref.manifest)
    if chk["mismatches"]:
        raise BackupError("restored database differs from the manifest: "
                          + "; ".join(chk["mismatches"][:20]))
    return secs, chk


def _end_connections(mconn, live: str, wait_s: float = 30) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        n = store.databases.end_sessions(mconn, live)
        if n == 0:
            return
        if time.monotonic() > deadline:
            raise BackupError(f"{n} connection(s) to {live!r} would not end")
        time.sleep(0.2)


def _after_swap(cfg, url: str, ref, old: str | None, t0: float) -> dict:
    """The catalogue rebuilt from the drive, and the restore's event."""
    with psycopg.connect(url, connect_timeout=10) as c:
        scan = rescan(c, cfg)
        store.add_event(c, "warning", "restore",
                        f"database restored from {ref.filename}"
                        + (f"; the previous database is kept as {old}" if old else ""),
                        {"filename": ref.filename, "old_database": old,
                         "seconds": round(time.monotonic() - t0, 3)})
        c.commit()
    return scan


def _configured_symbols(rt, url: str, say: Callable[[str], None]) -> dict:
    """The restored symbols table made to match the running config, as a
    reload does: a symbol configured after the backup was made is added and
    its backfill queued (it starts once jobs resume), one removed since is
    marked inactive. Without it, the symbols list showed an added symbol
    only at the next reload, which then said it was new."""
    with psycopg.connect(url, connect_timeout=10) as c:
        sync = store.sync_symbols(c, rt.config.symbols)
        c.commit()
    out: dict = {**sync, "backfill_run": None}
    if sync["added"]:
        out["backfill_run"] = queue_mod.enqueue(rt, "backfill", {"symbols": sync["added"]},
                                                trigger="restore")
        say(f"configured symbols the backup does not have: {', '.join(sync['added'])}; "
            f"backfill run {out['backfill_run']} queued, it starts once jobs resume")
    if sync["removed"]:
        say(f"symbols in the backup no longer configured, marked inactive (their data stays): "
            f"{', '.join(sync['removed'])}")
    return out


def _swap(mconn, live: str, new: str, old: str | None) -> None:
    """In one transaction: live -> old (when there is a live database), new ->
    live; then the kept one takes connections again."""
    with mconn.transaction():
        if old is not None:
            store.databases.rename(mconn, live, old)
        store.databases.rename(mconn, new, live)
    if old is not None:
        store.databases.allow_connections(mconn, old, True)


def _undo(mconn, live: str, drop: str | None, allow: str | None) -> None:
    """After a failure: drop the half-made database, let connections into the
    one that refused them; then close the maintenance connection."""
    if drop is not None:
        try:
            drop_db(mconn, drop, live)
        except Exception:
            log.exception("could not drop %s", drop)
    if allow is not None:
        try:
            store.databases.allow_connections(mconn, allow, True)
        except Exception:
            log.exception("could not re-allow connections")
    mconn.close()


def _restorable(rt, backup, catalogue_conn) -> BackupRef:
    """The backup ``backup`` names, or BackupError("Cannot restore: …"), as
    the plan says it: no such archive, a damaged one, one for a newer version."""
    try:
        ref = resolve_backup(rt.config, backup, catalogue_conn)
    except BackupError as e:
        raise BackupError(f"{CANNOT} {e.message}") from None
    if (why := too_new(ref) or _unusable(ref, read=False)) is not None:
        if too_new(ref) is None:  # a whole archive for a newer version is no damage
            record_damage(rt, ref, why, "a restore")
        raise BackupError(f"{CANNOT} {why}")
    return ref


def full_restore(rt, backup, progress: Callable[[str], None] | None = None,
                 wait_s: float = 120) -> dict:
    """Recover the live database from ``backup`` (see ``restore_plan_text``).

    Works when the live database is missing or damaged (the archive is found
    on disk). Raises BackupError with the reason; on failure before the swap
    the live database is unchanged and the new one is dropped."""
    say = progress or (lambda m: log.info("%s", m))
    cfg = rt.config
    url = rt.endpoints.database_url
    live = db_name(url)
    t0 = time.monotonic()
    stamp = utcnow().strftime("%Y%m%d_%H%M%S")
    new = f"{live}_restore_{stamp}"[:_MAX_IDENT]
    old = f"{live}_old_{stamp}"[:_MAX_IDENT]
    mconn = _maintenance_conn(url)
    live_exists = store.databases.exists(mconn, live)
    live_conn = _try_catalogue_conn(url) if live_exists else None
    has_cat = _has_catalogue(live_conn)
    if live_conn is not None:
        live_conn.autocommit = True
    try:  # before any job is suspended
        ref = _restorable(rt, backup, live_conn if has_cat else None)
    except BackupError:
        if live_conn is not None:
            live_conn.close()
        mconn.close()
        raise
    say(f"restoring {ref.archive} into {live!r}")
    suspended = created = swapped = conns_blocked = False
    try:
        suspended = _suspend_jobs(rt, ref, say)
        if live_conn is not None:
            _wait_until_quiet(live_conn, has_cat, wait_s)
            say("backfill lock taken, no job running")
        say("verifying the archive")
        tools = _verified(rt, mconn, ref)
        say(f"restoring into the new database {new}")
        _create_db(mconn, new, live)
        created = True
        secs, chk = _restore_checked(cfg, tools, url, new, ref, say)
        say("counts match the manifest; bringing its schema up to date")
        applied = db.migrate(url_for(url, new))
        merged = history.merge_into_restored(url if live_exists and has_cat else None,
                                             url_for(url, new), ref.manifest)
        say(f"operations history: {_history_text(merged)}")
        fence = _fence(rt, url_for(url, new), ref, say)
        say("swapping databases")
        if live_conn is not None:
            live_conn.close()
            live_conn = None
        if live_exists:
            store.databases.allow_connections(mconn, live, False)
            conns_blocked = True
            _end_connections(mconn, live)
        _swap(mconn, live, new, old if live_exists else None)
        swapped, conns_blocked = True, False
        say(f"swapped: {live!r} is the restored database"
            + (f", the previous one is kept as {old!r}" if live_exists else ""))
        applied += db.migrate(url)
        scan = _after_swap(cfg, url, ref, old if live_exists else None, t0)
        return {"status": "ok", "backup": ref.filename, "database": live,
                "old_database": old if live_exists else None,
                "restore_seconds": round(secs, 3), "seconds": round(time.monotonic() - t0, 3),
                "candles": chk["validation"]["candles"], "migrations_applied": applied,
                "catalogue": scan, "history": merged, "fence": fence,
                "symbols": _configured_symbols(rt, url, say),
                "alerts": _reevaluate_alerts(rt, ref)}
    finally:
        if live_conn is not None:
            live_conn.close()
        _undo(mconn, live, new if created and not swapped else None,
              (old if swapped else live) if conns_blocked else None)
        if suspended:
            try:
                rt.redis.delete(SUSPEND_KEY)
                say("jobs resumed")
            except Exception:  # noqa: BLE001
                say(f"warning: could not delete {SUSPEND_KEY}; it expires by itself")
