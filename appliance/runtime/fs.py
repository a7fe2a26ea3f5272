"""Files of the appliance's data directory: private directories and the
secrets kept in them."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("appliance.runtime")


def secure_dir(path: str | os.PathLike, mode: int = 0o700) -> Path:
    """``path`` created if needed and made ``mode`` (0700), whatever the umask."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    if p.stat().st_mode & 0o777 != mode:
        try:
            p.chmod(mode)
        except PermissionError:  # not ours (a shared mount): leave it as the operator made it
            log.warning("%s is not ours to chmod; it should be mode 0700", p)
    return p


def local_secret(data_dir: str | os.PathLike, name: str, make) -> str:
    """A secret kept in ``data_dir/name`` (0600), made by ``make()`` the first
    time; every process of the appliance shares data_dir and so the secret."""
    path = Path(data_dir) / name
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    if not path.parent.exists():
        secure_dir(path.parent)  # an existing data_dir keeps the mode resolve() gave it
    # written whole, then linked into place: a process racing us reads either
    # nothing or the complete secret, and the first link wins
    tmp = path.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(make())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()
