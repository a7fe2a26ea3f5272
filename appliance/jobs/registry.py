"""The one list of jobs: name, the function RQ runs, the default schedule.

Everything that names a job reads it from here: the config defaults
(``schedules``), the scheduler, ``jobs.entry``, the REST API and its OpenAPI
document, the console. Job modules are named as ``"module:function"`` strings
and imported only when a job runs, so reading this list imports nothing else
of the appliance (the config, at the bottom of the layers, reads it).

Each job declares the shape of its result: a ``TypedDict`` (derived from
``JobResult``) in the job's own module, named here like the function. The
console renders a run's result from those declared keys.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, is_typeddict


class JobResult(TypedDict, total=False):
    """What every job's result may hold. ``status`` ('ok', 'partial',
    'failed'; 'ok' when left out) goes into the run's status column and out
    of the stored result (``runs.execute``), which gets ``duration_s``."""
    status: str
    #: the run's error text (also the run's ``error`` column); None when none
    error: str | None
    #: seconds the job function ran (added by ``runs.execute``)
    duration_s: float


#: the keys every result may hold, listed after a job's own keys
COMMON_KEYS: tuple[str, ...] = tuple(JobResult.__annotations__)


@dataclass(frozen=True)
class Job:
    name: str
    #: ``"module:function"``; the function is ``run(rt, run_id, report, **params) -> result``
    target: str
    #: cron, UTC: ``schedules.<name>`` when the config does not say
    schedule: str
    description: str
    #: ``"module:TypedDict"``: the shape of the function's result
    result: str
    #: put at the head of the queue, before the jobs already waiting: short,
    #: time-bound work (the alert rules, the disk check) that a long
    #: backfill's queued chunks must not hold back for hours
    first: bool = False


#: name -> Job, in the order the console and the docs list them
JOBS: dict[str, Job] = {j.name: j for j in (
    Job("backfill", "appliance.ingest.backfill:run_backfill", "0 2 * * *",
        "bring every configured symbol up to the latest completed session",
        "appliance.ingest.backfill:BackfillResult"),
    Job("backup", "appliance.ops.backups:run_backup", "0 3 * * 0",
        "pg_dump archive and manifest into backup.path, then retention",
        "appliance.ops.backups.archive:BackupResult"),
    Job("restore_test", "appliance.ops.backups:run_restore_test", "0 4 1 * *",
        "restore the latest backup into a scratch database and compare with its manifest",
        "appliance.ops.backups.restore_test:RestoreTestResult"),
    Job("spot_check", "appliance.ops.spotcheck:spot_check", "0 5 2 * *",
        "compare a sample of stored closes with a second source",
        "appliance.ops.spotcheck:SpotCheckResult"),
    Job("maintenance", "appliance.ops.maintenance:maintain", "0 6 3 * *",
        "ANALYZE, index bloat, partitions ahead, data retention",
        "appliance.ops.maintenance:MaintenanceResult"),
    Job("disk_check", "appliance.alerts.rules:disk_check", "0 * * * *",
        "free space on the data directory and the backup path",
        "appliance.alerts.rules:DiskCheckResult", first=True),
    Job("retention", "appliance.ops.retention:prune_history", "30 1 * * *",
        "delete old job history, events and resolved alerts",
        "appliance.ops.retention:RetentionResult"),
    Job("alerts", "appliance.alerts.rules:evaluate_job", "* * * * *",
        "evaluate every alert rule",
        "appliance.alerts.rules:AlertsResult", first=True),
    Job("performance_review", "appliance.ops.performance:review", "0 7 1 */3 *",
        "database size and growth, slowest queries, table and index sizes",
        "appliance.ops.performance:PerformanceResult"),
    Job("export", "appliance.ops.export:export_dataset", "0 8 * * *",
        "bring the Parquet dataset in export.out up to date (nothing when it is empty)",
        "appliance.ops.export:ExportResult"),
)}

#: the job names, in registry order
JOB_NAMES: tuple[str, ...] = tuple(JOBS)


def default_schedules() -> dict[str, str]:
    """``{job: cron}``: the ``schedules`` section when the config says nothing."""
    return {j.name: j.schedule for j in JOBS.values()}


#: A schedule turned off: the job runs only when asked. YAML reads a bare
#: ``off`` (and ``false``, ``no``) as false: the loaded config says "off".
OFF = "off"


def is_off(expr: object) -> bool:
    """Whether a ``schedules`` value turns its job's schedule off."""
    return expr is False or expr == OFF


def active_schedules(schedules: Mapping[str, object]) -> dict[str, str]:
    """``{job: cron}`` of the jobs that run on a schedule (not turned off)."""
    return {job: str(expr) for job, expr in schedules.items() if not is_off(expr)}


def job_function(name: str) -> Callable[..., JobResult]:
    """The function that runs job ``name``. Raises ValueError for an unknown
    job; an ImportError from the job's module is a broken build and propagates."""
    try:
        target = JOBS[name].target
    except KeyError:
        raise ValueError(f"unknown job {name!r}; known: {', '.join(sorted(JOBS))}") from None
    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)


def result_type(name: str) -> type:
    """The ``TypedDict`` job ``name`` returns (``Job.result``). Raises
    ValueError for an unknown job; an ImportError is a broken build."""
    try:
        target = JOBS[name].result
    except KeyError:
        raise ValueError(f"unknown job {name!r}; known: {', '.join(sorted(JOBS))}") from None
    mod, cls = target.split(":")
    found = getattr(importlib.import_module(mod), cls)
    if not is_typeddict(found):
        raise TypeError(f"{target} (the result of job {name!r}) is not a TypedDict")
    return found


def result_keys(name: str) -> tuple[str, ...]:
    """The keys job ``name``'s result declares: its own, in the order its
    ``TypedDict`` lists them, then ``COMMON_KEYS``."""
    own = tuple(k for k in result_type(name).__annotations__ if k not in COMMON_KEYS)
    return own + COMMON_KEYS


def run_now_params(name: str) -> dict[str, Any]:
    """The parameters of a run started now by hand (CLI, API, console): the
    same run the scheduler would start; the restore test tests the latest
    backup."""
    return {"backup": "latest"} if name == "restore_test" else {}
