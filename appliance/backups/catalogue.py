"""The catalogue (table ``backups``): a cache of the backup directory that
``rescan`` rebuilds from the manifests alone, and how a backup is named
(``latest``, an id, a file)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from psycopg.rows import dict_row

from .. import store
from ..errors import BackupError
from .common import ALERT_KEY, NAME_RE
from .manifest import _jsonable, disk_manifests, latest_restore_test, manifest_archive, manifest_path_for, manifest_summary, read_manifest

log = logging.getLogger("appliance.backups")

log = logging.getLogger("appliance.backups")


_COLS = ("id, filename, path, created_at, size_bytes, sha256, status, manifest, "
         "restore_test_status, restore_test_at, restore_test_seconds, restore_test_result, "
         "deleted_at")


def _row_out(r: dict) -> dict:
    out = {k: _jsonable(v) for k, v in r.items() if k != "manifest"}
    out["manifest"] = manifest_summary(r.get("manifest") or {})
    return out


def list_backups(conn, limit: int = 100) -> list[dict]:
    """Catalogue rows, newest first, as JSON-friendly dicts (the manifest as a summary)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLS} FROM backups ORDER BY created_at DESC, id DESC LIMIT %s",
                    (limit,))
        return [_row_out(r) for r in cur.fetchall()]


def get_backup(conn, backup_id: int) -> dict | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLS} FROM backups WHERE id = %s", (backup_id,))
        return cur.fetchone()


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


def record_restore_test(conn, backup_id: int, *, passed: bool, seconds: float,
                        result: dict) -> None:
    conn.execute(
        """UPDATE backups SET restore_test_status = %s, restore_test_at = now(),
                  restore_test_seconds = %s, restore_test_result = %s WHERE id = %s""",
        ("passed" if passed else "failed", seconds, json.dumps(result, default=str), backup_id))


#: Restore-test results kept in a manifest (newest last).


def open_alert(conn, message: str, details: dict, severity: str = "critical") -> None:
    """The ``backup_failed`` alert: opened by a failed backup, resolved by the
    next good one."""
    conn.execute(
        """INSERT INTO alerts (key, severity, status, message, details, opened_at)
           VALUES (%s, %s, 'open', %s, %s, now())
           ON CONFLICT (key) WHERE status IN ('pending', 'open')
           DO UPDATE SET message = EXCLUDED.message, details = EXCLUDED.details,
                         severity = EXCLUDED.severity, status = 'open',
                         opened_at = coalesce(alerts.opened_at, now())""",
        (ALERT_KEY, severity, message, json.dumps(details, default=str)))


def resolve_alert(conn) -> None:
    conn.execute("""UPDATE alerts SET status = 'resolved', resolved_at = now()
                    WHERE key = %s AND status IN ('pending', 'open')""", (ALERT_KEY,))


def backup_dir(cfg) -> Path:
    return Path(cfg["backup"]["path"])


