"""Health and status, as /health, /api/v1/status, the console and
``appliance status`` report them. One place computes them so that they agree.

Every probe has a short time limit: a hung PostgreSQL or Redis makes the
answer "error" within about a second, never a hung request.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field, fields

import psycopg
from croniter import croniter
from psycopg_pool import PoolTimeout

from appliance import store
from appliance.alerts.disks import backup_drive_missing
from appliance.core import calendar as tcal
from appliance.core.errors import ServiceError
from appliance.jobs.registry import is_off
from appliance.jobs.runs import duration_s, last_by_job
from appliance.runtime.runtime import K_PROCESSES
from appliance.runtime.services import connection_problem
from appliance.store import demo as dstore
from appliance.store import flatfiles as fstore

log = logging.getLogger("appliance.health")

API_VERSION = "1"
DB_TIMEOUT_S = 0.8

_executor = cf.ThreadPoolExecutor(max_workers=16, thread_name_prefix="health")
MAX_STUCK = 2  # probes of one kind past their time limit and still running


class _Gate:
    """Counts probes that outlived their time limit. While MAX_STUCK of them
    still hang, new probes of that kind fail at once instead of piling up
    threads; probes that answer in time never count, so concurrent healthy
    checks are never refused."""

    def __init__(self):
        self.stuck = 0
        self.lock = threading.Lock()
        self.counted: weakref.WeakSet[cf.Future] = weakref.WeakSet()

    def open(self) -> bool:
        with self.lock:
            return self.stuck < MAX_STUCK

    def mark_stuck(self, fut: cf.Future) -> None:
        with self.lock:
            if fut.done() or fut in self.counted:
                return
            self.counted.add(fut)
            self.stuck += 1

        def release(_f):
            with self.lock:
                self.stuck -= 1
        fut.add_done_callback(release)


#: the gate of each probe running in a helper thread (kept here, not on the future)
_gates: weakref.WeakKeyDictionary[cf.Future, _Gate] = weakref.WeakKeyDictionary()
_inflight = _Gate()        # DB probes
_inflight_redis = _Gate()  # Redis probes


def _submit(fn, gate: _Gate) -> cf.Future:
    """Run ``fn`` in a helper thread, or fail at once while earlier probes of
    the same kind are still hanging."""
    if not gate.open():
        fut: cf.Future = cf.Future()
        fut.set_exception(TimeoutError("earlier probes are still hanging"))
        return fut
    fut = _executor.submit(fn)
    _gates[fut] = gate
    return fut


def _wait(fut: cf.Future, timeout: float):
    """``fut.result(timeout)``; a probe that runs past it is counted as stuck."""
    try:
        return fut.result(timeout=max(0.0, timeout))
    except (TimeoutError, cf.TimeoutError):
        gate = _gates.get(fut)
        if gate is not None:
            gate.mark_stuck(fut)
        raise


def _start_db_probe(rt, timeout: float) -> cf.Future:
    def probe():
        try:
            with rt.pool.connection(timeout=timeout) as conn:
                store.settings.statement_timeout_local(conn, timeout)
                out = store.summary(conn)
                out["open_alerts"] = store.open_alerts(conn)
                out["pending_alerts"] = store.alerts_list(conn, status="pending", limit=20)
                out["unknown_symbols"] = [r["symbol"]
                                          for r in store.symbols.unknown_symbols(conn)]
                out["last_runs"] = _last_runs(conn)
                out["latest_backup"] = store.latest_backup(conn)
                out["last_restore_test"] = store.last_restore_test(conn)
                out["last_reload"] = store.last_config_reload(conn)
                out["demo_symbols"] = dstore.demo_symbols(conn)
                out["flat_files"] = fstore.newest(conn)
                return out
        except PoolTimeout as e:  # says only that no connection came: ask why
            raise _why_no_connection(rt, e, timeout) from None
    return _submit(probe, _inflight)


def _why_no_connection(rt, e: Exception, timeout: float) -> Exception:
    """A pool that times out says only that; when it failed to connect (not
    merely busy), one direct attempt says why (a certificate that does not
    verify, a refused password), in the words of ``services.connection_problem``."""
    try:
        failing = rt.pool.get_stats().get("connections_errors", 0) > 0
    except Exception:  # noqa: BLE001
        failing = False
    if not failing:
        return e
    try:
        psycopg.connect(rt.endpoints.database_url, connect_timeout=max(1, int(timeout))).close()
    except psycopg.OperationalError as real:
        return ServiceError(connection_problem(real, rt.current_config()) or _short(real))
    return e


def _db_result(fut: cf.Future, timeout: float) -> dict:
    try:
        snap = _wait(fut, timeout)
        snap["status"] = "ok"
        return snap
    except psycopg.errors.UndefinedTable:
        return {"status": "error", "not_migrated": True,
                "error": "the database answers but has no appliance schema yet: run "
                         "`appliance migrate` (or `appliance up`, which migrates)"}
    except Exception as e:  # noqa: BLE001 - any failure is "database unreachable"
        if isinstance(e, (TimeoutError, cf.TimeoutError)) and not str(e):
            e = TimeoutError("no answer within the probe time limit")
        return {"status": "error", "error": e.message if isinstance(e, ServiceError)
                else _short(e)}


def _last_runs(conn) -> dict:
    return last_by_job(conn)


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{e.__class__.__name__}: {msg}"[:300]


def redis_probe(rt) -> dict:
    try:
        rt.redis.ping()
        age = rt.heartbeat_age("scheduler")
        workers = rt.heartbeat_age("worker")
        return {"status": "ok", "scheduler_heartbeat_age_s": age, "worker_heartbeat_age_s": workers,
                "processes": _processes(rt)}
    except Exception as e:  # noqa: BLE001
        return {"status": "error",
                "error": connection_problem(e, rt.current_config()) or _short(e),
                "scheduler_heartbeat_age_s": None, "worker_heartbeat_age_s": None}


def _processes(rt) -> dict | None:
    """The state ``appliance up`` publishes for its children (None when the
    processes are not supervised by ``up``, e.g. under systemd)."""

    raw = rt.redis.get(K_PROCESSES)
    if not raw:
        return None
    try:
        return {role: {"state": v.get("state"), "pid": v.get("pid"),
                       "restarts": v.get("restarts", 0), "last_exit_code": v.get("last_exit_code"),
                       "last_error": v.get("last_error") or []}
                for role, v in json.loads(raw).items()}
    except (ValueError, AttributeError):
        return None


def process_reasons(procs: dict | None) -> list[str]:
    """One reason per supervised process that is not running."""
    out = []
    for role, p in (procs or {}).items():
        if p.get("state") != "running":
            last = (p.get("last_error") or ["-"])[-1]
            out.append(f"{role} process down: exited with code {p.get('last_exit_code')} "
                       f"({p.get('restarts')} restarts); last error: {last}"[:300])
    return out


def sessions_behind(cfg, latest: str | None, now: dt.datetime) -> int | None:
    if not latest:
        return None
    try:
        return int(tcal.sessions_behind(cfg["calendar"], dt.date.fromisoformat(latest), now))
    except Exception:  # a calendar problem must not break health
        log.exception("sessions_behind failed")
        return None


REDIS_WAIT_S = 0.6


def _redis_result(fut: cf.Future, timeout: float) -> dict:
    try:
        return _wait(fut, timeout)
    except Exception as e:  # noqa: BLE001
        if isinstance(e, (TimeoutError, cf.TimeoutError)) and not str(e):
            e = TimeoutError("no answer within the probe time limit")
        return {"status": "error", "error": _short(e), "scheduler_heartbeat_age_s": None,
                "worker_heartbeat_age_s": None}


def _status(a, snap: dict, rd: dict, running: tuple[bool, bool], rate, behind,
            reasons: list[str]) -> str:
    """healthy or degraded, with a reason added for each thing wrong (the
    database answers); ``running``: the scheduler's and a worker's heartbeat
    are fresh."""
    before = len(reasons)
    if not running[0]:
        reasons.append("scheduler not running" if rd["status"] == "ok"
                       else "redis unreachable: scheduler state unknown"
                       + (f" ({rd['error']})" if rd.get("error") else ""))
    if not running[1] and rd["status"] == "ok":  # no job runs until one is back
        reasons.append("no worker running (no heartbeat in the last "
                       f"{a['scheduler_heartbeat_max_seconds']} s)")
    if snap["total_records"] and rate < a["validation_rate_warn_pct"]:
        reasons.append(f"validation rate {rate}% below {a['validation_rate_warn_pct']}%")
    if behind is not None and behind > a["stale_after_sessions"]:
        reasons.append(f"data is {behind} trading sessions behind")
    if snap["total_records"] == 0:
        reasons.append("no data stored yet")
    if snap.get("unknown_symbols"):
        reasons.append("symbol(s) the vendor does not know: " + ", ".join(snap["unknown_symbols"])
                       + " (correct or remove them in symbols:)")
    reasons.extend(process_reasons(rd.get("processes")))
    reasons.extend(f"{x['severity']} alert: {x['key']}"
                   for sev in ("critical", "warning")
                   for x in snap["open_alerts"] if x["severity"] == sev)
    return "degraded" if len(reasons) > before else "healthy"


def _severity(a, snap: dict, status: str, running: tuple[bool, bool], rate,
              reasons: list[str]) -> str:
    """One severity for every view (/health, the console badge, status): the
    status says whether it works, the severity how urgent what is wrong is
    (no scheduler or no worker: critical, as their alerts)."""
    critical = status == "unhealthy" or not all(running)
    if snap["status"] == "ok":
        if snap["total_records"] and rate is not None and rate < a["validation_rate_critical_pct"]:
            critical = True
            reasons.append(f"validation rate {rate}% below critical "
                           f"{a['validation_rate_critical_pct']}%")
        if any(x["severity"] == "critical" for x in snap["open_alerts"]):
            critical = True
    return "critical" if critical else ("warning" if status != "healthy" else "ok")


@dataclass(frozen=True)
class Health:
    """One snapshot of the appliance's health, read the same way by /health,
    /api/v1/status, the console badge, /metrics, the alert rules and
    ``appliance status``. ``db`` is what PostgreSQL said (``status`` ok or
    error, the counters, open alerts, last runs, backups); ``queue`` what
    Redis said (heartbeat ages, the supervised processes)."""
    status: str
    severity: str
    timestamp: str
    scheduler_running: bool
    worker_alive: bool
    latest_data: str | None
    latest_data_sessions_behind: int | None
    validation_rate_pct: float | None
    database: str
    redis: str
    config_last_reload_successful: bool
    config_sha256: str
    #: restart-only keys a reload changed: ``{"keys", "since"}``, or None
    restart_required: dict | None
    provider: str
    processes: dict | None
    replica: dict
    #: per dataset (1d, 1m): the newest flat file stored; None when flat files are off
    flat_files: dict | None
    reasons: list
    db: dict = field(repr=False)
    queue: dict = field(repr=False)

    def body(self) -> dict:
        """/health's fields, in the documented order."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("db", "queue")}


