"""The ``disk_check`` job (hourly): free space on the data directory and the
backup path, recorded in the run's result, then the disk alert rules."""
from __future__ import annotations

import shutil


def run(rt, run_id, report, disk_usage=shutil.disk_usage) -> dict:
    from .. import alerts
    cfg = rt.config
    disks = {"data": alerts.disk_free(cfg["data_dir"], disk_usage),
             "backup": alerts.disk_free(cfg["backup"]["path"], disk_usage)}
    res = alerts.evaluate(rt, disk_usage=disk_usage)
    low = [name for name, d in disks.items()
           if d.get("free_pct", 100) < cfg["alerts"]["disk_free_min_pct"]]
    return {"status": "ok", "disks": disks, "low": low,
            "alerts_opened": res.get("opened", []), "alerts_resolved": res.get("resolved", [])}
