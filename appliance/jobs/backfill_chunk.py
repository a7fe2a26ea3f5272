"""What RQ runs for a chunk of a fanned-out backfill: claim and do chunks of
the run until none is left (``appliance.chunks``). Not a scheduled job: it
has no ``job_runs`` row of its own; the parent run shows the progress.
"""
from __future__ import annotations

from ..chunks import work
from .entry import JobRuntime, runtime


def run(run_id: int, chunk_id: int) -> dict:
    from ..backups import wait_while_suspended
    wait_while_suspended(runtime())  # a full restore is swapping the database
    rt = JobRuntime(runtime())
    from ..chunks import finish
    n = work(rt, rt.config, run_id, first=chunk_id)
    finish(rt, run_id)  # the last chunk ends the run, also when its parent died
    return {"run_id": run_id, "chunks_done_here": n}
