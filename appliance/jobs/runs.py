"""The ``job_runs`` table: claiming a (job, slot), progress, and the outcome.

Every run of every job, scheduled or manual, first claims its row with
``INSERT … ON CONFLICT DO NOTHING RETURNING``; a run that did not get the row
does nothing (another scheduler, or an expired lock, enqueued it twice). A run
retried by RQ re-takes its own failed row (same RQ job id), nobody else's.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
import traceback
import uuid
from collections.abc import Callable

from appliance import store
from appliance.config.redaction import redact, redact_obj
from appliance.core.errors import ApplianceError, HandedOver, WorkerStopping
from appliance.core.units import human_bytes
from appliance.store import runs as runs_sql

# the table's plain reads and writes, used as ``runs.NAME`` by jobs, web and status
from appliance.store.runs import (  # noqa: F401
    claim,
    get,
    job_names,
    last_by_job,
    latest_restore_tests,
    progress,
    recent,
    set_rq_id,
    start,
)

log = logging.getLogger("appliance.jobs")


def manual_slot() -> str:
    return "manual:" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + ":" + \
        uuid.uuid4().hex[:8]


def finish(conn, run_id: int, status: str, result: dict | None = None,
           error: str | None = None) -> None:
    """The run's outcome, redacted: results and errors can be read without a login."""
    runs_sql.finish_run(conn, run_id, status,
                        json.dumps(redact_obj(json.loads(json.dumps(result or {}, default=str)))),
                        redact(error))


def progress_counts(prog: dict) -> dict | None:
    """One reading of a run's progress for every view (Jobs list, run page,
    CLI): ``done`` of ``total`` in ``unit``, the minute months when there are
    any, the ETA; None when the progress counts nothing. A fanned-out
    backfill counts its chunks (daily symbols and minute months together)."""
    if not isinstance(prog, dict):
        return None
    months = None
    if prog.get("chunks_total"):
        done, total, unit = (prog.get("chunks_done") or 0) + (prog.get("chunks_failed") or 0), \
            prog["chunks_total"], "chunks"
        if prog.get("minute_months_total"):
            months = (prog.get("minute_months_done") or 0, prog["minute_months_total"])
    elif prog.get("months_total"):
        done, total, unit = prog.get("months_done") or 0, prog["months_total"], "months of 1m"
        months = (done, total)
    elif prog.get("symbols_total"):
        done, total, unit = prog.get("symbols_done") or 0, prog["symbols_total"], "symbols"
    elif prog.get("sessions_total"):
        done, total, unit = prog.get("sessions_done") or 0, prog["sessions_total"], "sessions"
    else:
        return None
    files = None
    if prog.get("files_total"):  # the flat files among the chunks: one chunk each
        files = {"done": int(prog.get("files_done") or 0), "total": int(prog["files_total"]),
                 "failed": int(prog.get("files_failed") or 0),
                 "bytes": human_bytes(prog.get("file_bytes") or 0),
                 "rows": int(prog.get("file_rows") or 0)}
    return {"done": int(done), "total": int(total), "unit": unit,
            "pct": round(100 * int(done) / int(total)) if total else None,
            "months_done": months[0] if months else None,
            "months_total": months[1] if months else None, "files": files,
            "eta_s": prog.get("eta_s")}


def duration_s(r: dict, *, running_until_now: bool = False) -> float | None:
    """Seconds a run took (so far, with ``running_until_now``), or None."""
    if not r.get("started_at"):
        return None
    end = r.get("finished_at")
    if end is None and running_until_now:
        end = dt.datetime.now(dt.UTC)
    return round((end - r["started_at"]).total_seconds(), 3) if end else None


def mark_stale(conn, default_timeout_s: int) -> int:
    """Runs still 'running' (or 'queued' for over a day) whose heartbeat is older
    than their timeout are marked failed: a killed worker leaves nothing running
    forever."""
    rows = runs_sql.fail_stale(conn, default_timeout_s)
    for rid, job in rows:
        store.add_event(conn, "error", job, f"run {rid} of {job} marked failed: no heartbeat "
                                             f"within its timeout", {"run_id": rid})
    return len(rows)


