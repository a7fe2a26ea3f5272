"""What RQ runs: ``run_job(name, ...)`` builds this process's Runtime, looks the
job up in ``jobs.registry`` and runs it through ``runs.execute`` (claim,
progress, outcome). Each job module exposes ``run(rt, run_id, report, **params) -> dict``.
"""
from __future__ import annotations

import logging
import os

from rq import get_current_job

from appliance import store
from appliance.alerts import rules as alerts
from appliance.config.salvage import salvage_connection_settings
from appliance.core.errors import ApplianceError, ConfigError
from appliance.ingest import chunks
from appliance.jobs import runs
from appliance.jobs.registry import job_function
from appliance.jobs.schedule import current_slot
from appliance.ops.backups import wait_while_suspended
from appliance.runtime.runtime import Runtime

log = logging.getLogger("appliance.jobs")

_rt = None
#: the worker's Runtime (set by ``appliance worker``): a forked work horse
#: starts from the config its worker runs, never from the file as it is now
parent = None


def runtime():
    """This process's Runtime (a forked work horse builds its own)."""
    global _rt
    if _rt is None or _rt.pid != os.getpid():
        if parent is not None:
            _rt = Runtime(parent.current_config(), endpoints=parent.endpoints, pool_size=4)
            _rt.adopt_running_config()
        else:
            _rt = Runtime.from_path(os.environ.get("APPLIANCE_CONFIG"), pool_size=4)
        _rt.pid = os.getpid()
        _rt.open()
    return _rt


def open_config_invalid(conn, who: str, errors: list[str], details: dict) -> dict | None:
    """Open ``config_invalid`` for ``who`` (``The job backfill``, ``The
    worker process``), naming the first errors; the row for ``announce``
    (None when it was open already)."""
    return alerts.open_now(conn, "config_invalid", "critical",
                           f"{who} could not load the config: {'; '.join(errors[:3])}. "
                           f"Response: run appliance check-config, fix appliance.yaml or "
                           f"appliance.env, then appliance reload (a process that could not "
                           f"start is started again by its supervisor)", details)


def _config_failed(name: str, run_id: int | None, e: ConfigError) -> None:
    """A job that cannot load its config is recorded as failed, with the
    reason, and opens ``config_invalid``: no run stays queued for ever."""
    msg = "the job could not load its config: " + "; ".join(e.errors[:3])
    rt = Runtime(salvage_connection_settings(os.environ.get("APPLIANCE_CONFIG")
                                             or "config/appliance.yaml"), pool_size=1)
    try:
        with rt.conn() as conn:
            if run_id is None:
                run_id = runs.claim(conn, name, runs.manual_slot(), trigger="scheduled",
                                    params={}, timeout_s=60)
            if run_id is not None:
                runs.start(conn, run_id)
                runs.finish(conn, run_id, "failed", {}, msg)
            store.add_event(conn, "error", name, f"{name} failed: {msg}", {"run_id": run_id})
            opened = open_config_invalid(conn, f"The job {name}", e.errors,
                                         {"job": name, "run_id": run_id})
        alerts.announce(rt, "open", opened)
    finally:
        rt.close()


class JobRuntime:
    """This process's Runtime with the config pinned when a run starts: a
    reload during a run applies from the next run on, never halfway through
    (also under a worker that runs several jobs in one process)."""

    def __init__(self, rt):
        self._rt = rt
        self.config = rt.config  # the running config, as of now

    def __getattr__(self, name):
        return getattr(self._rt, name)


def _config_loaded(rt) -> None:
    """A job that loads its config again resolves ``config_invalid``."""
    try:
        with rt.conn() as conn:
            resolved = alerts.resolve_now(conn, "config_invalid")
        alerts.announce(rt, "resolved", resolved)
    except Exception:  # noqa: BLE001 - the job itself reports a database problem
        pass


def run_job(name: str, params: dict | None = None, *, slot: str | None = None,
            trigger: str = "manual", run_id: int | None = None) -> dict:
    """RQ entry point. ``slot`` None means: the slot is computed from the
    job's schedule (a scheduled run); ``run_id`` set means: already claimed.
    The scheduler passes the slot it enqueued for (``trigger="scheduled"``)."""
    try:
        base = runtime()
    except ConfigError as e:
        _config_failed(name, run_id, e)
        raise
    _config_loaded(base)
    wait_while_suspended(base)  # a full restore is swapping the database
    rt = JobRuntime(base)
    fn = job_function(name)
    current = get_current_job()
    rq_id = current.id if current is not None else None
    if slot is None and run_id is None:
        try:
            slot = current_slot(rt.config, name)
            trigger = "scheduled"
        except KeyError:  # its schedule was turned off since it was queued: a run by hand
            pass
    try:
        return runs.execute(rt, name, slot or runs.manual_slot(), fn, trigger=trigger,
                            params=params or {}, run_id=run_id, rq_job_id=rq_id)
    except ApplianceError as e:
        if e.permanent and current is not None and current.retries_left:
            # retrying will not help (core.errors): RQ fails it now, the
            # worker is free and the alert rules see the failure at once
            log.info("%s failed with an error retrying will not help: no retry", name)
            current.retries_left = 0
        raise


def run_chunk(run_id: int, chunk_id: int) -> dict:
    """What RQ runs for a chunk of a fanned-out backfill: claim and do chunks of
    the run until none is left (``appliance.ingest.chunks``). Not a scheduled
    job: it has no ``job_runs`` row of its own; the parent run shows the
    progress."""
    wait_while_suspended(runtime())  # a full restore is swapping the database
    rt = JobRuntime(runtime())
    n = chunks.work(rt, rt.config, run_id, first=chunk_id,
                    report=chunks.handed_over_progress(rt, run_id))
    chunks.finish(rt, run_id)  # the last chunk ends the run, also when its parent died
    return {"run_id": run_id, "chunks_done_here": n}