def compute(rt, now: dt.datetime | None = None) -> Health:
    """The full picture: health fields plus the snapshot used by status/console.

    PostgreSQL and Redis are probed at the same time, each with its own time
    limit, so that the whole answer takes at most about a second even when
    both hang."""
    now = now or dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    db_fut = _start_db_probe(rt, DB_TIMEOUT_S)
    rd_fut = _submit(lambda: redis_probe(rt), _inflight_redis)
    rep_fut = _executor.submit(rt.replica_state)  # cached; probes at most every few seconds
    cfg = rt.config  # may wait up to the Redis client timeout (config version check)
    snap = _db_result(db_fut, DB_TIMEOUT_S + 0.1 - (time.monotonic() - t0))
    rd = _redis_result(rd_fut, REDIS_WAIT_S - (time.monotonic() - t0))
    hb_max = cfg["alerts"]["scheduler_heartbeat_max_seconds"]
    sched_age = rd.get("scheduler_heartbeat_age_s")
    scheduler_running = rd["status"] == "ok" and sched_age is not None and sched_age <= hb_max
    worker_age = rd.get("worker_heartbeat_age_s")
    worker_alive = rd["status"] == "ok" and worker_age is not None and worker_age <= hb_max
    reasons: list[str] = []
    replica = _replica(rep_fut, cfg, REPLICA_WAIT_S - (time.monotonic() - t0))
    if snap["status"] != "ok":
        status = "unhealthy"
        reasons.append(("database not migrated: " if snap.get("not_migrated") else
                        "database unreachable: ") + snap.get("error", ""))
        latest, rate, behind = None, None, None
    else:
        latest, rate = snap["latest_data"], snap["validation_rate_pct"]
        behind = sessions_behind(cfg, latest, now)
        status = _status(cfg["alerts"], snap, rd, (scheduler_running, worker_alive), rate,
                         behind, reasons)
        demo = demo_reason(cfg["provider"]["name"], snap.get("demo_symbols"),
                           {s.symbol for s in cfg.symbols})
        if demo:
            reasons.append(demo)
            status = "degraded" if status == "healthy" else status
    if replica["state"] in ("lagging", "down", "refused") and status == "healthy":
        status = "degraded"
    if replica["state"] == "down":
        reasons.append("replica down: reads are served by the primary")
    elif replica["state"] == "refused":
        reasons.append(f"replica refused: {replica.get('reason')}: reads are served by the "
                       f"primary")
    elif replica["state"] == "lagging":
        reasons.append(f"replica lags {replica['lag_seconds']} s (allowed: "
                       f"{cfg['database']['max_replica_lag_seconds']} s): reads are served by "
                       f"the primary")
    restart = rt.restart_required()
    if restart:
        reasons.append(f"restart required since {restart['since']}: "
                       f"{', '.join(restart['keys'])} keep their old value until then")
    severity = _severity(cfg["alerts"], snap, status, (scheduler_running, worker_alive), rate,
                         reasons)
    last_reload = snap.get("last_reload") if snap["status"] == "ok" else None
    return Health(
        status=status, severity=severity,
        timestamp=now.isoformat().replace("+00:00", "Z"),
        scheduler_running=scheduler_running, worker_alive=worker_alive,
        latest_data=latest, latest_data_sessions_behind=behind, validation_rate_pct=rate,
        database="ok" if snap["status"] == "ok" else "error", redis=rd["status"],
        config_last_reload_successful=(last_reload or {}).get("ok", True),
        config_sha256=cfg.sha256, restart_required=restart, provider=cfg["provider"]["name"],
        processes=rd.get("processes"), replica=replica,
        flat_files=flat_files_brief(cfg, snap), reasons=reasons, db=snap, queue=rd)


