"""Alert rules over measured state.

Each rule has a key, a severity, a threshold from ``alerts:`` in
appliance.yaml, a ``for`` duration and a message with the response steps.
``evaluate(rt, now)`` measures everything once, then per rule:

* condition true, no active row   -> a ``pending`` row (pending_since = now);
* pending for at least ``for``    -> ``open`` (opened_at = now), notifiers told;
* condition false while pending   -> the row is dropped (it never opened);
* condition false while open      -> ``resolved`` (resolved_at = now), notifiers told.

So a condition that flaps faster than its ``for`` never opens an alert.
``backup_failed`` is opened and resolved by the backup job itself; the rules
leave it alone. Notifications (webhook JSON POST, SMTP e-mail) are best effort:
a failing notifier is logged and recorded as an event, never blocks the rules.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from croniter import croniter

from appliance import store
from appliance.alerts import health as health_mod
from appliance.alerts import notify as notifier
from appliance.alerts.disks import disks
from appliance.jobs.registry import JobResult, active_schedules, is_off
from appliance.runtime.replica import lag_alert

log = logging.getLogger("appliance.alerts")

K_429_SAMPLES = "appliance:alerts:429"
EVALUATE_LOCK = 7_345_800
K_LAST_EVAL = "appliance:alerts:last_evaluation"  # wall-clock time of the last evaluation


@dataclass(frozen=True)
class Rule:
    key: str
    severity: str          # warning | critical
    for_seconds: int       # default; alerts.for_seconds[key] overrides
    summary: str
    response: str
    check: Callable  # (m, cfg) -> (firing, message, details); firing None: left as it is


@dataclass
class Measures:
    """What the rules look at, measured once per evaluation."""

    now: dt.datetime
    health: object           # health.Health (the snapshot every view reads)
    disk: dict               # name -> {"path", "free_pct", "free_bytes"} or {"error"}
    job_history: dict        # job -> [statuses, newest first]
    last_backup_ok: dt.datetime | None
    backup_failures_since_ok: int
    first_backup_failure_since_ok: dt.datetime | None
    last_restore_test: dict | None
    last_spot_check: dict | None
    vendor_auth_error: dict | None
    rate_limited_last_hour: int | None
    installed_at: dt.datetime | None = None


# --------------------------------------------------------------------------- rules

def _validation(level: str):
    def check(m: Measures, cfg):
        snap = m.health.db
        if snap.get("status") != "ok" or not snap.get("total_records"):
            return False, "", {}
        rate = snap["validation_rate_pct"]
        a = cfg["alerts"]
        limit = a["validation_rate_critical_pct"] if level == "critical" else \
            a["validation_rate_warn_pct"]
        if level == "warning" and rate < a["validation_rate_critical_pct"]:
            return None, "", {}  # the critical rule speaks; an open warning stays open
        return (rate < limit,
                f"validation rate {rate}% is below {limit}%",
                {"validation_rate_pct": rate, "threshold_pct": limit})
    return check


def _stale(m: Measures, cfg):
    behind = m.health.latest_data_sessions_behind
    limit = cfg["alerts"]["stale_after_sessions"]
    if behind is None:
        return False, "", {}
    return (behind > limit,
            f"the latest stored session ({m.health.latest_data}) is {behind} trading "
            f"session(s) behind the latest completed one (allowed: {limit})",
            {"latest_data": m.health.latest_data, "sessions_behind": behind})


def _scheduler(m: Measures, cfg):
    if m.health.redis != "ok":
        return True, "Redis is unreachable: the scheduler cannot run", {"redis": "error"}
    age = m.health.queue.get("scheduler_heartbeat_age_s")
    limit = cfg["alerts"]["scheduler_heartbeat_max_seconds"]
    return (not m.health.scheduler_running,
            "no scheduler heartbeat" + (f" for {age:.0f} s" if age is not None else "")
            + f" (allowed: {limit} s)", {"heartbeat_age_s": age})


def _worker(m: Measures, cfg):
    if m.health.redis != "ok":
        return False, "", {}  # scheduler_stopped already says Redis is down
    age = m.health.queue.get("worker_heartbeat_age_s")
    return (not m.health.worker_alive,
            "no worker heartbeat" + (f" for {age:.0f} s" if age is not None else
                                     f" in the last {cfg['alerts']['scheduler_heartbeat_max_seconds']} s"),
            {"heartbeat_age_s": age})


#: A job scheduled less often than this opens ``job_failing`` on its first
#: failure: waiting for three failed runs of a monthly job is three months.
RARE_JOB_INTERVAL_S = 7 * 86400


def rare_jobs(schedules: dict) -> set[str]:
    """Jobs whose cron runs less often than weekly (the longest gap between
    consecutive runs over the next year decides)."""
    return set(_rare_jobs(tuple(sorted(schedules.items()))))


@functools.lru_cache(maxsize=32)
def _rare_jobs(schedules: tuple) -> frozenset:
    """``rare_jobs`` for one set of schedules, computed once: walking each cron
    over a year is some 20-50 ms of CPU, which under gevent is time every
    request of the web worker that runs the alerts watchdog waits."""

    out = set()
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for job, expr in schedules:
        try:
            it = croniter(expr, start)
            prev = it.get_next(dt.datetime)
            for _ in range(60):
                nxt = it.get_next(dt.datetime)
                if (nxt - prev).total_seconds() > RARE_JOB_INTERVAL_S:
                    out.add(job)
                    break
                prev = nxt
                if (nxt - start).days > 366:
                    break
        except (ValueError, KeyError):
            continue
    return frozenset(out)


def _jobs_failing(m: Measures, cfg):
    n, rare = cfg["alerts"]["job_failures_max"], rare_jobs(active_schedules(cfg["schedules"]))
    bad = sorted(job for job, sts in m.job_history.items()  # a job turned off: no alert
                 if not is_off(cfg["schedules"].get(job)) and (
                     (len(sts) >= n and all(s == "failed" for s in sts[:n]))
                     or (job in rare and sts and sts[0] == "failed")))
    what = "; ".join(f"the last run of {j} failed" if j in rare else f"the last {n} runs of {j} "
                     f"failed" for j in bad)
    return (bool(bad), what, {"jobs": bad})


def _backup_stale(m: Measures, cfg):
    limit = cfg["alerts"]["backup_max_age_days"]
    if m.last_backup_ok is None:
        # a new installation is not late until it has existed for the allowed age
        if m.installed_at is None or (m.now - m.installed_at).total_seconds() / 86400 <= limit:
            return False, "", {}
        return True, "there is no good backup yet", {"last_backup": None}
    age_days = (m.now - m.last_backup_ok).total_seconds() / 86400
    return (age_days > limit,
            f"the newest good backup is {age_days:.1f} days old (allowed: {limit})",
            {"last_backup": m.last_backup_ok.isoformat(), "age_days": round(age_days, 2)})


def _backup_failing(m: Measures, cfg):
    days = cfg["alerts"]["backup_failing_days"]
    first = m.first_backup_failure_since_ok
    if not m.backup_failures_since_ok or first is None:
        return False, "", {}
    span = (m.now - first).total_seconds() / 86400
    return (span > days,
            f"backups have been failing for {span:.1f} days ({m.backup_failures_since_ok} "
            f"failed runs since the last good one)",
            {"failing_days": round(span, 2), "failed_runs": m.backup_failures_since_ok})


def _restore_test(m: Measures, cfg):
    t = m.last_restore_test
    if not t:
        return False, "", {}
    return (t.get("status") == "failed",
            f"the last restore test ({t.get('filename')}) failed: "
            f"{(t.get('error') or 'see its result')}"[:500],
            {"backup_id": t.get("backup_id"), "at": str(t.get("at"))})


def _disk(name: str):
    def check(m: Measures, cfg):
        d = m.disk.get(name) or {}
        limit = cfg["alerts"]["disk_free_min_pct"]
        if "free_pct" not in d:
            return False, "", {}
        return (d["free_pct"] < limit,
                f"{d['path']}: {d['free_pct']:.1f}% free (minimum {limit}%)",
                {"path": d["path"], "free_pct": round(d["free_pct"], 2),
                 "free_bytes": d.get("free_bytes")})
    return check


def _gaps(m: Measures, cfg):
    snap = m.health.db
    if snap.get("status") != "ok" or not snap.get("total_records"):
        return False, "", {}
    pct = snap["gaps_flagged_pct"]
    limit = cfg["alerts"]["gaps_flagged_max_pct"]
    return (pct > limit, f"{pct}% of candles are flagged as gaps (allowed: {limit}%)",
            {"gaps_flagged_pct": pct, "gaps_flagged": snap["gaps_flagged"]})


def _spot_check(m: Measures, cfg):
    r = m.last_spot_check
    if not r:
        return False, "", {}
    pct = float(r.get("mismatch_pct") or 0)
    limit = cfg["alerts"]["spot_check_mismatch_max_pct"]
    pairs = [p for p in r.get("pairs", []) if p.get("verdict") == "mismatch"]
    listed = ", ".join(f"{p['symbol']} {p['session']} ({p.get('diff_pct')}%)" for p in pairs[:10])
    return (pct > limit,
            f"{pct}% of spot-checked closes differ from the second source "
            f"(allowed: {limit}%): {listed}",
            {"mismatch_pct": pct, "pairs": pairs[:50]})


def _vendor_auth(m: Measures, cfg):
    e = m.vendor_auth_error
    if not e:
        return False, "", {}
    return True, f"the vendor refused the request: {e['message']}", {"since": str(e["ts"])}


def _rate_limited(m: Measures, cfg):
    n = m.rate_limited_last_hour
    limit = cfg["alerts"]["rate_limited_max_per_hour"]
    if n is None:
        return False, "", {}
    return (n > limit, f"{n} rate-limited (429) vendor answers in the last hour "
                       f"(allowed: {limit})", {"count_last_hour": n})


def _symbol_unknown(m: Measures, cfg):
    syms = m.health.db.get("unknown_symbols") or []
    return (bool(syms), f"the vendor does not know {', '.join(syms)}: no bars can be stored "
                        f"for them", {"symbols": syms})


def _replica_lag(m: Measures, cfg):
    return lag_alert(getattr(m.health, "replica", None) or {},
                     cfg["database"]["max_replica_lag_seconds"])


RULES: list[Rule] = [
    # The responses follow the operations guide's "Alerts & Responses" and
    # "Escalation" sections, with the appliance's own commands and pages.
    Rule("validation_rate_critical", "critical", 0, "Validation rate critically low",
         "1. Escalate now (validation below the critical threshold). 2. Console Symbols: open "
         "the red rows; each failed candle names the check it failed. 3. The log "
         "('grep -i retry var/log/appliance.log', journalctl on a host) and the Jobs page's "
         "backfill run: vendor errors, timeouts. 4. Check the vendor's status page "
         "and that the API key is still valid. 5. Re-fetch one symbol: 'appliance backfill "
         "SYMBOL --start D --end D'.", _validation("critical")),
    Rule("validation_rate_low", "warning", 300, "Low validation rate",
         "1. Console Symbols: open the red rows; each failed candle names the check it failed "
         "(a new symbol with incomplete data is a common cause). 2. The log "
         "('grep -i retry var/log/appliance.log') and the Jobs page's backfill run: vendor "
         "degradation or timeouts during the backfill. 3. Check the "
         "vendor's status page and that the API key is still valid. 4. A vendor outage "
         "recovers with the next backfill: no action needed once it resolves.",
         _validation("warning")),
    Rule("data_stale", "warning", 600, "Data stale",
         "1. 'appliance status': is the scheduler running, did the last backfill fail? "
         "2. Console Jobs: the last backfill's error. 3. If the scheduler is stopped: "
         "'systemctl restart appliance-scheduler'. 4. Run one now: 'appliance backfill' "
         "(or Run now in the console) and watch it complete. 5. If it still fails, check the "
         "database ('appliance status' shows Database ERROR).", _stale),
    Rule("scheduler_stopped", "critical", 120, "Scheduler stopped",
         "1. 'systemctl status appliance-scheduler' (or 'appliance status'). 2. "
         "'journalctl -u appliance-scheduler -n 50'. 3. 'systemctl restart appliance-scheduler'"
         " (everything: 'systemctl restart market-data-api.target'); under 'make up': stop "
         "it (Ctrl-C) and start it again. 4. Verify: 'appliance status' shows Scheduler "
         "running. 5. Still failing: check PostgreSQL and Redis ('appliance status').",
         _scheduler),
    Rule("worker_down", "critical", 120, "No worker alive",
         "Jobs are queued but nothing runs them. 1. \"systemctl status 'appliance-worker@*'\". "
         "2. \"journalctl -u 'appliance-worker@*' -n 50\". 3. 'systemctl restart "
         "market-data-api.target'; under 'make up': stop it (Ctrl-C) and start it again, or "
         "start one more beside it with 'appliance worker'. 4. Verify: 'appliance status' "
         "shows worker alive.", _worker),
    Rule("job_failing", "warning", 0, "Jobs failing repeatedly",
         "1. Console Jobs: each failed run shows its error and progress. 2. Console Events "
         "for the same period. 3. Fix the cause, then Run now from the console.",
         _jobs_failing),
    Rule("backup_stale", "warning", 0, "Backup too old",
         "1. Console Backups (or 'appliance backups'): did the last backup fail? 2. Is the "
         "backup drive mounted and writable ('df -h' on backup.path)? 3. Run one now: "
         "'appliance backup'.", _backup_stale),
    Rule("backup_failing", "critical", 0, "Backups failing for over a week",
         "Escalate: the appliance has no fresh backup. 1. Console Backups and Jobs: the "
         "backup runs' error (drive not mounted, disk full, pg_dump failure). 2. Fix it and "
         "run 'appliance backup'; the alert resolves with the first good backup.",
         _backup_failing),
    Rule("restore_test_failed", "critical", 0, "Restore test failed",
         "Escalate: the backup it tested may not be usable. 1. Console Backups: the test's "
         "result says what differed. 2. Take a new backup ('appliance backup') and test it "
         "('appliance restore-test'). 3. Copy the failed archive elsewhere to analyse it: "
         "retention deletes it in time.",
         _restore_test),
    Rule("disk_low_data", "warning", 0, "Low disk space (data)",
         "1. 'df -h' on data_dir. 2. Free space or grow the disk. 3. Large old history: set "
         "retention.data_years (the maintenance job drops whole old partitions).",
         _disk("data")),
    Rule("disk_low_backup", "warning", 0, "Low disk space (backups)",
         "1. 'df -h' on backup.path. 2. Lower retention.backups_keep and 'appliance reload': "
         "the next backup ('appliance backup' now) deletes the oldest archives first; or "
         "rotate the backup drive. 3. Backups refuse to start below backup.min_free_pct.", _disk("backup")),
    Rule("gaps_high", "warning", 0, "Many gaps flagged",
         "Review the console's Gaps page now (the monthly gap review): kind split or dividend "
         "is explained, jump is a move over quality.gap_threshold_pct nothing explains, "
         "missing a session without a candle. Re-fetch suspicious sessions with 'appliance "
         "backfill SYMBOL --start D --end D'. Every flag counts, explained ones too: when "
         "the review finds them sound, raise alerts.gaps_flagged_max_pct and reload.",
         _gaps),
    Rule("spot_check_mismatch", "warning", 0, "Spot-check mismatch",
         "The pairs are listed. 1. Re-fetch them: 'appliance backfill SYMBOL --start D "
         "--end D'. 2. Run the spot-check again (console Jobs, Run now). 3. Still different: "
         "investigate the data source (a missed split shows as a constant ratio).",
         _spot_check),
    Rule("vendor_auth", "critical", 0, "Vendor authentication failed",
         "Every request is refused. 1. Verify the API key (POLYGON_API_KEY or "
         "provider.polygon.api_key) and the plan. 2. Fix it and 'appliance reload'. 3. Run "
         "'appliance backfill'; the alert resolves when a backfill succeeds.", _vendor_auth),
    Rule("vendor_rate_limited", "warning", 0, "Vendor rate limiting",
         "1. Lower provider.polygon.requests_per_minute to the plan's limit and 'appliance "
         "reload'. 2. The log shows the retries and waits ('grep -i retry "
         "var/log/appliance.log', journalctl on a host), /metrics counts them "
         "(appliance_vendor_requests_total{kind=\"retry\"}).", _rate_limited),
    Rule("symbol_unknown", "warning", 0, "Symbol unknown to the vendor",
         "1. Check the ticker's spelling (and whether it was renamed or delisted). 2. Correct "
         "it, or remove it from symbols: in appliance.yaml, and 'appliance reload'. The alert "
         "resolves when bars are stored for it or it is removed.", _symbol_unknown),
    Rule("replica_lag", "warning", 60, "Read replica down or lagging",
         "Reads are served by the primary meanwhile (nothing is lost). 1. On the replica host: "
         "'systemctl status postgresql' and its log. 2. On the primary: 'SELECT * FROM "
         "pg_stat_replication' (is the replica streaming?) and 'SELECT * FROM "
         "pg_replication_slots' (an inactive slot keeps WAL on the primary's disk). 3. A "
         "replica far behind catches up by itself once it streams again; one that lost its "
         "slot must be rebuilt with pg_basebackup. The alert resolves when the lag is back "
         "under database.max_replica_lag_seconds.", _replica_lag),
]


def rule_keys() -> list[str]:
    """Keys of every alert that can open (the rules plus the backup job's own)."""
    return [r.key for r in RULES] + ["backup_failed", "config_invalid"]


# --------------------------------------------------------------------------- measuring

def measure(rt, now: dt.datetime, disk_usage=shutil.disk_usage) -> Measures:
    cfg = rt.config
    h = health_mod.compute(rt, now=now)
    disk = disks(cfg, disk_usage)
    jobs, last_ok, fails, first_fail, lrt, spot, auth = {}, None, 0, None, None, None, None
    rate, installed = None, None
    if h.db.get("status") == "ok":
        with rt.conn() as conn:
            jobs = store.runs.recent_outcomes(conn, cfg["alerts"]["job_failures_max"])
            last_ok = store.last_good_backup_at(conn)
            installed = store.installed_at(conn)
            fails, first_fail = store.runs.failures_since(conn, "backup", last_ok)
            lrt = store.last_restore_test(conn, with_error=True)
            spot = store.runs.last_success_result(conn, "spot_check")
            # an auth error from the vendor after the last backfill that fetched fine
            auth = store.last_vendor_auth_error(conn)
            total_429 = store.vendor_429_total(conn)
        rate = _rate_last_hour(rt, int(total_429), now)
    return Measures(now, h, disk, jobs, last_ok, fails, first_fail, lrt, spot, auth, rate,
                    installed)


def _rate_last_hour(rt, total: int, now: dt.datetime) -> int | None:
    """429s in the last hour, from samples of the cumulative counter kept in
    Redis by each evaluation (None until an hour-old sample exists or Redis is down)."""
    try:
        r = rt.redis
        ts = now.timestamp()
        r.zadd(K_429_SAMPLES, {f"{ts}:{total}": ts})
        r.zremrangebyscore(K_429_SAMPLES, "-inf", ts - 2 * 3600)
        # the newest sample at least an hour old is the base of the count
        old = r.zrevrangebyscore(K_429_SAMPLES, ts - 3600, "-inf", start=0, num=1)
        if not old:
            return None
        base = int(old[0].decode().split(":")[1])
        return max(0, total - base)
    except Exception:  # noqa: BLE001 - Redis down: this rule cannot tell
        return None


# --------------------------------------------------------------------------- evaluating

def evaluate(rt, now: dt.datetime | None = None, *, disk_usage=shutil.disk_usage,
             notify: bool = True) -> dict:
    """Measure, apply every rule, open/resolve alerts. Returns what changed."""
    now = now or dt.datetime.now(dt.UTC)
    cfg = rt.config
    m = measure(rt, now, disk_usage)
    if m.health.db.get("status") != "ok":
        return {"error": "database unreachable: alerts cannot be stored", "opened": [],
                "resolved": [], "pending": []}
    overrides = dict(cfg["alerts"]["for_seconds"])
    opened, resolved, pending, firing = [], [], [], []
    with rt.conn() as conn:
        # evaluations (the alerts job, disk_check, a manual run) take turns: two
        # at once would both insert the same pending alert
        store.locks.lock_for_transaction(conn, EVALUATE_LOCK)
        active = {r["key"]: r for r in store.alerts.active_rule_alerts(conn)}
        for rule in RULES:
            try:
                is_firing, message, details = rule.check(m, cfg)
            except Exception as e:  # one broken rule must not stop the rest
                log.exception("alert rule %s failed", rule.key)
                store.add_event(conn, "error", "alert", f"rule {rule.key} failed: {e}")
                continue
            row = active.get(rule.key)
            for_s = int(overrides.get(rule.key, rule.for_seconds))
            if is_firing is None:
                continue
            if is_firing:
                firing.append(rule.key)
                text = f"{rule.summary}: {message}. Response: {rule.response}"
                if row is None:
                    row = store.alerts.insert_alert(conn, rule.key, rule.severity, text, details,
                                                   now, open_now=for_s <= 0)
                    (opened if row["status"] == "open" else pending).append(row)
                elif row["status"] == "pending":
                    if (now - row["pending_since"]).total_seconds() >= for_s:
                        row = store.alerts.update_alert(conn, row["id"], text, details, status="open", at=now)
                        opened.append(row)
                    else:
                        store.alerts.update_alert(conn, row["id"], text, details)
                        pending.append(row)
                else:
                    store.alerts.update_alert(conn, row["id"], text, details)
            elif row is not None:
                if row["status"] == "pending":
                    store.alerts.delete_alert(conn, row["id"])
                else:
                    row = store.alerts.update_alert(conn, row["id"], row["message"], None, status="resolved",
                                  at=now)
                    resolved.append(row)
        for r in opened:
            store.add_event(conn, "warning" if r["severity"] == "warning" else "error",
                            "alert", f"alert {r['key']} opened: {r['message']}",
                            {"alert_id": r["id"]})
        for r in resolved:
            store.add_event(conn, "info", "alert", f"alert {r['key']} resolved",
                            {"alert_id": r["id"]})
    try:
        rt.redis.set(K_LAST_EVAL, str(time.time()), ex=86400)
    except Exception:  # noqa: BLE001 - Redis down: the watchdog just evaluates again
        pass
    if notify:
        for r in opened:
            notifier.send(rt, "open", r)
        for r in resolved:
            notifier.send(rt, "resolved", r)
    return {"opened": [r["key"] for r in opened], "resolved": [r["key"] for r in resolved],
            "pending": [r["key"] for r in pending], "firing": firing}


def open_now(conn, key: str, severity: str, message: str, details: dict) -> dict | None:
    """An alert opened at once by the code that saw the failure (a failed
    backup), with its event; the row when this opened it, for ``announce``."""
    row = store.alerts.open_alert(conn, key, severity, message, details)
    if row is not None:
        store.add_event(conn, "warning" if severity == "warning" else "error", "alert",
                        f"alert {key} opened: {message}", {"alert_id": row["id"]})
    return row


def resolve_now(conn, key: str) -> dict | None:
    """Resolve ``key``'s active alert; the row when an open one was (``announce``)."""
    row = store.alerts.resolve_alert(conn, key)
    if row is not None:
        store.add_event(conn, "info", "alert", f"alert {key} resolved", {"alert_id": row["id"]})
    return row


def announce(rt, event: str, row: dict | None) -> None:
    """After the commit: the webhook and e-mail of ``open_now``'s or ``resolve_now``'s
    row (None: nothing changed), as ``evaluate`` sends the rules'."""
    if row is not None:
        try:
            notifier.send(rt, event, row)
        except Exception:  # a notifier never fails what it reports on
            log.exception("could not send the %s notification of %s", event, row.get("key"))


def acknowledge(conn, alert_id: int, who: str) -> bool:
    return store.alerts.acknowledge_alert(conn, alert_id, who)


# --------------------------------------------------------------------------- watchdog

def last_evaluation_age(rt) -> float | None:
    """Seconds since the last evaluation anywhere (None: never, or Redis is down)."""
    try:
        v = rt.redis.get(K_LAST_EVAL)
    except Exception:  # noqa: BLE001
        return None
    return None if v is None else max(0.0, time.time() - float(v))


def watchdog(rt, stop: threading.Event, interval: float = 60.0,
             disk_usage=shutil.disk_usage) -> None:
    """Fallback evaluator for a long-running process that is not a worker (the
    web server, the scheduler).

    The ``alerts`` job is enqueued by the scheduler and run by a worker, so a
    dead scheduler or a dead worker would silence exactly the alerts that say
    so. This loop looks four times an interval and evaluates the rules itself
    once none happened for 1.1 intervals (it waited two, and worker_down's
    120 s ``for`` took 5-6 minutes); the every-minute job keeps it idle.
    Evaluations take turns on an advisory lock. Returns when ``stop`` is set."""
    while not stop.wait(interval / 4):
        try:
            age = last_evaluation_age(rt)
            if age is None or age > 1.1 * interval:
                res = evaluate(rt, disk_usage=disk_usage)
                if res.get("opened") or res.get("resolved"):
                    log.info("alerts watchdog: opened %s, resolved %s",
                             res.get("opened"), res.get("resolved"))
        except Exception:  # the watchdog must outlive one bad evaluation
            log.exception("alerts watchdog evaluation failed")


def start_watchdog(rt, interval: float = 60.0, **kw) -> tuple[threading.Thread, threading.Event]:
    """``watchdog`` in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    t = threading.Thread(target=watchdog, args=(rt, stop, interval), kwargs=kw,
                         name="alerts-watchdog", daemon=True)
    t.start()
    return t, stop


class AlertsResult(JobResult, total=False):
    """The ``alerts`` job's result: the rule keys that changed."""
    opened: list[str]
    resolved: list[str]
    pending: list[str]
    firing: list[str]


class DiskCheckResult(JobResult, total=False):
    """The ``disk_check`` job's result."""
    #: "data", "backup" -> path, free_bytes, total_bytes, free_pct (or error)
    disks: dict[str, dict[str, Any]]
    #: the disks under ``alerts.disk_free_min_pct``
    low: list[str]
    alerts_opened: list[str]
    alerts_resolved: list[str]


def evaluate_job(rt, run_id, report, now=None) -> AlertsResult:
    """The ``alerts`` job (every minute): evaluate every alert rule."""
    if isinstance(now, str):
        now = dt.datetime.fromisoformat(now)
    res = evaluate(rt, now=now)
    if res.get("error"):
        return {"status": "failed", "error": res["error"]}
    return {"status": "ok", **res}


def disk_check(rt, run_id, report, disk_usage=shutil.disk_usage) -> DiskCheckResult:
    """The ``disk_check`` job (hourly): free space on the data directory and the
    backup path, recorded in the run's result, then the disk alert rules."""
    cfg = rt.config
    measured = disks(cfg, disk_usage)
    res = evaluate(rt, disk_usage=disk_usage)
    low = [name for name, d in measured.items()
           if d.get("free_pct", 100) < cfg["alerts"]["disk_free_min_pct"]]
    return {"status": "ok", "disks": measured, "low": low,
            "alerts_opened": res.get("opened", []), "alerts_resolved": res.get("resolved", [])}
