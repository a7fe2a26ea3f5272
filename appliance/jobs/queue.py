"""Putting work on the RQ queue for the worker(s)."""
from __future__ import annotations

from rq import Queue, Retry

from appliance.jobs import runs
from appliance.jobs.registry import JOBS

QUEUE_NAME = "appliance"
#: what RQ runs for every job, scheduled or manual
RUN_FUNC = "appliance.jobs.entry.run_job"
#: how long RQ keeps a finished job's result, and a failed job (seconds)
RESULT_TTL = 86400
FAILURE_TTL = 7 * 86400


def retry(cfg) -> Retry | None:
    """RQ's retry policy for a run under ``cfg`` (``jobs.retries``, ``jobs.retry_interval_seconds``)."""
    retries = cfg["jobs"]["retries"]
    return Retry(max=retries, interval=cfg["jobs"]["retry_interval_seconds"]) if retries else None


def first_in_queue(job: str) -> bool:
    """Whether ``job`` goes to the head of the queue (``registry.Job.first``)."""
    return job in JOBS and JOBS[job].first


def queue(rt) -> Queue:
    return Queue(QUEUE_NAME, connection=rt.redis, default_timeout=rt.config["jobs"]["timeout_seconds"])


def enqueue(rt, job: str, params: dict | None = None, *, trigger: str = "manual",
            slot: str | None = None) -> int:
    """Claim a manual slot for ``job``, enqueue it, return the ``job_runs`` id."""
    cfg = rt.config
    slot = slot or runs.manual_slot()
    with rt.conn() as conn:
        run_id = runs.claim(conn, job, slot, trigger=trigger, params=params or {},
                            timeout_s=cfg["jobs"]["timeout_seconds"])
        if run_id is None:
            raise RuntimeError(f"slot {slot} of {job} is already taken")
    q = queue(rt)
    try:
        rq_job = q.enqueue(RUN_FUNC, job, params or {}, slot=slot,
                           trigger=trigger, run_id=run_id,
                           job_timeout=cfg["jobs"]["timeout_seconds"],
                           retry=retry(cfg),
                           result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
                           description=f"{job} ({trigger})", at_front=first_in_queue(job))
    except Exception as e:
        # nothing will ever run it (Redis unreachable): the run must not stay 'queued'
        with rt.conn() as conn:
            runs.finish(conn, run_id, "failed", error=f"could not be queued: {e}")
        raise
    with rt.conn() as conn:
        runs.set_rq_id(conn, run_id, rq_job.id)
    return run_id
