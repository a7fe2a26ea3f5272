"""The ``restore_test`` job: prove one backup restores (``backup``: 'latest',
a catalogue id, a file name or a path). The work is in
``appliance.backups.restore_test``.

Result: status 'ok' when it passed, 'failed' with ``error`` saying exactly
what differed when it did not (a failed test is an outcome, not a crash: it is
recorded in the catalogue and never retried). An unknown backup raises
BackupError.
"""
from __future__ import annotations

from .. import backups


def run(rt, run_id, report, backup="latest") -> dict:
    return backups.restore_test(rt, backup, report, run_id=run_id)
