"""Backups that prove they restore: archives, manifests, the catalogue, the
restore test's checks and the full restore.

Files in ``backup.path``:

* ``market_data_YYYYMMDD_HHMMSS.dump`` -- ``pg_dump -Fc`` of the appliance's
  database (UTC time of the start of the dump);
* ``market_data_YYYYMMDD_HHMMSS.json`` -- its manifest: sha256 and size of the
  archive, server/client/appliance/schema versions, row counts per table and
  per symbol and a candle validation summary, all taken in the snapshot the
  dump was made from, the config hash, the time taken.

The manifest is the commit marker of a backup. An archive is first written as
``.market_data_….dump.partial`` (hidden, never matched as a backup), checked
with ``pg_restore --list`` and a full read, then renamed; the manifest is
written last the same way. So a crash at any point leaves either a hidden
``*.partial`` file or an archive without a manifest; the next backup run
removes both (under the backup lock, so never a file another run is writing),
and ``rescan``/``list_backups`` never count them.

The catalogue (table ``backups``) is a cache of the directory: ``rescan``
rebuilds it from the manifests alone, e.g. after the database was lost.

Jobs are suspended during a full restore by the Redis key
``appliance:jobs:suspended`` (JSON: reason, since, pid; it expires after
``SUSPEND_TTL_S`` so that a killed restore never blocks jobs forever). Workers
and the scheduler should not start a job while it exists.

The parts: ``common`` (names, small helpers, the ``Steps`` progress model),
``tools`` (pg_dump/pg_restore matched to the server, scratch databases),
``manifest``, ``catalogue``, ``archive`` (taking a backup), ``retention``,
``restore_test`` and ``restore`` (the full restore). What the rest of the
appliance uses is imported here.
"""
from appliance.ops.backups.archive import (
                      check_backup_path,
                      clean_leftovers,
                      create_backup,
                      estimate_archive_size,
                      jobs_suspended,
                      run_backup,
                      wait_while_suspended,
)
from appliance.ops.backups.catalogue import (
                      BackupRef,
                      backup_dir,
                      get_backup,
                      list_backups,
                      register,
                      rescan,
                      resolve_backup,
                      testable_backup,
)
from appliance.ops.backups.common import (
                      ALERT_KEY,
                      NAME_RE,
                      SUSPEND_KEY,
                      Steps,
                      db_name,
                      tool_target,
                      url_for,
)
from appliance.ops.backups.manifest import manifest_path_for, note_restore_test, read_manifest
from appliance.ops.backups.restore import CANNOT as RESTORE_CANNOT
from appliance.ops.backups.restore import (
                      drop_kept_database,
                      full_restore,
                      kept_databases,
                      restore_plan_text,
)
from appliance.ops.backups.restore_test import (
                      RESTORE_TEST_STEPS,
                      CheckFailed,
                      restore_test,
                      run_restore_test,
                      verify_archive_file,
)
from appliance.ops.backups.retention import apply_retention
from appliance.ops.backups.tools import (
                      _create_db,
                      _maintenance_conn,
                      drop_db,
                      find_tools,
                      scratch_name,
                      server_major,
)

__all__ = [
    "ALERT_KEY", "BackupRef", "CheckFailed", "NAME_RE", "RESTORE_CANNOT", "RESTORE_TEST_STEPS",
    "SUSPEND_KEY",
    "Steps", "_create_db", "_maintenance_conn", "apply_retention", "backup_dir",
    "check_backup_path", "clean_leftovers", "create_backup", "db_name", "drop_db",
    "drop_kept_database", "estimate_archive_size", "find_tools", "full_restore", "get_backup",
    "jobs_suspended", "kept_databases", "list_backups", "manifest_path_for", "note_restore_test",
    "read_manifest", "register", "rescan", "resolve_backup", "restore_plan_text", "restore_test",
    "run_backup", "run_restore_test", "testable_backup",
    "scratch_name", "server_major", "tool_target", "url_for", "verify_archive_file",
    "wait_while_suspended",
]