def flat_files_brief(cfg, snap: dict) -> dict | None:
    """{dataset: newest day, when, files, bars} of the flat files stored;
    None when they are off (or the database did not answer)."""
    if not cfg.get("provider.polygon.flat_files.enabled") or snap.get("status") != "ok":
        return None
    return {tf: {"newest_day": r["day"].isoformat(),
                 "ingested_at": r["ingested_at"].isoformat().replace("+00:00", "Z"),
                 "files": int(r["files"]), "bars": int(r["bars"] or 0)}
            for tf, r in (snap.get("flat_files") or {}).items()}


def demo_reason(provider: str, demo_symbols: list[str] | None,
                configured: set[str] | frozenset[str] = frozenset()) -> str | None:
    """``demo_data_present``: a real vendor is configured but symbols still
    hold the demo provider's synthetic bars (``demodata``). The backfill
    replaces those of configured symbols only: the others' stay until
    ``appliance demo-data --delete``."""
    if not demo_symbols or not dstore.replacing(provider):
        return None
    names = ", ".join(demo_symbols[:5]) + (", …" if len(demo_symbols) > 5 else "")
    kept = [s for s in demo_symbols if s not in configured]
    if not kept:
        fix = (f"the next backfill replaces them with {provider}'s history, or "
               f"`appliance demo-data --delete` deletes them")
    else:
        fix = (f"{', '.join(kept[:5])}{', …' if len(kept) > 5 else ''} "
               f"{'is' if len(kept) == 1 else 'are'} not in symbols: and no backfill replaces "
               f"{'it' if len(kept) == 1 else 'them'}: `appliance demo-data --delete` deletes "
               f"{'it' if len(kept) == 1 else 'them'}"
               + (f"; the next backfill replaces the others with {provider}'s history"
                  if len(kept) < len(demo_symbols) else ""))
    return (f"demo_data_present: {len(demo_symbols)} symbol(s) still hold synthetic demo bars "
            f"({names}); {fix}")


