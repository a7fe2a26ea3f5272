"""The catalogue (table ``backups``): a cache of the backup directory that
``rescan`` rebuilds from the manifests alone, and how a backup is named
(``latest``, an id, a file)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from appliance import store
from appliance.alerts.disks import backup_drive_missing
from appliance.core.errors import BackupError
from appliance.ops.backups.common import NAME_RE
from appliance.ops.backups.manifest import (
    _jsonable,
    disk_manifests,
    latest_restore_test,
    manifest_archive,
    manifest_path_for,
    manifest_summary,
    read_manifest,
)

log = logging.getLogger("appliance.backups")


def _row_out(r: dict) -> dict:
    out = {k: _jsonable(v) for k, v in r.items() if k != "manifest"}
    out["manifest"] = manifest_summary(r.get("manifest") or {})
    return out


def list_backups(conn, limit: int = 100) -> list[dict]:
    """Catalogue rows, newest first, as JSON-friendly dicts (the manifest as a summary)."""
    return [_row_out(r) for r in store.backup_rows(conn, limit)]


get_backup = store.backup_row
upsert_backup = store.upsert_backup
record_restore_test = store.record_restore_test


def backup_dir(cfg) -> Path:
    return Path(cfg["backup"]["path"])


def rescan(conn, cfg) -> dict:
    """Rebuild the catalogue from the manifests in ``backup.path`` alone.
    Rows whose files are gone become 'missing' (or stay 'deleted'); an
    archive whose size is not its manifest's (cut short) is 'damaged'."""
    bdir = backup_dir(cfg)
    found = disk_manifests(bdir)
    have = store.backup_statuses(conn)
    added = updated = damaged = missing = 0
    seen = set()
    for archive, _mpath, m in found:
        fn = archive.name
        seen.add(fn)
        size = archive.stat().st_size if archive.exists() else None
        status = ("missing" if size is None else
                  "ok" if size == m["archive"].get("size_bytes") else "damaged")
        damaged += status == "damaged"
        missing += status == "missing" and have.get(fn) not in ("deleted", "missing")
        bid = upsert_backup(conn, filename=fn, path=str(archive), created_at=m.get("created_at"),
                            size_bytes=m["archive"].get("size_bytes"),
                            sha256=m["archive"].get("sha256"), manifest=m, status=status)
        if (rtest := latest_restore_test(m)) is not None:
            store.restore_test_from_manifest(conn, bid, rtest)
        if fn in have:
            updated += 1
        else:
            added += 1
    for fn, status in have.items():
        if fn not in seen and status not in ("deleted", "missing"):
            store.mark_backup_missing(conn, fn)
            missing += 1
    orphans = sorted(p.name for p in bdir.iterdir() if NAME_RE.match(p.name)
                     and not manifest_path_for(p).exists()) if bdir.is_dir() else []
    res = {"path": str(bdir), "manifests": len(found), "added": added, "updated": updated,
           "marked_missing": missing, "marked_damaged": damaged,
           "archives_without_manifest": orphans}
    store.add_event(conn, "warning" if damaged else "info", "backup",
                    f"catalogue rescanned from {bdir}: {len(found)} manifest(s), {added} added, "
                    f"{missing} marked missing"
                    + (f", {damaged} damaged (size differs from the manifest)" if damaged else ""),
                    res)
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
            for path in store.good_backup_paths(conn):
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
            why = backup_drive_missing(cfg)
            raise BackupError(f"no backup found (catalogue and {bdir})"
                              + (f"; the backup drive is not mounted ({why})" if why else ""))
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
            if not a.exists():
                why = backup_drive_missing(cfg)
                raise BackupError(f"no archive at {a}" + (" (its manifest is there)"
                                                          if mp.exists() else
                                                          " (nor its manifest)") +
                                  (f"; the backup drive is not mounted ({why})" if why else ""))
            m = read_manifest(mp)
        ref = BackupRef(a, mp, m)
    if ref.id is None and conn is not None:
        # a file of the same name elsewhere (a copy) is not the catalogue's archive
        ref.id = store.backup_id_at(conn, ref.filename, str(ref.archive))
        if ref.id is None and in_backup_dir(cfg, ref):
            ref.id = store.backup_id(conn, ref.filename)
    return ref


def testable_backup(conn, cfg, backup: str) -> BackupRef:
    """The backup ``backup`` names, when it can be restore-tested at all.
    Raises BackupError when there is no such backup, or the catalogue holds
    it as deleted or missing: said before any run is recorded, so a typo
    (``restore-test 999``) does not open ``restore_test_failed``. A backup the
    catalogue holds as ok whose file is gone is tested, and fails."""
    ref = resolve_backup(cfg, backup, conn)
    status = store.backup_status(conn, ref.id) if ref.id is not None else None
    if status not in (None, "ok"):
        raise BackupError(f"backup {backup} ({ref.filename}) is {status}; only a backup with "
                          f"status ok can be restore-tested (appliance backups lists them)")
    return ref


def in_backup_dir(cfg, ref: BackupRef) -> bool:
    """Whether ``ref``'s archive lies in ``backup.path`` (the catalogue's files)."""
    try:
        return ref.archive.resolve().parent == backup_dir(cfg).resolve()
    except OSError:
        return False


def register(conn, ref: BackupRef, cfg) -> int | None:
    """Make sure ``ref`` has a catalogue row (a backup copied in by hand into
    ``backup.path``); a file elsewhere is not catalogued (None)."""
    if ref.id is None and in_backup_dir(cfg, ref):
        m = ref.manifest
        ref.id = upsert_backup(conn, filename=ref.filename, path=str(ref.archive),
                               created_at=m.get("created_at"),
                               size_bytes=m["archive"].get("size_bytes"),
                               sha256=m["archive"].get("sha256"), manifest=m,
                               status="ok" if ref.archive.exists() else "missing")
    return ref.id
