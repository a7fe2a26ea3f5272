"""Free space of the disks the appliance writes to: the data directory and
the backup path (the disk alerts, the ``disk_check`` job)."""
from __future__ import annotations

import shutil

from appliance.core import units


def disk_free(path: str, disk_usage=shutil.disk_usage) -> dict:
    try:
        u = units.disk_usage(path, disk_usage)
    except OSError as e:
        return {"path": path, "error": str(e)}
    return {"path": path, "free_pct": 100.0 * u.free / u.total if u.total else 0.0,
            "free_bytes": u.free, "total_bytes": u.total}


def backup_drive_missing(cfg) -> str | None:
    """Why the backup drive is not there, when ``backup.require_mount`` says
    ``backup.path`` must be on one (``core.units.drive_missing``), or None."""
    if not cfg["backup"].get("require_mount"):
        return None
    return units.drive_missing(cfg["backup"]["path"], cfg["data_dir"])


def disks(cfg, disk_usage=shutil.disk_usage) -> dict:
    """Free space of the data directory and the backup path; a backup drive
    that must be mounted (``backup.require_mount``) and is not is said, not
    measured as the system disk under its empty mount point."""
    path = cfg["backup"]["path"]
    why = backup_drive_missing(cfg)
    return {"data": disk_free(cfg["data_dir"], disk_usage),
            "backup": {"path": path, "error": f"the backup drive is not mounted ({why})"}
            if why else disk_free(path, disk_usage)}