# /health is open to anyone: it probes at most once per HEALTH_INTERVAL_S in
# each web worker, one probe at a time, and serves that result to every caller
# in between (callers that arrive during the probe wait for it). A flood then
# costs no probes, so it cannot make /health report unhealthy either.
HEALTH_INTERVAL_S = 1.0


class _Latest:
    def __init__(self):
        self.lock = threading.Lock()
        self.health: Health | None = None
        self.at = 0.0
        self.probe: cf.Future | None = None


def latest(rt, interval: float = HEALTH_INTERVAL_S) -> Health:
    """``compute(rt)``, computed at most once per ``interval`` (see above)."""
    cache = rt.__dict__.setdefault("_health_latest", _Latest())
    with cache.lock:
        if cache.health is not None and time.monotonic() - cache.at < interval:
            return cache.health
        mine = cache.probe is None
        if mine:
            cache.probe = cf.Future()
        probe = cache.probe
    if mine:
        try:
            h = compute(rt)
        except BaseException as e:
            with cache.lock:
                cache.probe = None
            probe.set_exception(e)
            raise
        with cache.lock:
            cache.health, cache.at, cache.probe = h, time.monotonic(), None
        probe.set_result(h)
    return probe.result()


REPLICA_WAIT_S = 1.2


def _replica(fut: cf.Future, cfg, timeout: float) -> dict:
    """/health's ``replica`` object (``off`` when no read_url is configured)."""
    try:
        return fut.result(timeout=max(0.05, timeout)).body()
    except Exception:  # noqa: BLE001 - a hung or broken probe is "down"
        return {"configured": bool(cfg["database"].get("read_url")), "state": "down",
                "lag_seconds": None, "serving_reads": False}