def rescan(conn, cfg) -> dict:
    """Rebuild the catalogue from the manifests in ``backup.path`` alone.
    Rows whose files are gone become 'missing' (or stay 'deleted')."""
    bdir = backup_dir(cfg)
    found = disk_manifests(bdir)
    have = {r[0]: r[1] for r in conn.execute("SELECT filename, status FROM backups")}
    added = updated = 0
    seen = set()
    for archive, _mpath, m in found:
        fn = archive.name
        seen.add(fn)
        size = archive.stat().st_size if archive.exists() else None
        status = "ok" if size is not None and size == m["archive"].get("size_bytes") else "missing"
        bid = upsert_backup(conn, filename=fn, path=str(archive), created_at=m.get("created_at"),
                            size_bytes=m["archive"].get("size_bytes"),
                            sha256=m["archive"].get("sha256"), manifest=m, status=status)
        if (rtest := latest_restore_test(m)) is not None:
            conn.execute(
                """UPDATE backups SET restore_test_status = %s, restore_test_at = %s,
                          restore_test_seconds = %s,
                          restore_test_result = coalesce(restore_test_result, %s)
                    WHERE id = %s AND (restore_test_at IS NULL OR restore_test_at < %s)""",
                ("passed" if rtest["passed"] else "failed", rtest["at"], rtest.get("seconds"),
                 json.dumps({"passed": rtest["passed"], "error": rtest.get("error"),
                             "from_manifest": True}), bid, rtest["at"]))
        if fn in have:
            updated += 1
        else:
            added += 1
    missing = 0
    for fn, status in have.items():
        if fn not in seen and status not in ("deleted", "missing"):
            conn.execute("UPDATE backups SET status = 'missing' WHERE filename = %s", (fn,))
            missing += 1
    orphans = sorted(p.name for p in bdir.iterdir() if NAME_RE.match(p.name)
                     and not manifest_path_for(p).exists()) if bdir.is_dir() else []
    res = {"path": str(bdir), "manifests": len(found), "added": added, "updated": updated,
           "marked_missing": missing, "archives_without_manifest": orphans}
    store.add_event(conn, "info", "backup", f"catalogue rescanned from {bdir}: "
                    f"{len(found)} manifest(s), {added} added, {missing} marked missing", res)
    return res


@dataclass
class BackupRef:
    archive: Path
    manifest_path: Path
    manifest: dict
    id: int | None = None

    @property
    def filename(self) -> str:
        return self.archive.name


def resolve_backup(cfg, backup: str | int | None, conn=None) -> BackupRef:
    """``backup``: 'latest', a catalogue id, a file name in backup.path, or a
    path (.dump or .json). Without ``conn`` (database lost) ids cannot be used,
    'latest' is the newest manifest on disk. Raises BackupError."""
    bdir = backup_dir(cfg)
    b = str(backup if backup is not None else "latest").strip()
    ref: BackupRef | None = None
    if b in ("", "latest"):
        if conn is not None:
            for (path,) in conn.execute(
                    """SELECT path FROM backups WHERE status = 'ok'
                       ORDER BY created_at DESC, id DESC"""):
                a = Path(path)
                if a.exists() and manifest_path_for(a).exists():
                    ref = BackupRef(a, manifest_path_for(a), read_manifest(manifest_path_for(a)))
                    break
        if ref is None:
            for a, mp, m in disk_manifests(bdir):
                if a.exists():
                    ref = BackupRef(a, mp, m)
                    break
        if ref is None:
            raise BackupError(f"no backup found (catalogue and {bdir})")
    elif b.isdigit():
        if conn is None:
            raise BackupError(f"backup id {b} needs the catalogue, which is unavailable: "
                              f"give the archive's path instead")
        row = get_backup(conn, int(b))
        if row is None:
            raise BackupError(f"no backup {b} in the catalogue")
        a = Path(row["path"])
        mp = manifest_path_for(a)
        ref = BackupRef(a, mp, read_manifest(mp) if mp.exists() else (row["manifest"] or {}),
                        row["id"])
    else:
        p = Path(b).expanduser()
        if not p.is_absolute() and not p.exists():
            p = bdir / p
        if p.suffix == ".json":
            mp = p
            m = read_manifest(mp)
            a = manifest_archive(mp, m)
        else:
            a, mp = p, manifest_path_for(p)
            m = read_manifest(mp)
        ref = BackupRef(a, mp, m)
    if ref.id is None and conn is not None:
        row = conn.execute("SELECT id FROM backups WHERE filename = %s",
                           (ref.filename,)).fetchone()
        ref.id = row[0] if row else None
    return ref


def register(conn, ref: BackupRef) -> int:
    """Make sure ``ref`` has a catalogue row (a backup copied in by hand)."""
    if ref.id is None:
        m = ref.manifest
        ref.id = upsert_backup(conn, filename=ref.filename, path=str(ref.archive),
                               created_at=m.get("created_at"),
                               size_bytes=m["archive"].get("size_bytes"),
                               sha256=m["archive"].get("sha256"), manifest=m,
                               status="ok" if ref.archive.exists() else "missing")
    return ref.id
