"""The ``job_runs`` table's SQL: claiming a (job, slot), progress, outcomes,
and the reads that status, alerts, the scheduler and restores make of it."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from appliance.store.pool import one_row


def claim(conn: Connection[Any], job: str, slot: str, *, trigger: str = "manual",
          params: dict[str, Any] | None = None,
          timeout_s: int | None = None, rq_job_id: str | None = None) -> int | None:
    """Claim (job, slot); the run id, or None when someone else has it. A run
    retried by RQ re-takes its own failed row (same RQ job id)."""
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


def set_rq_id(conn: Connection[Any], run_id: int, rq_job_id: str) -> None:
    conn.execute("UPDATE job_runs SET rq_job_id = %s WHERE id = %s", (rq_job_id, run_id))


def start(conn: Connection[Any], run_id: int) -> None:
    conn.execute("""UPDATE job_runs SET status = 'running', started_at = now(), heartbeat_at = now(),
                    attempts = attempts + 1, finished_at = NULL WHERE id = %s""", (run_id,))


def progress(conn: Connection[Any], run_id: int, data: dict[str, Any]) -> None:
    conn.execute("UPDATE job_runs SET progress = %s, heartbeat_at = now() WHERE id = %s",
                 (json.dumps(data, default=str), run_id))


def finish_run(conn: Connection[Any], run_id: int, status: str, result_json: str, error: str | None) -> None:
    """The outcome (``result_json`` already serialized and redacted). The
    progress ends in the run's final state, whatever the job reported last."""
    conn.execute(
        """UPDATE job_runs SET status = %s, result = %s, error = %s, finished_at = now(),
           heartbeat_at = now(),
           progress = CASE WHEN progress ? 'phase'
                            AND progress->>'phase' NOT IN ('done', 'passed', 'failed')
                           THEN progress || jsonb_build_object('phase', %s::text, 'final', %s::text)
                           ELSE progress || jsonb_build_object('final', %s::text) END
           WHERE id = %s""",
        (status, result_json, error, status, status, status, run_id))


def get(conn: Connection[Any], run_id: int) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM job_runs WHERE id = %s", (run_id,))
        return cur.fetchone()


