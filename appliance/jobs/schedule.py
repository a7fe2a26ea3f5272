"""Cron schedules from ``appliance.yaml``, in UTC, through rq-scheduler.

Every job named in ``schedules`` that is in the registry (``jobs.registry``),
and whose schedule is not ``off``, is registered with rq-scheduler as a cron
job with the id ``appliance-cron-<job>``, function
``appliance.jobs.entry.run_job`` and args ``(job, {})``. When a cron job
falls due, the scheduler enqueues one RQ job per slot, with the id
``appliance-run-<job>-<slot>`` and ``slot`` passed explicitly, so the run claims
exactly the ``(job, slot)`` row it was scheduled for, however late a worker
picks it up. Two schedulers (or an expired lock) may still enqueue a slot
twice; the claim in ``job_runs`` makes the second run a no-op.

Times: a slot is the UTC minute of a cron match, written ``2026-11-28T02:00Z``.
rq-scheduler 0.14 evaluates cron strings in the machine's local time even with
``use_local_timezone=False`` (it feeds ``datetime.now()`` to crontab and then
reads the naive result as local time), so ``UTCScheduler`` computes every
fire time itself with croniter on tz-aware UTC datetimes.

Missed runs: at start-up ``catch_up`` enqueues one run (trigger ``catch_up``)
for each job whose most recent due slot has no claim although the appliance
was installed before it; never one per missed slot.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable

import redis
from croniter import croniter
from rq import Queue
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq_scheduler import Scheduler
from rq_scheduler.utils import to_unix

from appliance import store
from appliance.alerts.rules import start_watchdog
from appliance.jobs import runs
from appliance.jobs.queue import (
    FAILURE_TTL,
    QUEUE_NAME,
    RESULT_TTL,
    RUN_FUNC,
    enqueue,
    first_in_queue,
    retry,
)
from appliance.jobs.registry import JOBS, active_schedules
from appliance.runtime.runtime import K_CONFIG_VERSION, K_HEARTBEAT

log = logging.getLogger("appliance.schedule")

#: RQ 3 job ids allow only letters, digits, "_" and "-"
CRON_PREFIX = "appliance-cron-"
RUN_PREFIX = "appliance-run-"
SLOT_FORMAT = "%Y-%m-%dT%H:%MZ"
SLOT_PATTERN = r"^\d{4}-\d\d-\d\dT\d\d:\d\dZ$"

#: seconds between two looks at the cron registry
TICK_SECONDS = 1.0
#: a registered fire time this far in the past at start-up was missed while down
OVERDUE_GRACE = dt.timedelta(seconds=90)
#: no catch-up run when the next regular run is this close anyway
CATCH_UP_MIN_GAP = dt.timedelta(minutes=5)
#: how often the scheduler marks runs without heartbeat as failed
STALE_EVERY_SECONDS = 60.0
#: how often the registry is compared with the config even without a reload
RECONCILE_EVERY_SECONDS = 60.0

UTC = dt.UTC


# --------------------------------------------------------------------------- time

def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def as_utc(t: dt.datetime | None) -> dt.datetime:
    """``t`` as an aware UTC datetime; naive datetimes are taken as UTC."""
    if t is None:
        return utcnow()
    if t.tzinfo is None:
        return t.replace(tzinfo=UTC)
    return t.astimezone(UTC)


def slot_str(t: dt.datetime) -> str:
    return as_utc(t).strftime(SLOT_FORMAT)


def due_time(expr: str, now: dt.datetime | None = None) -> dt.datetime:
    """The latest cron match <= ``now`` (UTC, whole minute)."""
    base = as_utc(now).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    return croniter(expr, base).get_prev(dt.datetime).astimezone(UTC)


def next_time(expr: str, after: dt.datetime | None = None) -> dt.datetime:
    """The first cron match strictly after ``after`` (UTC)."""
    return croniter(expr, as_utc(after)).get_next(dt.datetime).astimezone(UTC)


def current_slot(cfg, job: str, now: dt.datetime | None = None) -> str:
    """The slot a scheduled run of ``job`` belongs to: the latest time <= ``now``
    matching ``cfg["schedules"][job]``, evaluated in UTC whatever the machine's
    time zone. Raises KeyError for a job without a schedule (or turned off)."""
    return slot_str(due_time(active_schedules(cfg["schedules"])[job], now))


def cron_id(job: str) -> str:
    return CRON_PREFIX + job


def run_job_id(job: str, slot: str) -> str:
    """``appliance-run-backfill-20261128T0200Z`` for slot ``2026-11-28T02:00Z``."""
    return f"{RUN_PREFIX}{job}-{slot.replace('-', '').replace(':', '')}"


# --------------------------------------------------------------------------- rq-scheduler

def rq_redis(url: str) -> redis.Redis:
    """A Redis client for RQ: longer timeouts than the request-path client."""
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10,
                                health_check_interval=30)


class UTCScheduler(Scheduler):
    """rq-scheduler with fire times computed in UTC, an injectable clock, and
    one RQ job per slot (see the module docstring).

    ``config`` is a callable returning the running config (job timeout and
    retries are read at enqueue time, so a reload applies to the next run).
    """

    def __init__(self, *args, clock: Callable[[], dt.datetime] | None = None,
                 config: Callable[[], object] | None = None, **kw):
        kw.setdefault("queue_name", QUEUE_NAME)
        super().__init__(*args, **kw)
        self.clock = clock or utcnow
        self._config = config

    # rq-scheduler computes this with the local-time bug; replace the score.
    def cron(self, cron_string, func, *args, **kwargs):
        kwargs["use_local_timezone"] = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            job = super().cron(cron_string, func, *args, **kwargs)
        self.connection.zadd(self.scheduled_jobs_key,
                             {job.id: to_unix(next_time(cron_string, self.clock()))})
        return job

    def get_jobs_to_queue(self, with_times=False):
        return self.get_jobs(to_unix(self.clock()), with_times=with_times)

    def enqueue_jobs(self):
        """Move every due job to its queue; returns the RQ jobs enqueued."""
        done = []
        for job, when in list(self.get_jobs_to_queue(with_times=True)):
            try:
                done.append(self.enqueue_job(job, when))
            except Exception:  # one bad entry must not stop the others
                log.exception("could not enqueue scheduled job %s", job.id)
        return [j for j in done if j is not None]

    def enqueue_job(self, job, scheduled_time: dt.datetime | None = None):
        cron_string = job.meta.get("cron_string")
        if not cron_string or not job.id.startswith(CRON_PREFIX):
            return super().enqueue_job(job)  # not ours: rq-scheduler's own behaviour
        name = job.id[len(CRON_PREFIX):]
        now = as_utc(self.clock())
        when = as_utc(scheduled_time) if scheduled_time is not None else now
        # The score is the cron match it was registered for; normalising keeps a
        # hand-edited score from inventing a slot that is not in the schedule.
        slot = slot_str(due_time(cron_string, when))
        run = self._enqueue_slot(job, name, slot)
        # Remove this exact entry, then register the next fire time after now:
        # a scheduler that was stalled runs one late slot, not every slot it missed.
        pipe = self.connection.pipeline()
        pipe.zrem(self.scheduled_jobs_key, job.id)
        pipe.zadd(self.scheduled_jobs_key,
                  {job.id: to_unix(next_time(cron_string, max(now, when)))})
        pipe.execute()
        return run

    def _enqueue_slot(self, template, name: str, slot: str):
        cfg = self._config() if self._config else None
        timeout = cfg["jobs"]["timeout_seconds"] if cfg else template.timeout
        q = Queue(template.origin or self.queue_name, connection=self.connection)
        args = list(template.args or [name, {}])
        kwargs = {**(template.kwargs or {}), "slot": slot, "trigger": "scheduled"}
        try:
            run = q.enqueue(template.func_name, *args, **kwargs, job_id=run_job_id(name, slot),
                            unique=True, job_timeout=timeout,
                            retry=retry(cfg) if cfg else None,
                            result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
                            description=f"{name} (scheduled {slot})",
                            at_front=first_in_queue(name))
        except DuplicateJobError:
            log.info("%s slot %s was already enqueued (another scheduler?)", name, slot)
            return None
        log.info("enqueued %s for slot %s (%s)", name, slot, run.id)
        return run

    def registered(self) -> dict[str, dict]:
        """The appliance's cron jobs: ``{job: {"id", "cron", "next"}}``."""
        out = {}
        for raw, score in self.connection.zrange(self.scheduled_jobs_key, 0, -1, withscores=True):
            jid = raw.decode()
            if not jid.startswith(CRON_PREFIX):
                continue
            try:
                job = self.job_class.fetch(jid, connection=self.connection)
            except NoSuchJobError:
                self.cancel(jid)
                continue
            out[jid[len(CRON_PREFIX):]] = {
                "id": jid, "cron": job.meta.get("cron_string"),
                "next": dt.datetime.fromtimestamp(score, UTC)}
        return out

    def unregister(self, jid: str) -> None:
        self.cancel(jid)
        try:
            self.job_class.fetch(jid, connection=self.connection).delete()
        except NoSuchJobError:
            pass

    def wait_for_lock(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.acquire_lock():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def make_scheduler(rt, *, interval: float = TICK_SECONDS, clock=None, name=None,
                   connection: redis.Redis | None = None) -> UTCScheduler:
    return UTCScheduler(connection=connection or rq_redis(rt.endpoints.redis_url),
                        interval=interval, clock=clock, name=name,
                        config=lambda: rt.config)


# --------------------------------------------------------------------------- reconcile

def wanted_schedules(cfg) -> dict[str, str]:
    return {job: expr for job, expr in active_schedules(cfg["schedules"]).items()
            if job in JOBS}


def reconcile(rt, scheduler: UTCScheduler | None = None, *, reset_overdue: bool = False) -> dict:
    """Make rq-scheduler's cron jobs match the running config.

    Registers jobs that are scheduled but missing, re-registers jobs whose cron
    string changed, cancels jobs no longer scheduled (or no longer available).
    With ``reset_overdue`` (start-up), a fire time more than ``OVERDUE_GRACE`` in
    the past is moved to the next one: that run was missed while down, and
    ``catch_up`` decides about it. Returns ``{"added": [...], "changed": {job:
    {"old", "new"}}, "removed": [...], "rescheduled": [...], "registered": {job: cron}}``.
    """
    sch = scheduler or make_scheduler(rt)
    cfg = rt.config
    want = wanted_schedules(cfg)
    have = sch.registered()
    now = as_utc(sch.clock())
    out = {"added": [], "changed": {}, "removed": [], "rescheduled": [], "registered": want}
    for job, expr in want.items():
        cur = have.get(job)
        if cur is not None and cur["cron"] == expr:
            if reset_overdue and cur["next"] < now - OVERDUE_GRACE:
                sch.connection.zadd(sch.scheduled_jobs_key,
                                    {cur["id"]: to_unix(next_time(expr, now))})
                out["rescheduled"].append(job)
            continue
        sch.cron(expr, RUN_FUNC, args=[job, {}], queue_name=QUEUE_NAME, id=cron_id(job),
                 use_local_timezone=False, description=f"{job} (cron {expr} UTC)",
                 timeout=cfg["jobs"]["timeout_seconds"])
        if cur is None:
            out["added"].append(job)
        else:
            out["changed"][job] = {"old": cur["cron"], "new": expr}
    for job, cur in have.items():
        if job not in want:
            sch.unregister(cur["id"])
            out["removed"].append(job)
    if out["added"] or out["changed"] or out["removed"]:
        log.info("schedules reconciled: added %s, changed %s, removed %s",
                 out["added"], out["changed"], out["removed"])
    return out


# --------------------------------------------------------------------------- catch-up

def last_claimed_slots(conn) -> dict[str, str]:
    """Per job, the latest cron slot ever claimed (manual runs not counted)."""
    return store.runs.last_claimed_slots(conn, SLOT_PATTERN)


def catch_up(rt, now: dt.datetime | None = None) -> list[dict]:
    """Enqueue one catch-up run per job whose most recent due slot was missed.

    A slot is missed when nothing claimed it (nor any later slot) and it falls
    after the appliance was installed (its first migration). Nothing happens
    when ``jobs.catch_up`` is false, or when the job's next regular run is less
    than ``CATCH_UP_MIN_GAP`` away (the every-minute ``alerts`` job never gets
    one). Returns ``[{"job", "slot", "run_id"}]``.
    """
    cfg = rt.config
    if not cfg["jobs"]["catch_up"]:
        return []
    now = as_utc(now)
    with rt.conn() as conn:
        last = last_claimed_slots(conn)
        since = store.installed_at(conn)
    out = []
    for job, expr in wanted_schedules(cfg).items():
        due = due_time(expr, now)
        slot = slot_str(due)
        if last.get(job) is not None and last[job] >= slot:
            continue
        if last.get(job) is None and (since is None or due < since):
            continue  # the appliance did not exist yet: nothing was missed
        if next_time(expr, now) - now < CATCH_UP_MIN_GAP:
            log.debug("%s: missed %s, but the next regular run is close", job, slot)
            continue
        try:
            run_id = enqueue(rt, job, {}, trigger="catch_up", slot=slot)
        except RuntimeError:
            continue  # claimed meanwhile (another scheduler started at the same time)
        log.info("%s missed its %s run while the appliance was down: catch-up run %s queued",
                 job, slot, run_id)
        with rt.conn() as conn:
            store.add_event(conn, "warning", job,
                            f"{job} missed its {slot} run while the scheduler was down; "
                            f"one catch-up run queued", {"run_id": run_id, "slot": slot,
                                                         "last_slot": last.get(job)})
        out.append({"job": job, "slot": slot, "run_id": run_id})
    return out


# --------------------------------------------------------------------------- process

def heartbeat_settings(cfg) -> tuple[float, int]:
    """(seconds between heartbeats, heartbeat TTL) for the scheduler."""
    hb_max = cfg["alerts"]["scheduler_heartbeat_max_seconds"]
    every = max(1.0, min(5.0, hb_max / 3.0))
    return every, max(10, int(hb_max * 2))


class SchedulerProcess:
    """The loop of ``appliance scheduler``; ``tick()`` is one pass, for tests."""

    def __init__(self, rt, *, interval: float = TICK_SECONDS, clock=None,
                 ident: str | None = None):
        self.rt = rt
        self.ident = ident or f"{socket.gethostname()}:{os.getpid()}"
        self.sch = make_scheduler(rt, interval=interval, clock=clock,
                                  name=f"appliance-{self.ident}")
        self.stop = threading.Event()
        self.reconciled_version: int | None = None
        self.reconciled_sha: str | None = None
        self._last_reconcile = 0.0
        self._last_stale = 0.0
        self._last_hb = 0.0

    def heartbeat(self, force: bool = False) -> None:
        every, ttl = heartbeat_settings(self.rt.config)
        if force or time.monotonic() - self._last_hb >= every:
            try:
                self.rt.heartbeat("scheduler", ttl=ttl, ident=self.ident)
                self.sch.heartbeat()
                self._last_hb = time.monotonic()
            except redis.RedisError as e:
                log.warning("heartbeat failed: %s", e)

    def start(self, now: dt.datetime | None = None) -> dict:
        """Reconcile (moving overdue fire times) and catch up, holding the lock
        when it can be had within the lock's lifetime."""
        self.sch.register_birth()
        self.heartbeat(force=True)
        got = self.sch.wait_for_lock(self.sch._interval + 10)  # noqa: SLF001
        if not got:
            log.warning("rq-scheduler lock still held by another scheduler; starting anyway")
        try:
            rec = self._reconcile(reset_overdue=True)
            caught = catch_up(self.rt, now)
        finally:
            self.sch.remove_lock()
        return {"reconcile": rec, "catch_up": caught}

    def _reconcile(self, reset_overdue: bool = False) -> dict:
        cfg = self.rt.config
        rec = reconcile(self.rt, self.sch, reset_overdue=reset_overdue)
        self.reconciled_version = self.rt.config_version()
        self.reconciled_sha = cfg.sha256
        self._last_reconcile = time.monotonic()
        return rec

    def tick(self) -> list:
        """Reconcile when the running config changed, enqueue due jobs; both
        under rq-scheduler's lock. Returns the RQ jobs enqueued."""
        cfg = self.rt.config  # swaps in a reloaded config (checked once a second)
        self.heartbeat()
        enqueued = []
        if self.sch.acquire_lock():
            try:
                if (self.rt.config_version() != self.reconciled_version
                        or cfg.sha256 != self.reconciled_sha
                        or time.monotonic() - self._last_reconcile >= RECONCILE_EVERY_SECONDS):
                    self._reconcile()
                enqueued = self.sch.enqueue_jobs()
            finally:
                self.sch.remove_lock()
        if time.monotonic() - self._last_stale >= STALE_EVERY_SECONDS:
            self._last_stale = time.monotonic()
            with self.rt.conn() as conn:
                n = runs.mark_stale(conn, cfg["jobs"]["timeout_seconds"])
            if n:
                log.warning("marked %d run(s) without heartbeat as failed", n)
        return enqueued

    def run(self) -> int:
        res = self.start()
        log.info("scheduler %s started: %d cron job(s) registered in UTC, %d catch-up run(s)",
                 self.ident, len(res["reconcile"]["registered"]), len(res["catch_up"]))
        backoff = 0.0
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                self.tick()
                backoff = 0.0
            except Exception as e:  # noqa: BLE001 - Redis/PostgreSQL hiccups must not end the loop
                backoff = min(30.0, max(1.0, backoff * 2))
                log.error("scheduler tick failed (%s: %s); retrying in %.0f s",
                          e.__class__.__name__, e, backoff)
                self.stop.wait(backoff)
                continue
            self.stop.wait(max(0.0, self.sch._interval - (time.monotonic() - t0)))  # noqa: SLF001
        return 0

    def shutdown(self) -> None:
        try:
            self.sch.remove_lock()
            self.sch.register_death()
            self.rt.redis.delete(K_HEARTBEAT.format(f"scheduler:{self.ident}"))
        except redis.RedisError as e:
            log.warning("could not clean up at exit: %s", e)


def ensure_baseline(rt) -> bool:
    """When no process has published a running config yet (processes started
    one by one, without ``appliance up``), publish this one and sync the symbols
    table, as ``appliance up`` does; the first reload then diffs against it.
    Returns True when it published."""
    if rt.redis.exists(K_CONFIG_VERSION):
        return False
    cfg = rt.config
    rt.publish_config(cfg)
    with rt.conn() as conn:
        store.sync_symbols(conn, cfg.symbols)
        store.record_config_reload(conn, source="startup", actor="scheduler", sha256=cfg.sha256,
                                   ok=True, error=None, diff=None)
    log.info("published %s as the running config (none was published)", cfg.sha256[:12])
    return True


def run_scheduler(rt) -> int:
    """``appliance scheduler``: runs until SIGTERM/SIGINT, then exits 0.
    Does not migrate (``appliance migrate`` / ``appliance up`` do)."""
    rt.open()
    ensure_baseline(rt)
    proc = SchedulerProcess(rt)

    def on_signal(signum, frame):
        log.info("scheduler: %s received, stopping", signal.Signals(signum).name)
        proc.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # evaluates the alert rules itself if the every-minute job stops running
    # (a dead worker would otherwise silence the alert that says so)
    _, watchdog_stop = start_watchdog(rt)
    try:
        return proc.run()
    finally:
        watchdog_stop.set()
        proc.shutdown()
        rt.close()
