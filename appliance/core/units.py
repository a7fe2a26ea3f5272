"""Units shown to people, and the disk a path lives on: one home each, so an
archive's size reads the same in events, the CLI and the console."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def human_bytes(n: float | int | None, missing: str = "?") -> str:
    """IEC units (1 KiB = 1024 B): ``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    if n is None:
        return missing
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def nearest_existing(path: str | Path) -> Path:
    """``path``, or its nearest parent that exists (a backup folder that is
    not created yet still has a disk)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def mount_point_of(path: str | Path) -> Path | None:
    """The mount point of the filesystem holding ``path`` (None: path missing)."""
    p = Path(path)
    if not p.exists():
        return None
    p = p.resolve()
    while not os.path.ismount(p):
        p = p.parent
    return p


def drive_missing(path: str | Path, data_dir: str | Path) -> str | None:
    """Why ``path``, which must be on a drive of its own (``backup.require_mount``),
    is not (it does not exist, or is on the root filesystem or the one of
    ``data_dir``, as an empty mount point of an unmounted drive is), or None."""
    mount = mount_point_of(path)
    if mount is None:
        return "it does not exist"
    if mount == Path("/"):
        return "it is on the root filesystem"
    if mount == mount_point_of(nearest_existing(data_dir)):
        return f"it is on the filesystem of data_dir, {mount}"
    return None


def disk_usage(path: str | Path,
               usage: Callable[[str], Any] = shutil.disk_usage) -> Any:
    """``shutil.disk_usage`` of the disk ``path`` is (or will be) on."""
    return usage(str(nearest_existing(path)))


def eta_text(seconds: object) -> str:
    """``ETA 1h05m`` / ``ETA 4m10s`` of an estimate in seconds; ``ETA ?`` when
    there is none yet."""
    if not isinstance(seconds, (int, float)):
        return "ETA ?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"ETA {h}h{rest // 60:02d}m" if h else f"ETA {rest // 60}m{rest % 60:02d}s"
