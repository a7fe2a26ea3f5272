"""Retention (daily): the appliance's own history, not market data.

* ``job_runs`` finished more than ``retention.job_runs_days`` ago (a run still
  ``queued`` or ``running`` is never deleted, however old);
* ``events`` older than ``retention.events_days``;
* ``alerts`` resolved more than ``retention.events_days`` ago (pending and open
  alerts stay, and so does their history until they resolve);
* ``config_reloads`` older than ``retention.job_runs_days``.

Market data retention (``retention.data_years``) is the maintenance job's:
it drops whole partitions. Backups are pruned by the backup job
(``retention.backups_keep``).
"""
from __future__ import annotations

from appliance import store
from appliance.jobs.registry import JobResult


class RetentionResult(JobResult, total=False):
    """The ``retention`` job's result."""
    job_runs_days: int
    events_days: int
    job_runs_deleted: int
    events_deleted: int
    alerts_deleted: int
    config_reloads_deleted: int


def prune_history(rt, run_id, report, job_runs_days=None, events_days=None) -> RetentionResult:
    cfg = rt.config
    jr_days = int(job_runs_days if job_runs_days is not None else cfg["retention"]["job_runs_days"])
    ev_days = int(events_days if events_days is not None else cfg["retention"]["events_days"])
    with rt.conn() as conn:
        job_runs = store.runs.delete_finished_before(conn, jr_days)
        events = store.delete_events_before(conn, ev_days)
        alerts = store.alerts.delete_resolved_before(conn, ev_days)
        reloads = store.delete_config_reloads_before(conn, jr_days)
        result = {"job_runs_days": jr_days, "events_days": ev_days,
                  "job_runs_deleted": job_runs, "events_deleted": events,
                  "alerts_deleted": alerts, "config_reloads_deleted": reloads}
        total = job_runs + events + alerts + reloads
        if total:
            store.add_event(conn, "info", "retention",
                            f"retention: deleted {job_runs} job run(s), {events} event(s), "
                            f"{alerts} resolved alert(s), {reloads} config reload(s)", result)
    return {"status": "ok", **result}
