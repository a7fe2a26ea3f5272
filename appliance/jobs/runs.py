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
from typing import Callable

from psycopg.rows import dict_row

from .. import store
from ..redaction import redact, redact_obj
from ..errors import ApplianceError

log = logging.getLogger("appliance.jobs")


def manual_slot() -> str:
    return "manual:" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + ":" + \
        uuid.uuid4().hex[:8]


def claim(conn, job: str, slot: str, *, trigger: str = "manual", params: dict | None = None,
          timeout_s: int | None = None, rq_job_id: str | None = None) -> int | None:
    """Claim (job, slot); return the run id, or None when someone else has it."""
    row = conn.execute(
        """INSERT INTO job_runs (job, slot, trigger, status, params, timeout_s, rq_job_id)
           VALUES (%s, %s, %s, 'queued', %s, %s, %s)
           ON CONFLICT (job, slot) DO UPDATE SET status = 'queued', error = NULL
             WHERE job_runs.status = 'failed' AND job_runs.rq_job_id IS NOT NULL
               AND job_runs.rq_job_id = EXCLUDED.rq_job_id
           RETURNING id""",
        (job, slot, trigger, json.dumps(params or {}, default=str), timeout_s, rq_job_id)
    ).fetchone()
    return None if row is None else row[0]


def set_rq_id(conn, run_id: int, rq_job_id: str) -> None:
    conn.execute("UPDATE job_runs SET rq_job_id = %s WHERE id = %s", (rq_job_id, run_id))


def start(conn, run_id: int) -> None:
    conn.execute("""UPDATE job_runs SET status = 'running', started_at = now(), heartbeat_at = now(),
                    attempts = attempts + 1, finished_at = NULL WHERE id = %s""", (run_id,))


def progress(conn, run_id: int, data: dict) -> None:
    conn.execute("UPDATE job_runs SET progress = %s, heartbeat_at = now() WHERE id = %s",
                 (json.dumps(data, default=str), run_id))


def finish(conn, run_id: int, status: str, result: dict | None = None,
           error: str | None = None) -> None:
    # the last progress report may have said "comparing 6/7": the progress
    # ends in the run's final state, whatever the job reported last
    conn.execute(
        """UPDATE job_runs SET status = %s, result = %s, error = %s, finished_at = now(),
           heartbeat_at = now(),
           progress = CASE WHEN progress ? 'phase'
                            AND progress->>'phase' NOT IN ('done', 'passed', 'failed')
                           THEN progress || jsonb_build_object('phase', %s::text, 'final', %s::text)
                           ELSE progress || jsonb_build_object('final', %s::text) END
           WHERE id = %s""",
        (status, json.dumps(redact_obj(json.loads(json.dumps(result or {}, default=str)))),
         redact(error), status, status, status, run_id))


def duration_s(r: dict, *, running_until_now: bool = False) -> float | None:
    """Seconds a run took (so far, with ``running_until_now``), or None."""
    if not r.get("started_at"):
        return None
    end = r.get("finished_at")
    if end is None and running_until_now:
        end = dt.datetime.now(dt.timezone.utc)
    return round((end - r["started_at"]).total_seconds(), 3) if end else None


def get(conn, run_id: int) -> dict | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM job_runs WHERE id = %s", (run_id,))
        return cur.fetchone()


def recent(conn, *, job: str | None = None, limit: int = 50) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT * FROM job_runs WHERE (%s::text IS NULL OR job = %s)
                       ORDER BY created_at DESC, id DESC LIMIT %s""", (job, job, limit))
        return cur.fetchall()


def job_names(conn) -> list[str]:
    """The jobs that have runs, sorted."""
    return [r[0] for r in conn.execute("SELECT DISTINCT job FROM job_runs ORDER BY 1")]


def latest_restore_tests(conn) -> dict[str, dict]:
    """backup id (as given, a string) -> the newest restore_test run for it."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT DISTINCT ON (params->>'backup') * FROM job_runs
                       WHERE job = 'restore_test' ORDER BY params->>'backup', created_at DESC""")
        return {r["params"].get("backup"): r for r in cur.fetchall()}


def last_by_job(conn) -> dict[str, dict]:
    """Per job: the last run, the last success and the last failure."""
    out: dict[str, dict] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT DISTINCT ON (job) * FROM job_runs ORDER BY job, created_at DESC""")
        for r in cur.fetchall():
            out.setdefault(r["job"], {})["last"] = r
        cur.execute("""SELECT DISTINCT ON (job) * FROM job_runs WHERE status IN ('ok', 'partial')
                       ORDER BY job, finished_at DESC NULLS LAST""")
        for r in cur.fetchall():
            out.setdefault(r["job"], {})["last_success"] = r
        cur.execute("""SELECT DISTINCT ON (job) * FROM job_runs WHERE status = 'failed'
                       ORDER BY job, finished_at DESC NULLS LAST""")
        for r in cur.fetchall():
            out.setdefault(r["job"], {})["last_failure"] = r
    return out


def mark_stale(conn, default_timeout_s: int) -> int:
    """Runs still 'running' (or 'queued' for over a day) whose heartbeat is older
    than their timeout are marked failed: a killed worker leaves nothing running
    forever."""
    cur = conn.execute(
        """UPDATE job_runs SET status = 'failed', finished_at = now(),
               error = coalesce(error, '') || 'stale: no heartbeat for longer than the timeout '
                       || coalesce(timeout_s, %s) || ' s (worker killed?)'
           WHERE (status = 'running'
                  AND coalesce(heartbeat_at, started_at, created_at)
                      < now() - make_interval(secs => coalesce(timeout_s, %s)))
              OR (status = 'queued' AND created_at < now() - interval '1 day')
           RETURNING id, job""", (default_timeout_s, default_timeout_s))
    rows = cur.fetchall()
    for rid, job in rows:
        store.add_event(conn, "error", job, f"run {rid} of {job} marked failed: no heartbeat "
                                             f"within its timeout", {"run_id": rid})
    return len(rows)


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
    except BaseException as e:  # noqa: BLE001 - recorded, then re-raised
        msg = e.message if isinstance(e, ApplianceError) else f"{e.__class__.__name__}: {e}"
        if not isinstance(e, ApplianceError):
            log.error("%s run %s failed:\n%s", job, run_id, traceback.format_exc())
        try:
            with rt.conn() as conn:
                finish(conn, run_id, "failed", {"duration_s": round(time.monotonic() - t0, 3)},
                       msg)
                store.add_event(conn, "error", job, f"{job} failed: {msg}", {"run_id": run_id})
        except Exception:  # the database itself may be what failed
            log.exception("could not record the failure of %s run %s", job, run_id)
        raise
