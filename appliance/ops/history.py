"""The operations history, and how it survives a restore of the market data.

The operations history is what the appliance did rather than what it stores:
job runs, the backup catalogue (with restore-test results), alerts, events,
config reloads and vendor request counters. It lives in the same database as
the candles, so a backup carries it (a fresh host that recovers from the drive
alone gets it back), but a restore must never rewind it: the live database's
history is newer than any archive's copy.

A full restore therefore merges before it swaps databases
(``merge_into_restored``), in the restored database:

* same lineage (the archive was made by this database: equal
  ``appliance_instance`` ids): the archive's copy of the history is replaced by
  the live one, row for row and sequence for sequence. Nothing newer is lost,
  no run id is reused, and a run that was in flight when the dump was taken
  shows how it really ended.
* another lineage (a fresh host, or an archive from another box): the
  archive's history is kept, the runs it shows in flight are marked
  ``failed: interrupted by restore`` (the backup run that wrote this very
  archive is marked ``ok``: its manifest proves it), and the few rows the new
  host wrote before the restore are appended with fresh ids.

Merging after the restore was chosen over a separate schema excluded from the
restore because a separate copy would not travel with the archive, and a fresh
host would start with no record of which backups were proven. The backup
catalogue is then rebuilt from the manifests on the drive (the source of
truth, which also record their restore-test results) and the alert rules are
evaluated against the restored state.
"""
from __future__ import annotations

import logging

import psycopg

from appliance import store
from appliance.store import history as hsql
from appliance.store.history import instance_id  # part of this module's API

log = logging.getLogger("appliance.history")

#: Tables that hold the operations history (not market data).
OPS_TABLES = ("job_runs", "backups", "alerts", "events", "config_reloads", "vendor_requests")
#: Of those, the ones whose rows a fresh host may append to an archive's history.
APPENDABLE = ("job_runs", "events", "config_reloads")
INTERRUPTED = "interrupted by restore"


def mark_interrupted(conn, manifest: dict) -> int:
    """Runs the archive shows queued or running: the one that wrote this
    archive ended well (its manifest proves it), the rest were interrupted."""
    return store.runs.fail_in_flight(conn, manifest.get("job_run_id"),
                                     manifest.get("created_at"), manifest.get("filename"),
                                     INTERRUPTED)


def merge_into_restored(live_url: str | None, new_url: str, manifest: dict) -> dict:
    """Give the restored database (``new_url``, already migrated) the right
    operations history; see the module doc. ``live_url`` None: there is no
    live database with a history (a fresh host)."""
    out: dict = {"lineage": "none", "tables": {}, "marked_interrupted": 0}
    live = None
    if live_url is not None:
        try:
            live = psycopg.connect(live_url, connect_timeout=10)
        except psycopg.OperationalError:
            live = None
    with psycopg.connect(new_url, connect_timeout=10) as new:
        try:
            live_id = instance_id(live) if live is not None else None
            new_id = instance_id(new)
            live_has_history = live is not None and all(hsql.columns(live, t) for t in OPS_TABLES)
            if live_has_history and live_id is not None and live_id == new_id:
                out["lineage"] = "same"
                for t in OPS_TABLES:
                    cols = hsql.columns(new, t)
                    hsql.truncate(new, t)
                    live_cols = set(hsql.columns(live, t))
                    hsql.copy_rows(live, new, t, [c for c in cols if c in live_cols])
                    hsql.sequence_floor(new, t, hsql.sequence_value(live, t))
                    out["tables"][t] = "live"
            else:
                out["lineage"] = "other" if live_has_history else "none"
                out["marked_interrupted"] = mark_interrupted(new, manifest)
                for t in OPS_TABLES:
                    floor = hsql.sequence_value(live, t) if live_has_history else 0
                    top = hsql.max_id(new, t) if "id" in hsql.columns(new, t) else 0
                    hsql.sequence_floor(new, t, max(floor, top))
                    out["tables"][t] = "archive"
                if live_has_history:
                    for t in APPENDABLE:
                        cols = [c for c in hsql.columns(new, t) if c != "id"
                                and c in set(hsql.columns(live, t))]
                        hsql.append_rows(live, new, t, cols)
                        out["tables"][t] = "archive + live appended"
                    # a later run of the same id must never appear: ids the
                    # new host handed out are past the archive's now
                    for t in APPENDABLE:
                        hsql.sequence_floor(new, t, hsql.sequence_value(live, t))
            new.commit()
        finally:
            if live is not None:
                live.close()
    return out