def health_body(h: Health) -> dict:
    return h.body()


def status_body(rt, h: dict) -> dict:
    """/api/v1/status: the original system's field names, kept for scripts."""
    snap, rd, cfg = h.db, h.queue, rt.config
    ok = snap["status"] == "ok"
    database = {"status": "ok" if ok else "error"}
    if ok:
        database.update({k: snap[k] for k in (
            "symbols_available", "total_records", "validated_records", "validation_rate_pct",
            "latest_data", "gaps_flagged", "gaps_flagged_pct", "missing_sessions", "size_bytes",
            "stats_updated_at")})
        database["latest_data_sessions_behind"] = h.latest_data_sessions_behind
    else:
        database["error"] = snap.get("error")
    last_runs = snap.get("last_runs", {}) if ok else {}
    bf = last_runs.get("backfill", {}).get("last")
    scheduler = job_overview(rt, last_runs)
    backups = {}
    if ok:
        lb = snap.get("latest_backup")
        backups = {"latest": lb,
                   "age_hours": (round((dt.datetime.now(dt.UTC) - lb["created_at"])
                                       .total_seconds() / 3600, 2) if lb else None)}
        backups["last_restore_test"] = snap.get("last_restore_test")
    why = backup_drive_missing(cfg)  # its archives are listed, not readable
    backups["drive_error"] = f"the backup drive is not mounted ({why})" if why else None
    return {
        "api_version": API_VERSION,
        "status": h.status,
        "severity": h.severity,
        "timestamp": h.timestamp,
        "reasons": h.reasons,
        "provider": cfg["provider"]["name"],
        "database": database,
        "data_quality": {
            "records_with_gaps_flagged": snap.get("gaps_flagged") if ok else None,
            "validation_rate_pct": snap.get("validation_rate_pct") if ok else None,
            "scheduler_status": "running" if h.scheduler_running else "stopped",
            "last_backfill": _run_brief(bf),
        },
        "scheduler": {"running": h.scheduler_running,
                      "heartbeat_age_s": rd.get("scheduler_heartbeat_age_s"),
                      "worker_alive": h.worker_alive, "jobs": scheduler},
        "backups": backups,
        "alerts": snap.get("open_alerts", []) if ok else [],
        "flat_files": h.flat_files,
        "config": {"sha256": cfg.sha256, "path": str(cfg.path),
                   "version": rt.config_version(),
                   "last_reload": snap.get("last_reload") if ok else None,
                   "last_reload_successful": h.config_last_reload_successful,
                   "restart_required": h.restart_required},
    }


def _run_brief(r: dict | None) -> dict | None:
    if not r:
        return None
    res = r.get("result") or {}
    return {"id": r["id"], "status": r["status"], "trigger": r.get("trigger"),
            "started_at": r.get("started_at"), "finished_at": r.get("finished_at"),
            "duration_s": duration_s(r), "rows": (res.get("inserted", 0) or 0) + (res.get("updated", 0) or 0)
            if res else None, "error": r.get("error")}


def job_overview(rt, last_runs: dict) -> dict:
    """Per scheduled job: next run (UTC), last run, last success, last failure."""
    now = dt.datetime.now(dt.UTC)
    out = {}
    for job, expr in rt.config["schedules"].items():
        try:
            nxt = None if is_off(expr) else croniter(expr, now).get_next(dt.datetime)
        except Exception:  # noqa: BLE001
            nxt = None
        lr = last_runs.get(job, {})
        out[job] = {"schedule": expr, "next_run": nxt,
                    "last_run": _run_brief(lr.get("last")),
                    "last_success": _run_brief(lr.get("last_success")),
                    "last_failure": _run_brief(lr.get("last_failure"))}
    return out


def status_number(status: str) -> int:
    """The status as ``appliance_health_status`` counts it: 0 healthy, 1
    degraded, 2 unhealthy (``appliance status`` exits by severity instead:
    ``ops.statusview.exit_code``)."""
    return {"healthy": 0, "degraded": 1}.get(status, 2)
