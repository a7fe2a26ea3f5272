"""The operations history, and how it survives a restore of the market data.

The operations history is what the appliance did rather than what it stores:
job runs, the backup catalogue (with restore-test results), alerts, events,
config reloads and vendor request counters. It lives in the same database as
the candles, so a backup carries it (a fresh host that recovers from the drive
alone gets it back), but a restore must never rewind it: the live database's
history is newer than any archive's copy.

A full restore therefore merges before it swaps databases
(``merge_into_restored``), in the restored database:

* same lineage (the archive was made by this database: equal
  ``appliance_instance`` ids): the archive's copy of the history is replaced by
  the live one, row for row and sequence for sequence. Nothing newer is lost,
  no run id is reused, and a run that was in flight when the dump was taken
  shows how it really ended.
* another lineage (a fresh host, or an archive from another box): the
  archive's history is kept, the runs it shows in flight are marked
  ``failed: interrupted by restore`` (the backup run that wrote this very
  archive is marked ``ok``: its manifest proves it), and the few rows the new
  host wrote before the restore are appended with fresh ids.

Merging after the restore was chosen over a separate schema excluded from the
restore because a separate copy would not travel with the archive, and a fresh
host would start with no record of which backups were proven. The backup
catalogue is then rebuilt from the manifests on the drive (the source of
truth, which also record their restore-test results) and the alert rules are
evaluated against the restored state.
"""
from __future__ import annotations

import logging

import psycopg
from psycopg import sql

log = logging.getLogger("appliance.history")

#: Tables that hold the operations history (not market data).
OPS_TABLES = ("job_runs", "backups", "alerts", "events", "config_reloads", "vendor_requests")
#: Of those, the ones whose rows a fresh host may append to an archive's history.
APPENDABLE = ("job_runs", "events", "config_reloads")
INTERRUPTED = "interrupted by restore"


def instance_id(conn) -> str | None:
    try:
        row = conn.execute("SELECT id::text FROM appliance_instance").fetchone()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return None
    return row[0] if row else None


def _columns(conn, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        """SELECT column_name FROM information_schema.columns
            WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position""",
        (table,))]


def _copy(src, dst, table: str, cols: list[str]) -> None:
    """Stream ``table``'s rows from ``src`` into ``dst`` (same schema version)."""
    _copy_into(src, dst, table, sql.Identifier(table), cols)


def _sequence_floor(conn, table: str, floor: int = 0) -> None:
    """Move ``table``'s id sequence past every id in it and past ``floor``."""
    if "id" not in _columns(conn, table):
        return
    seq = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()[0]
    if seq is None:
        return
    top = conn.execute(sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(
        sql.Identifier(table))).fetchone()[0]
    conn.execute("SELECT setval(%s, %s, true)", (seq, max(int(top), int(floor), 1)))


def _sequence_value(conn, table: str) -> int:
    if "id" not in _columns(conn, table):
        return 0
    seq = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()[0]
    if seq is None:
        return 0
    return int(conn.execute(sql.SQL("SELECT last_value FROM {}").format(
        sql.SQL(seq))).fetchone()[0])


def mark_interrupted(conn, manifest: dict) -> int:
    """Runs the archive shows queued or running: the one that wrote this
    archive ended well (its manifest proves it), the rest were interrupted."""
    own = manifest.get("job_run_id")
    n = 0
    if own is not None:
        n += conn.execute(
            """UPDATE job_runs SET status = 'ok', finished_at = %s,
                      result = result || jsonb_build_object('filename', %s::text)
                WHERE id = %s AND status IN ('queued', 'running')""",
            (manifest.get("created_at"), manifest.get("filename"), own)).rowcount
    n += conn.execute(
        """UPDATE job_runs SET status = 'failed', error = %s,
                  finished_at = coalesce(heartbeat_at, started_at, created_at)
            WHERE status IN ('queued', 'running')""", (INTERRUPTED,)).rowcount
    return n


def merge_into_restored(live_url: str | None, new_url: str, manifest: dict) -> dict:
    """Give the restored database (``new_url``, already migrated) the right
    operations history; see the module doc. ``live_url`` None: there is no
    live database with a history (a fresh host)."""
    out: dict = {"lineage": "none", "tables": {}, "marked_interrupted": 0}
    live = None
    if live_url is not None:
        try:
            live = psycopg.connect(live_url, connect_timeout=10)
        except psycopg.OperationalError:
            live = None
    with psycopg.connect(new_url, connect_timeout=10) as new:
        try:
            live_id = instance_id(live) if live is not None else None
            new_id = instance_id(new)
            live_has_history = live is not None and all(_columns(live, t) for t in OPS_TABLES)
            if live_has_history and live_id is not None and live_id == new_id:
                out["lineage"] = "same"
                for t in OPS_TABLES:
                    cols = _columns(new, t)
                    new.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(t)))
                    _copy(live, new, t, [c for c in cols if c in set(_columns(live, t))])
                    _sequence_floor(new, t, _sequence_value(live, t))
                    out["tables"][t] = "live"
            else:
                out["lineage"] = "other" if live_has_history else "none"
                out["marked_interrupted"] = mark_interrupted(new, manifest)
                for t in OPS_TABLES:
                    floor = _sequence_value(live, t) if live_has_history else 0
                    top = new.execute(sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(
                        sql.Identifier(t))).fetchone()[0] if "id" in _columns(new, t) else 0
                    _sequence_floor(new, t, max(floor, top))
                    out["tables"][t] = "archive"
                if live_has_history:
                    for t in APPENDABLE:
                        cols = [c for c in _columns(new, t) if c != "id"
                                and c in set(_columns(live, t))]
                        _append(live, new, t, cols)
                        out["tables"][t] = "archive + live appended"
                    # a later run of the same id must never appear: ids the
                    # new host handed out are past the archive's now
                    for t in APPENDABLE:
                        _sequence_floor(new, t, _sequence_value(live, t))
            new.commit()
        finally:
            if live is not None:
                live.close()
    return out


def _append(src, dst, table: str, cols: list[str]) -> None:
    """Rows of ``src.table`` appended to ``dst.table`` with fresh ids, in
    their original order; a job run whose (job, slot) the archive already has
    is left out."""
    tmp = sql.Identifier(f"_merge_{table}")
    dst.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(
        tmp, sql.Identifier(table)))
    _copy_into(src, dst, table, tmp, ["id", *cols])
    collist = sql.SQL(", ").join(map(sql.Identifier, cols))
    conflict = sql.SQL(" ON CONFLICT (job, slot) DO NOTHING") if table == "job_runs" \
        else sql.SQL("")
    dst.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ORDER BY id{}").format(
        sql.Identifier(table), collist, collist, tmp, conflict))


def _copy_into(src, dst, table: str, target: sql.Composable, cols: list[str]) -> None:
    collist = sql.SQL(", ").join(map(sql.Identifier, cols))
    with src.cursor().copy(sql.SQL("COPY {} ({}) TO STDOUT (FORMAT BINARY)").format(
            sql.Identifier(table), collist)) as out, \
            dst.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                target, collist)) as inp:
        for chunk in out:
            inp.write(chunk)
