"""A full restore is a fence over the queue: no job queued before it runs
into the restored history.

A job waiting in RQ carries the id of its ``job_runs`` row (manual and
catch-up runs) or of its parent run (a backfill's chunks). The restored
database numbers runs its own way (another lineage appends the new host's
rows with fresh ids), so an id taken before the swap may name another run
after it. Before the swap, with jobs suspended, every waiting job is checked
against the restored history: a run job whose row is there under its RQ job
id is pointed at that row; any other job that points into the history is
cancelled, and the queued runs left without a job are marked failed. A job a
worker already holds is checked again when it starts (``jobs.runs.execute``).
Scheduled slots claim their run when they start and are left alone.
"""
from __future__ import annotations

import logging

from rq.exceptions import InvalidJobOperation
from rq.job import Job

from appliance import store
from appliance.ingest.chunks import CHUNK_FUNC
from appliance.jobs import queue as queue_mod

log = logging.getLogger("appliance.backups")

CANCELLED = "cancelled by a restore: its run is not in the restored history"
NO_JOB = "its queued job was cancelled by a restore"


def _waiting(q) -> list[tuple[Job, object]]:
    """(job, registry or None for the queue itself) of every waiting job."""
    out = [(j, None) for j in q.get_jobs()]
    for reg in (q.scheduled_job_registry, q.deferred_job_registry):
        for j in Job.fetch_many(reg.get_job_ids(), connection=q.connection):
            if j is not None:
                out.append((j, reg))
    return out


def _cancel(q, job: Job, reg) -> None:
    q.remove(job)
    if reg is not None:
        reg.remove(job)
    try:
        job.cancel()
    except InvalidJobOperation:
        pass


def fence_queue(rt, restored_conn, label: str) -> dict:
    """Check the waiting jobs against the restored database (``restored_conn``,
    not yet swapped in; see the module doc). Returns ``{"kept", "repointed",
    "cancelled": [rq ids], "runs_failed": [run ids]}``; the runs are changed in
    ``restored_conn``'s transaction, the queue at once."""
    q = queue_mod.queue(rt)
    rows = store.runs.runnable_ids_by_rq_id(restored_conn)
    out: dict = {"kept": 0, "repointed": 0, "cancelled": [], "runs_failed": []}
    # a job a worker holds (waiting for the restore to end) is checked when it starts
    keep: list[str] = list(q.started_job_registry.get_job_ids())
    for job, reg in _waiting(q):
        kw = job.kwargs or {}
        if job.func_name == queue_mod.RUN_FUNC and kw.get("run_id") is not None:
            hit = rows.get(job.id)
            if hit is not None and job.args and hit[1] == job.args[0]:
                keep.append(job.id)
                if hit[0] == kw["run_id"]:
                    out["kept"] += 1
                else:
                    log.info("restore: RQ job %s now runs run %s (was %s)", job.id, hit[0],
                             kw["run_id"])
                    job.kwargs = {**kw, "run_id": hit[0]}
                    job.save()
                    out["repointed"] += 1
                continue
        elif job.func_name != CHUNK_FUNC:
            continue  # a scheduled slot: it claims its run when it starts
        _cancel(q, job, reg)
        out["cancelled"].append(job.id)
        store.add_event(restored_conn, "warning", "restore",
                        f"queued job {job.description or job.id} {CANCELLED} ({label})",
                        {"rq_job_id": job.id, "args": [str(a) for a in job.args or []]})
    for rid, name in store.runs.fail_queued_without_job(restored_conn, keep, NO_JOB):
        out["runs_failed"].append(rid)
        store.add_event(restored_conn, "warning", name, f"{name} run {rid} failed: {NO_JOB}",
                        {"run_id": rid})
    return out
