"""Job runs, one run's progress, and the run-now buttons."""
from __future__ import annotations

import logging

from flask import Blueprint, abort, render_template, request, url_for

from appliance.core.units import eta_text
from appliance.jobs import runs, schedule
from appliance.jobs.registry import JOB_NAMES, is_off, result_keys, run_now_params
from appliance.jobs.runs import duration_s, progress_counts
from appliance.web.api import MAX_ID
from appliance.web.console.common import FINISHED, _done, _enqueue, admin_post, is_htmx, page, rt

log = logging.getLogger("appliance.console")

bp = Blueprint("jobs", __name__)


def declared_keys(job: str) -> tuple[str, ...]:
    """The keys job ``job``'s result declares (``registry.result_keys``); none
    for a run of a job the registry no longer lists."""
    try:
        return result_keys(job)
    except ValueError:
        return ()


def run_view(r: dict) -> dict:
    """A run as the pages show it. Its result is read by the keys its job's
    result type declares, in their order (``result_obj``); keys the type does
    not declare (a run stored by an older version) come apart
    (``result_other``), shown as they are."""
    res = r.get("result") or {}
    keys = declared_keys(r["job"])
    declared = {k: res[k] for k in keys if k in res}
    other = {k: v for k, v in res.items() if k not in declared}
    prog = r.get("progress") or {}
    dur = duration_s(r, running_until_now=True)
    rows = None
    if "inserted" in declared or "updated" in declared:
        rows = int(declared.get("inserted") or 0) + int(declared.get("updated") or 0)
        if isinstance(declared.get("minutes"), dict):  # a backfill's minute bars stored
            rows += int(declared["minutes"].get("bars") or 0)
    elif "rows" in declared:
        rows = declared["rows"]
    elif "rows" in prog:
        rows = prog.get("rows")
    requests_ = declared["requests"] if "requests" in declared else prog.get("requests")
    attempt = int(r.get("attempts") or 0)
    running = r["status"] not in FINISHED
    errors = [r["error"]] if r.get("error") else []
    if errors and running and attempt > 1:  # RQ's retry: the error is the last attempt's
        errors = [f"attempt {attempt - 1} failed: {r['error']}"]
    errors.extend(f"{k}: {v}" for k, v in (declared.get("failed") or {}).items())
    counts = progress_counts(prog)  # the same reading as the CLI's
    pct = counts["pct"] if counts else None
    steps = prog.get("steps") if isinstance(prog.get("steps"), list) else []
    if steps and pct is None:
        done = sum(1 for s in steps if isinstance(s, dict) and s.get("status") in ("ok", "failed"))
        pct = round(100 * done / len(steps))
    return {**r, "duration_s": dur, "rows": rows, "requests": requests_, "errors": errors,
            "pct": pct, "eta": eta_text(prog["eta_s"]) if "eta_s" in prog else None, "steps": steps, "running": running,  # noqa: E501
            "progress_obj": prog, "result_obj": declared, "result_other": other,
            "counts": counts, "attempt": attempt}


@bp.get("/jobs")
def jobs():
    job = request.args.get("job") or ""
    with rt().read_conn() as conn:
        rows = runs.recent(conn, job=job or None, limit=100)
        names = runs.job_names(conn)
    views = [run_view(r) for r in rows]
    return page("jobs.html", "partials/jobs_table.html", "jobs-table", runs=views, job=job,
                job_names=names, schedules={
                    name: (expr, None if is_off(expr) else schedule.next_time(expr))
                    for name, expr in rt().config["schedules"].items()})


def _get_run(run_id: int) -> dict:
    if run_id > MAX_ID:
        abort(404)
    r = rt().read_fresh(lambda conn: runs.get(conn, run_id))
    if r is None:
        abort(404)
    return r


@bp.get("/jobs/<int:run_id>")
def job_run(run_id: int):
    v = run_view(_get_run(run_id))
    if is_htmx():
        return render_template("partials/job_row.html", r=v)
    return render_template("job.html", r=v)


@bp.post("/jobs/backfill")
@admin_post
def run_backfill():
    run_id = _enqueue("backfill", {})
    return _done("partials/run_queued.html", url_for("console.jobs.jobs"), run_id=run_id,
                 what="Backfill of all symbols")


@bp.post("/jobs/<name>/run")
@admin_post
def run_job(name: str):
    """Any scheduled job, now (the Jobs page's Run now buttons)."""
    if name not in JOB_NAMES:
        abort(404)
    params = run_now_params(name)
    run_id = _enqueue(name, params)
    return _done("partials/run_queued.html", url_for("console.jobs.jobs"), run_id=run_id,
                 what=f"{name.replace('_', ' ').capitalize()}")
