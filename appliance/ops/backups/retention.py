"""Retention: keep ``retention.backups_keep`` archives, never the newest one
that passed its restore test."""
from __future__ import annotations

import logging
from pathlib import Path

from appliance import store
from appliance.ops.backups.catalogue import backup_dir
from appliance.ops.backups.common import NAME_RE
from appliance.ops.backups.manifest import manifest_path_for

log = logging.getLogger("appliance.backups")


def apply_retention(conn, cfg) -> list[str]:
    """Keep the newest ``retention.backups_keep`` good backups, and also the
    newest one whose restore test passed; delete the rest (files + 'deleted'
    in the catalogue, one event each). Returns the deleted file names."""
    keep_n = int(cfg["retention"]["backups_keep"])
    rows = store.good_backups(conn)
    newest_passed = next((r[0] for r in rows if r[3] == "passed"), None)
    deleted = []
    bdir = backup_dir(cfg)
    for i, (bid, fn, path, _rts) in enumerate(rows):
        if i < keep_n or bid == newest_passed:
            continue
        a = Path(path)
        if a.parent != bdir or not NAME_RE.fullmatch(a.name):
            # only the appliance's own archives in backup.path are ever unlinked
            log.warning("retention: catalogue row %s points at %s, outside %s or not a backup "
                        "archive name; its files are left alone", bid, a, bdir)
            files = ()
        else:
            files = (manifest_path_for(a), a)
        for p in files:  # the manifest first: no orphan manifest stays
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        store.mark_backup_deleted(conn, bid)
        store.add_event(conn, "info", "backup",
                        f"backup {fn} deleted by retention (keeping the newest {keep_n}"
                        + (", and the newest with a passed restore test" if newest_passed else "")
                        + ")", {"backup_id": bid, "filename": fn})
        deleted.append(fn)
    return deleted