def _stale(conn, job: str, run_id: int, rq_job_id: str | None) -> dict:
    """An RQ job whose run is not in this database's history (a restore
    replaced it): it does nothing, and says so."""
    msg = (f"{job} not run: its run {run_id} is not in this database's history "
           f"(a restore replaced it); RQ job {rq_job_id}")
    log.warning("%s", msg)
    store.add_event(conn, "warning", job, msg, {"run_id": run_id, "rq_job_id": rq_job_id})
    return {"run_id": None, "status": "skipped", "reason": msg}


def execute(rt, job: str, slot: str, fn: Callable[..., dict], *, trigger: str = "manual",
            params: dict | None = None, run_id: int | None = None,
            rq_job_id: str | None = None) -> dict:
    """Claim (unless ``run_id`` is given), run ``fn(rt, run_id, report, **params)``
    and record the outcome. ``report(dict)`` stores progress. Returns a dict with
    ``run_id`` and ``status`` ('skipped' when the slot was taken). Errors are
    recorded once (job_runs + event) and re-raised so RQ's retry applies."""
    params = params or {}
    cfg = rt.config
    timeout_s = cfg["jobs"]["timeout_seconds"]
    with rt.conn() as conn:
        if run_id is None:
            run_id = claim(conn, job, slot, trigger=trigger, params=params, timeout_s=timeout_s,
                           rq_job_id=rq_job_id)
            if run_id is None:
                log.info("%s slot %s already claimed: this run does nothing", job, slot)
                return {"run_id": None, "status": "skipped", "slot": slot}
        else:
            given, run_id = run_id, runs_sql.own_run(conn, run_id, job, rq_job_id)
            if run_id is None:
                return _stale(conn, job, given, rq_job_id)
        start(conn, run_id)
    t0 = time.monotonic()
    last = [0.0]

    def report(data: dict, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - last[0] >= 0.5:
            last[0] = now
            with rt.conn() as c:
                progress(c, run_id, data)

    try:
        result = fn(rt, run_id, report, **params) or {}
        status = result.pop("status", "ok")
        result["duration_s"] = round(time.monotonic() - t0, 3)
        with rt.conn() as conn:
            finish(conn, run_id, status, result, result.get("error"))
            level = "info" if status == "ok" else "warning"
            store.add_event(conn, level, job, f"{job} {status} in {result['duration_s']} s",
                            {"run_id": run_id, **{k: v for k, v in result.items()
                                                  if isinstance(v, (int, float, str))}})
        return {"run_id": run_id, "status": status, **result}
    except HandedOver as e:  # no failure: the run goes on without this job
        log.info("%s", e.message)
        try:
            with rt.conn() as conn:
                store.add_event(conn, "info", job, e.message, {"run_id": run_id})
        except Exception:  # noqa: BLE001 - the log line says it
            pass
        return {"run_id": run_id, "status": "handed_over"}
    except BaseException as e:  # recorded, then re-raised
        msg = (e.message if isinstance(e, (ApplianceError, WorkerStopping))
               else f"{e.__class__.__name__}: {e}")
        if isinstance(e, WorkerStopping):  # the appliance stopping: no fault to trace
            log.warning("%s run %s %s", job, run_id, msg)
        elif isinstance(e, KeyboardInterrupt):  # Ctrl-C on a command: no fault to trace
            msg = ("interrupted (Ctrl-C): what it stored is kept, the next run goes on from "
                   "there")
            log.warning("%s run %s %s", job, run_id, msg)
        elif not isinstance(e, ApplianceError):
            log.error("%s run %s failed:\n%s", job, run_id, traceback.format_exc())
        try:
            with rt.conn() as conn:
                finish(conn, run_id, "failed", {"duration_s": round(time.monotonic() - t0, 3)},
                       msg)
                store.add_event(conn, "warning" if isinstance(e, WorkerStopping) else "error",
                                job, f"{job} failed: {msg}", {"run_id": run_id})
        except Exception:  # the database itself may be what failed
            log.exception("could not record the failure of %s run %s", job, run_id)
        raise
