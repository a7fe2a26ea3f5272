"""The backup catalogue's SQL (table ``backups``)."""
from __future__ import annotations

import json

from psycopg.rows import dict_row

_COLS = ("id, filename, path, created_at, size_bytes, sha256, status, manifest, "
         "restore_test_status, restore_test_at, restore_test_seconds, restore_test_result, "
         "deleted_at")


def backup_rows(conn, limit: int = 100) -> list[dict]:
    """Catalogue rows, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLS} FROM backups ORDER BY created_at DESC, id DESC LIMIT %s",
                    (limit,))
        return cur.fetchall()


def backup_row(conn, backup_id: int) -> dict | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLS} FROM backups WHERE id = %s", (backup_id,))
        return cur.fetchone()


def backup_status(conn, backup_id: int) -> str | None:
    row = conn.execute("SELECT status FROM backups WHERE id = %s", (backup_id,)).fetchone()
    return row[0] if row else None


def backup_id(conn, filename: str) -> int | None:
    row = conn.execute("SELECT id FROM backups WHERE filename = %s", (filename,)).fetchone()
    return row[0] if row else None


def backup_statuses(conn) -> dict[str, str]:
    """filename -> status of every catalogue row."""
    return {r[0]: r[1] for r in conn.execute("SELECT filename, status FROM backups")}


def good_backup_paths(conn) -> list[str]:
    """Paths of the backups with status ok, newest first."""
    return [r[0] for r in conn.execute(
        "SELECT path FROM backups WHERE status = 'ok' ORDER BY created_at DESC, id DESC")]


def upsert_backup(conn, *, filename: str, path: str, created_at, size_bytes: int | None,
                  sha256: str | None, manifest: dict, status: str = "ok") -> int:
    return conn.execute(
        """INSERT INTO backups (filename, path, created_at, size_bytes, sha256, status, manifest)
           VALUES (%s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (filename) DO UPDATE SET path = EXCLUDED.path,
             created_at = EXCLUDED.created_at, size_bytes = EXCLUDED.size_bytes,
             sha256 = EXCLUDED.sha256, status = EXCLUDED.status, manifest = EXCLUDED.manifest,
             deleted_at = NULL
           RETURNING id""",
        (filename, path, created_at, size_bytes, sha256, status,
         json.dumps(manifest, default=str))).fetchone()[0]


def mark_backup_missing(conn, filename: str) -> None:
    conn.execute("UPDATE backups SET status = 'missing' WHERE filename = %s", (filename,))


def record_restore_test(conn, backup_id: int, *, passed: bool, seconds: float,
                        result: dict) -> None:
    conn.execute(
        """UPDATE backups SET restore_test_status = %s, restore_test_at = now(),
                  restore_test_seconds = %s, restore_test_result = %s WHERE id = %s""",
        ("passed" if passed else "failed", seconds, json.dumps(result, default=str), backup_id))


def restore_test_from_manifest(conn, backup_id: int, rtest: dict) -> None:
    """A restore test the manifest records, unless the catalogue knows a newer one."""
    conn.execute(
        """UPDATE backups SET restore_test_status = %s, restore_test_at = %s,
                  restore_test_seconds = %s,
                  restore_test_result = coalesce(restore_test_result, %s)
            WHERE id = %s AND (restore_test_at IS NULL OR restore_test_at < %s)""",
        ("passed" if rtest["passed"] else "failed", rtest["at"], rtest.get("seconds"),
         json.dumps({"passed": rtest["passed"], "error": rtest.get("error"),
                     "from_manifest": True}), backup_id, rtest["at"]))
