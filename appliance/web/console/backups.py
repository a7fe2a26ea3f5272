"""The backup catalogue, back up now, and the one-click restore test."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from flask import Blueprint, Response, abort, redirect, render_template, url_for

from appliance import store
from appliance.alerts.disks import backup_drive_missing
from appliance.core import units
from appliance.jobs import runs
from appliance.ops import backups as backups_mod
from appliance.web.api import MAX_ID
from appliance.web.console.common import FINISHED, _done, _enqueue, admin_post, is_htmx, page, rt
from appliance.web.console.jobs import _get_run, run_view

log = logging.getLogger("appliance.console")

bp = Blueprint("backups", __name__)


def _disk(path, cfg) -> dict | None:
    """Free space where backups go (the nearest existing parent when the
    folder is not created yet); a drive that must be mounted and is not, said."""
    why = backup_drive_missing(cfg)
    if why:
        return {"error": f"the backup drive is not mounted ({why}): a backup is refused"}
    p = units.nearest_existing(path)
    try:
        u = shutil.disk_usage(p)
    except OSError as e:
        return {"error": f"{path}: {e.strerror or e}"}
    return {"total": u.total, "free": u.free, "exists": p == Path(path),
            "free_pct": round(100 * u.free / u.total, 1) if u.total else None}


@bp.get("/backups")
def backups():
    cfg = rt().config
    with rt().read_conn() as conn:
        rows = backups_mod.list_backups(conn, limit=100)
        running = {k: run_view(v) for k, v in runs.latest_restore_tests(conn).items()
                   if v["status"] not in FINISHED}
        # a failing backup is said here too, not only on the Alerts page
        alerts = [a for a in store.alerts.open_alerts(conn)
                  if a["key"].startswith(("backup_", "restore_test"))]
    disk = _disk(cfg["backup"]["path"], cfg)
    return page("backups.html", "partials/backups_table.html", "backups-table",
                rows=rows, running=running, disk=disk, alerts=alerts,
                backup_path=cfg["backup"]["path"], min_free_pct=cfg["backup"]["min_free_pct"])


@bp.post("/backups")
@admin_post
def backup_now():
    run_id = _enqueue("backup", {})
    return _done("partials/run_queued.html", url_for("console.backups.backups"), run_id=run_id,
                 what="Backup")


@bp.post("/backups/<int:backup_id>/restore-test")
@admin_post
def restore_test(backup_id: int):
    status = None
    if backup_id <= MAX_ID:
        with rt().conn() as conn:
            status = store.backup_status(conn, backup_id)
    if status != "ok":
        msg = (f"There is no backup {backup_id}." if status is None else
               f"Backup {backup_id} is {status}; only a backup with status ok can be "
               f"restore-tested.")
        return render_template("partials/action_result.html", ok=False, message=msg), \
            (200 if is_htmx() else 409)
    run_id = _enqueue("restore_test", {"backup": str(backup_id)})
    if not is_htmx():
        return redirect(url_for("console.backups.restore_progress", run_id=run_id), code=303)
    return render_template("partials/restore_progress.html", r=run_view(_get_run(run_id)),
                           backup_id=backup_id)


def _restore_outcome(r: dict) -> dict | None:
    """The catalogue's record of a finished restore test: the comparisons made."""
    if r["running"]:
        return None
    bid = (r.get("result_obj") or {}).get("backup_id") or (r.get("params") or {}).get("backup")
    if not str(bid or "").isdigit():
        return None
    with rt().conn() as conn:
        row = backups_mod.get_backup(conn, int(bid))
    if not row:
        return None
    res = row.get("restore_test_result") or {}
    return {"checks": [c for c in res.get("checks") or [] if isinstance(c, dict)],
            "mismatches": res.get("mismatches") or [], "validation": res.get("validation"),
            "restore_seconds": res.get("restore_seconds")}


@bp.get("/restore-tests/<int:run_id>")
def restore_progress(run_id: int):
    r = run_view(_get_run(run_id))
    if r["job"] != "restore_test":
        abort(404)
    backup_id = (r.get("params") or {}).get("backup")
    outcome = _restore_outcome(r)
    if is_htmx():
        resp = Response(render_template("partials/restore_progress.html", r=r,
                                        backup_id=backup_id, outcome=outcome))
        if not r["running"]:
            resp.headers["HX-Trigger"] = "backups-changed"  # the table shows the new result
        return resp
    return render_template("restore.html", r=r, backup_id=backup_id, outcome=outcome)
