"""The ``backup`` job: one ``pg_dump -Fc`` archive + manifest in ``backup.path``,
then retention. The work is in ``appliance.backups.create_backup``.

Result: status ok with backup_id, filename, size_bytes, sha256, … A failure
raises BackupError (``permanent`` for a missing mount, too little free space
or mismatched client tools: retrying does not help) after opening the
``backup_failed`` alert; ``runs.execute`` records the run and an event.
"""
from __future__ import annotations

from .. import backups


def run(rt, run_id, report) -> dict:
    res = backups.create_backup(rt, report, run_id=run_id)
    res["run_id"] = run_id
    return res
