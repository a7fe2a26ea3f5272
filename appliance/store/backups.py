"""The backup catalogue's SQL (table ``backups``)."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

from psycopg import Connection, sql
from psycopg.rows import dict_row

from appliance.store.pool import one_row

_COLS = ("id, filename, path, created_at, size_bytes, sha256, status, manifest, "
         "restore_test_status, restore_test_at, restore_test_seconds, restore_test_result, "
         "deleted_at")


def backup_rows(conn: Connection[Any], limit: int = 100) -> list[dict[str, Any]]:
    """Catalogue rows, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLS} FROM backups ORDER BY created_at DESC, id DESC LIMIT %s",
                    (limit,))
        return cur.fetchall()


def backup_row(conn: Connection[Any], backup_id: int) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLS} FROM backups WHERE id = %s", (backup_id,))
        return cur.fetchone()


def backup_status(conn: Connection[Any], backup_id: int) -> str | None:
    row = conn.execute("SELECT status FROM backups WHERE id = %s", (backup_id,)).fetchone()
    return row[0] if row else None


def backup_id(conn: Connection[Any], filename: str) -> int | None:
    row = conn.execute("SELECT id FROM backups WHERE filename = %s", (filename,)).fetchone()
    return row[0] if row else None


def backup_id_at(conn: Connection[Any], filename: str, path: str) -> int | None:
    """The catalogue id of the archive ``filename`` at ``path`` (None: the
    catalogue's ``filename`` is another file, or there is none)."""
    row = conn.execute("SELECT id FROM backups WHERE filename = %s AND path = %s",
                       (filename, path)).fetchone()
    return row[0] if row else None


def backup_statuses(conn: Connection[Any]) -> dict[str, str]:
    """filename -> status of every catalogue row."""
    return {r[0]: r[1] for r in conn.execute("SELECT filename, status FROM backups")}


def good_backup_paths(conn: Connection[Any]) -> list[str]:
    """Paths of the backups with status ok, newest first."""
    return [r[0] for r in conn.execute(
        "SELECT path FROM backups WHERE status = 'ok' ORDER BY created_at DESC, id DESC")]


def upsert_backup(conn: Connection[Any], *, filename: str, path: str, created_at: dt.datetime | None,
                  size_bytes: int | None,
                  sha256: str | None, manifest: dict[str, Any], status: str = "ok") -> int:
    return one_row(conn.execute(
        """INSERT INTO backups (filename, path, created_at, size_bytes, sha256, status, manifest)
           VALUES (%s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (filename) DO UPDATE SET path = EXCLUDED.path,
             created_at = EXCLUDED.created_at, size_bytes = EXCLUDED.size_bytes,
             sha256 = EXCLUDED.sha256, status = EXCLUDED.status, manifest = EXCLUDED.manifest,
             deleted_at = NULL
           RETURNING id""",
        (filename, path, created_at, size_bytes, sha256, status,
         json.dumps(manifest, default=str))))[0]


def mark_backup_missing(conn: Connection[Any], filename: str) -> None:
    conn.execute("UPDATE backups SET status = 'missing' WHERE filename = %s", (filename,))


def record_restore_test(conn: Connection[Any], backup_id: int, *, passed: bool, seconds: float,
                        result: dict[str, Any]) -> None:
    conn.execute(
        """UPDATE backups SET restore_test_status = %s, restore_test_at = now(),
                  restore_test_seconds = %s, restore_test_result = %s WHERE id = %s""",
        ("passed" if passed else "failed", seconds, json.dumps(result, default=str), backup_id))


def restore_test_from_manifest(conn: Connection[Any], backup_id: int, rtest: dict[str, Any]) -> None:
    """A restore test the manifest records, unless the catalogue knows a newer one."""
    conn.execute(
        """UPDATE backups SET restore_test_status = %s, restore_test_at = %s,
                  restore_test_seconds = %s,
                  restore_test_result = coalesce(restore_test_result, %s)
            WHERE id = %s AND (restore_test_at IS NULL OR restore_test_at < %s)""",
        ("passed" if rtest["passed"] else "failed", rtest["at"], rtest.get("seconds"),
         json.dumps({"passed": rtest["passed"], "error": rtest.get("error"),
                     "from_manifest": True}), backup_id, rtest["at"]))


def last_good_backup_at(conn: Connection[Any]) -> dt.datetime | None:
    """When the newest backup with status ok was made, or None."""
    return one_row(conn.execute("SELECT max(created_at) FROM backups WHERE status = 'ok'"))[0]


def last_archive_and_database_size(conn: Connection[Any]) -> tuple[int, int] | None:
    """(archive bytes, database bytes then) of the newest good backup that
    recorded both, or None."""
    return conn.execute(
        """SELECT size_bytes, (manifest->'database'->>'size_bytes')::bigint FROM backups
           WHERE status = 'ok' AND size_bytes IS NOT NULL
             AND manifest->'database'->>'size_bytes' IS NOT NULL
           ORDER BY created_at DESC LIMIT 1""").fetchone()


def good_backups(conn: Connection[Any]) -> list[tuple[Any, ...]]:
    """(id, filename, path, restore_test_status) of the good backups, newest first."""
    return conn.execute(
        """SELECT id, filename, path, restore_test_status FROM backups WHERE status = 'ok'
           ORDER BY created_at DESC, id DESC""").fetchall()


def mark_backup_deleted(conn: Connection[Any], backup_id: int) -> None:
    conn.execute("UPDATE backups SET status = 'deleted', deleted_at = now() WHERE id = %s",
                 (backup_id,))


# --------------------------------------------------------------------------- the dump's side

def export_snapshot(conn: Connection[Any]) -> str:
    """In ``conn``'s (repeatable-read) transaction: export its snapshot, lift
    the timeouts for as long as a dump takes; the snapshot's name."""
    # the snapshot exported by the first statement is the transaction's own
    snapshot = one_row(conn.execute("SELECT pg_export_snapshot()"))[0]
    conn.execute("SET LOCAL statement_timeout = 0")
    conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
    return snapshot


def database_facts(conn: Connection[Any]) -> tuple[str, str, int]:
    """(server_version, server_version_num, database bytes)."""
    return one_row(conn.execute(
        """SELECT current_setting('server_version'), current_setting('server_version_num'),
                  pg_database_size(current_database())"""
    ))


def table_and_symbol_counts(conn: Connection[Any]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Row counts per table (public, not partitions), per symbol, and the candle
    validation summary, in whatever snapshot ``conn``'s transaction has.
    market_data is scanned once."""
    tables = [r[0] for r in conn.execute(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
           ORDER BY 1""")]
    counts: dict[str, int] = {}
    symbols: dict[str, int] = {}
    val = {"candles": 0, "validated": 0, "invalid": 0, "gaps": 0}
    if "market_data" in tables:
        for sym, n, ok, bad, gaps in conn.execute(
                """SELECT symbol, count(*), count(*) FILTER (WHERE validated),
                          count(*) FILTER (WHERE NOT validated),
                          count(*) FILTER (WHERE gap_detected)
                   FROM market_data GROUP BY symbol ORDER BY symbol"""):
            symbols[sym] = n
            val["candles"] += n
            val["validated"] += ok
            val["invalid"] += bad
            val["gaps"] += gaps
    for t in tables:
        if t == "market_data":
            counts[t] = val["candles"]
        else:
            counts[t] = one_row(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(t))))[0]
    return counts, symbols, val