def recent(conn: Connection[Any], *, job: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT * FROM job_runs WHERE (%s::text IS NULL OR job = %s)
                       ORDER BY created_at DESC, id DESC LIMIT %s""", (job, job, limit))
        return cur.fetchall()


def job_names(conn: Connection[Any]) -> list[str]:
    """The jobs that have runs, sorted."""
    return [r[0] for r in conn.execute("SELECT DISTINCT job FROM job_runs ORDER BY 1")]


def latest_restore_tests(conn: Connection[Any]) -> dict[str, dict[str, Any]]:
    """backup id (as given, a string) -> the newest restore_test run for it."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT DISTINCT ON (params->>'backup') * FROM job_runs
                       WHERE job = 'restore_test' ORDER BY params->>'backup', created_at DESC""")
        return {r["params"].get("backup"): r for r in cur.fetchall()}


def last_by_job(conn: Connection[Any]) -> dict[str, dict[str, Any]]:
    """Per job: the last run, the last success and the last failure."""
    out: dict[str, dict[str, Any]] = {}
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


def fail_stale(conn: Connection[Any], default_timeout_s: int) -> list[tuple[int, str]]:
    """Runs still 'running' past their timeout without a heartbeat (or
    'queued' for over a day) marked failed; their (id, job)."""
    return conn.execute(
        """UPDATE job_runs SET status = 'failed', finished_at = now(),
               error = coalesce(error, '') || 'stale: no heartbeat for longer than the timeout '
                       || coalesce(timeout_s, %s) || ' s (worker killed?)'
           WHERE (status = 'running'
                  AND coalesce(heartbeat_at, started_at, created_at)
                      < now() - make_interval(secs => coalesce(timeout_s, %s)))
              OR (status = 'queued' AND created_at < now() - interval '1 day')
           RETURNING id, job""", (default_timeout_s, default_timeout_s)).fetchall()


def fail_by_rq_id(conn: Connection[Any], rq_job_id: str, error: str) -> list[tuple[int, str]]:
    """The queued or running runs of one RQ job marked failed; their (id, job)."""
    return conn.execute(
        """UPDATE job_runs SET status = 'failed', finished_at = now(), error = %s
           WHERE rq_job_id = %s AND status IN ('queued', 'running')
           RETURNING id, job""", (error, rq_job_id)).fetchall()


def fail_in_flight(conn: Connection[Any], own_id: int | None, own_finished_at: dt.datetime | None,
                   own_filename: str | None,
                   error: str) -> int:
    """In a restored database: the run ``own_id`` (the backup that wrote the
    archive) ended ok, every other queued or running run failed with ``error``.
    How many rows changed."""
    n = 0
    if own_id is not None:
        n += conn.execute(
            """UPDATE job_runs SET status = 'ok', finished_at = %s,
                      result = result || jsonb_build_object('filename', %s::text)
                WHERE id = %s AND status IN ('queued', 'running')""",
            (own_finished_at, own_filename, own_id)).rowcount
    n += conn.execute(
        """UPDATE job_runs SET status = 'failed', error = %s,
                  finished_at = coalesce(heartbeat_at, started_at, created_at)
            WHERE status IN ('queued', 'running')""", (error,)).rowcount
    return n


def running_recently(conn: Connection[Any]) -> list[tuple[Any, ...]]:
    """(id, job) of the runs running with a heartbeat in the last five minutes."""
    return conn.execute(
        """SELECT id, job FROM job_runs WHERE status = 'running'
             AND coalesce(heartbeat_at, started_at) > now() - interval '5 minutes'""").fetchall()


def last_claimed_slots(conn: Connection[Any], slot_pattern: str) -> dict[str, str]:
    """Per job, the latest slot matching ``slot_pattern`` (a regular expression)."""
    rows = conn.execute("SELECT job, max(slot) FROM job_runs WHERE slot ~ %s GROUP BY job",
                        (slot_pattern,)).fetchall()
    return {job: slot for job, slot in rows}


def recent_outcomes(conn: Connection[Any], n: int) -> dict[str, list[str]]:
    """Per job, the statuses of its last ``n`` finished runs, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT job, array_agg(status ORDER BY created_at DESC) AS sts
                       FROM (SELECT job, status, created_at,
                                    row_number() OVER (PARTITION BY job
                                                       ORDER BY created_at DESC) AS rn
                             FROM job_runs WHERE status IN ('ok', 'partial', 'failed')) r
                       WHERE rn <= %s GROUP BY job""", (n,))
        return {r["job"]: r["sts"] for r in cur.fetchall()}


def failures_since(conn: Connection[Any], job: str, since: dt.datetime | None) -> tuple[int, object]:
    """(how many runs of ``job`` failed after ``since`` (None: ever), when the first ended)."""
    row = one_row(conn.execute(
        """SELECT count(*), min(coalesce(finished_at, created_at))
           FROM job_runs WHERE job = %s AND status = 'failed'
             AND created_at > coalesce(%s, '-infinity'::timestamptz)""", (job, since)))
    return row[0], row[1]


def last_success_result(conn: Connection[Any], job: str) -> dict[str, Any] | None:
    """The result of ``job``'s latest run that ended ok or partial."""
    row = conn.execute("""SELECT result FROM job_runs WHERE job = %s
                            AND status IN ('ok', 'partial')
                          ORDER BY finished_at DESC NULLS LAST LIMIT 1""", (job,)).fetchone()
    return row[0] if row else None


def delete_finished_before(conn: Connection[Any], days: int) -> int:
    """Finished runs older than ``days`` deleted; how many."""
    return conn.execute(
        """DELETE FROM job_runs
           WHERE coalesce(finished_at, created_at) < now() - make_interval(days => %s)
             AND status NOT IN ('queued', 'running')""", (days,)).rowcount


def own_run(conn: Connection[Any], run_id: int, job: str, rq_job_id: str | None) -> int | None:
    """The run an RQ job may execute: ``run_id`` when that row is this job's
    (same job name, and the same RQ job id, or none recorded yet while it is
    queued); else the queued or retried row of ``job`` that carries
    ``rq_job_id`` (a restore gave the run another id); else None (the job
    points into a history that was replaced)."""
    row = conn.execute("SELECT job, status, rq_job_id FROM job_runs WHERE id = %s",
                       (run_id,)).fetchone()
    if row is not None and row[0] == job:
        if rq_job_id is None or row[2] == rq_job_id or (row[2] is None and row[1] == "queued"):
            return run_id
    if rq_job_id is None:
        return None
    found = conn.execute(
        """SELECT id FROM job_runs WHERE rq_job_id = %s AND job = %s
           ORDER BY id DESC LIMIT 1""", (rq_job_id, job)).fetchone()
    return found[0] if found else None


def runnable_ids_by_rq_id(conn: Connection[Any]) -> dict[str, tuple[int, str]]:
    """RQ job id -> (run id, job) of every run that records one and may still
    run: queued, or failed and waiting for RQ's retry."""
    return {r[0]: (r[1], r[2]) for r in conn.execute(
        """SELECT rq_job_id, id, job FROM job_runs
           WHERE status IN ('queued', 'failed') AND rq_job_id IS NOT NULL""")}


def fail_queued_without_job(conn: Connection[Any], rq_job_ids: list[str],
                            error: str) -> list[tuple[int, str]]:
    """Queued runs whose RQ job is not among ``rq_job_ids`` (nothing will run
    them) marked failed with ``error``; their (id, job). A run that records
    no RQ job id yet is being queued right now and is left alone."""
    return conn.execute(
        """UPDATE job_runs SET status = 'failed', finished_at = now(), error = %s
           WHERE status = 'queued' AND rq_job_id IS NOT NULL
             AND NOT (rq_job_id = ANY(%s))
           RETURNING id, job""", (error, rq_job_ids)).fetchall()
