"""Cron schedules in UTC through rq-scheduler, slot claims, catch-up, liveness:
real Redis and PostgreSQL, scheduler and worker as real processes where the
behaviour is about processes."""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import zoneinfo

import pytest
from rq import Queue
from rq.job import Job

from appliance.config.loader import DEFAULTS, load_config
from appliance.jobs import runs, schedule
from appliance.runtime.runtime import Runtime
from tests.support import wait_until

UTC = dt.UTC
#: every job on 1 January only, so that nothing but the job under test falls due
QUIET = {job: "0 0 1 1 *" for job in DEFAULTS["schedules"]}
FOREIGN_TZ = "America/Los_Angeles"


# --------------------------------------------------------------------------- helpers

class Clock:
    def __init__(self, t: dt.datetime):
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t


def cli(path, *args, tz: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "APPLIANCE_LOG_LEVEL": "INFO"}
    if tz:
        env["TZ"] = tz
    return subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(path), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_cli(path, *args, tz: str | None = None, timeout: float = 60) -> tuple[int, str]:
    p = cli(path, *args, tz=tz)
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def stop(p: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 15) -> tuple[int, str]:
    if p.poll() is None:
        p.send_signal(sig)
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


@pytest.fixture
def foreign_tz():
    """This process's local time zone is not UTC for the duration of the test."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = FOREIGN_TZ
    time.tzset()
    yield FOREIGN_TZ
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def _rt(path, **kw) -> Runtime:
    rt = Runtime.from_path(path, **kw)
    rt.open()
    return rt


def _job_runs(rt, job="backfill") -> list[dict]:
    with rt.conn() as conn:
        return [r for r in runs.recent(conn, job=job, limit=100)]


def _insert_run(rt, job, slot, status="ok", trigger="scheduled"):
    with rt.conn() as conn:
        conn.execute("""INSERT INTO job_runs (job, slot, trigger, status, finished_at)
                        VALUES (%s, %s, %s, %s, now())""", (job, slot, trigger, status))


# --------------------------------------------------------------------------- slots

def test_current_slot_is_the_latest_utc_match_whatever_the_machine_time_zone(foreign_tz,
                                                                             config_factory):
    assert time.localtime().tm_gmtoff != 0
    cfg = load_config(config_factory(schedules={"backfill": "0 2 * * *", "backup": "0 3 * * 0",
                                                "alerts": "* * * * *"}))
    at = lambda *a: dt.datetime(*a, tzinfo=UTC)  # noqa: E731
    assert schedule.current_slot(cfg, "backfill", at(2026, 11, 28, 1, 59, 59)) == \
        "2026-11-27T02:00Z"
    assert schedule.current_slot(cfg, "backfill", at(2026, 11, 28, 2, 0)) == "2026-11-28T02:00Z"
    assert schedule.current_slot(cfg, "backfill", at(2026, 11, 28, 23, 59)) == "2026-11-28T02:00Z"
    # the same instant written in another zone, and a naive time (taken as UTC)
    la = dt.datetime(2026, 11, 27, 18, 30, tzinfo=zoneinfo.ZoneInfo(FOREIGN_TZ))
    assert schedule.current_slot(cfg, "backfill", la) == "2026-11-28T02:00Z"
    assert schedule.current_slot(cfg, "backfill", dt.datetime(2026, 11, 28, 2, 30)) == \
        "2026-11-28T02:00Z"
    # 2026-11-28 is a Saturday: the weekly Sunday 03:00 slot is the previous Sunday's
    assert schedule.current_slot(cfg, "backup", at(2026, 11, 28, 12, 0)) == "2026-11-22T03:00Z"
    assert schedule.current_slot(cfg, "backup", at(2026, 11, 29, 3, 0, 30)) == "2026-11-29T03:00Z"
    assert schedule.current_slot(cfg, "alerts", at(2026, 11, 28, 12, 34, 56)) == "2026-11-28T12:34Z"
    # next fire times are UTC too (rq-scheduler's own helper gets this wrong off UTC)
    assert schedule.next_time("0 2 * * *", at(2026, 11, 28, 2, 0)) == at(2026, 11, 29, 2, 0)


def test_a_cron_job_fires_at_its_utc_time_on_a_machine_in_another_time_zone(
        foreign_tz, config_factory, procs):
    path = config_factory(schedules={**QUIET, "backfill": "0 2 * * *"}, symbols=["AAPL"],
                          history={"start": "2026-11-02"})
    rt = _rt(path)
    clock = Clock(dt.datetime(2026, 11, 28, 1, 59, 30, tzinfo=UTC))
    proc = schedule.SchedulerProcess(rt, clock=clock)
    res = proc.start(now=clock.t)
    assert "backfill" in res["reconcile"]["added"]
    assert res["catch_up"] == []
    reg = proc.sch.registered()["backfill"]
    assert reg["cron"] == "0 2 * * *"
    assert reg["next"] == dt.datetime(2026, 11, 28, 2, 0, tzinfo=UTC)  # 02:00 UTC, not 02:00 local

    clock.t = dt.datetime(2026, 11, 28, 1, 59, 59, tzinfo=UTC)
    assert proc.tick() == []
    clock.t = dt.datetime(2026, 11, 28, 2, 0, 1, tzinfo=UTC)
    fired = proc.tick()
    assert [j.id for j in fired] == ["appliance-run-backfill-20261128T0200Z"]
    assert fired[0].kwargs["slot"] == "2026-11-28T02:00Z"
    assert fired[0].args[0] == "backfill"
    assert proc.sch.registered()["backfill"]["next"] == dt.datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
    assert proc.tick() == []  # nothing else due

    code, out = run_cli(path, "worker", "--burst", tz=FOREIGN_TZ)
    assert code == 0, out
    rows = _job_runs(rt)
    assert [(r["slot"], r["trigger"], r["status"]) for r in rows] == \
        [("2026-11-28T02:00Z", "scheduled", "ok")], rows
    assert rows[0]["result"]["inserted"] > 0
    proc.shutdown()
    rt.close()


def test_a_changed_schedule_is_re_registered_on_the_next_tick_after_a_reload(config_factory):
    from appliance.jobs import reload as reload_mod
    path = config_factory(schedules={**QUIET, "backfill": "0 2 * * *"})
    sched_rt = _rt(path, check_interval=0)
    admin_rt = _rt(path)
    clock = Clock(dt.datetime(2026, 11, 28, 12, 0, tzinfo=UTC))
    proc = schedule.SchedulerProcess(sched_rt, clock=clock)
    proc.start(now=clock.t)
    assert proc.sch.registered()["backfill"]["next"] == dt.datetime(2026, 11, 29, 2, 0, tzinfo=UTC)

    config_factory(schedules={**QUIET, "backfill": "30 13 * * 1-5"})
    res = reload_mod.reload_config(admin_rt, source="cli", actor="test")
    assert res["ok"], res
    assert res["diff"]["schedules_changed"] == {"backfill": {"old": "0 2 * * *",
                                                             "new": "30 13 * * 1-5"}}
    proc.tick()
    reg = proc.sch.registered()["backfill"]
    assert reg["cron"] == "30 13 * * 1-5"
    assert reg["next"] == dt.datetime(2026, 11, 30, 13, 30, tzinfo=UTC)  # Monday
    for rt in (sched_rt, admin_rt):
        rt.close()


def test_the_alert_rules_and_the_disk_check_go_ahead_of_the_work_already_queued(config_factory):
    """A long backfill's chunk jobs fill the queue; the every-minute alert
    rules and the hourly disk check must not wait behind all of them."""
    from appliance.jobs import queue as jq
    path = config_factory(schedules={**QUIET, "alerts": "* * * * *", "disk_check": "0 * * * *",
                                     "backfill": "0 2 * * *"})
    rt = _rt(path)
    q = Queue("appliance", connection=rt.redis)
    waiting = [q.enqueue("appliance.jobs.entry.run_chunk", 1, i, description=f"chunk {i}").id
               for i in range(25)]
    clock = Clock(dt.datetime(2026, 11, 28, 1, 59, 30, tzinfo=UTC))
    proc = schedule.SchedulerProcess(rt, clock=clock)
    proc.start(now=clock.t)
    clock.t = dt.datetime(2026, 11, 28, 2, 0, 1, tzinfo=UTC)
    fired = {j.args[0]: j.id for j in proc.tick()}
    assert set(fired) == {"alerts", "disk_check", "backfill"}, fired
    ids = q.job_ids
    assert set(ids[:2]) == {fired["alerts"], fired["disk_check"]}, ids[:3]
    assert ids[2:27] == waiting and ids[27] == fired["backfill"]
    # and so does a run asked for by hand, where any other job queues last
    first = jq.enqueue(rt, "alerts")
    last = jq.enqueue(rt, "retention")
    with rt.conn() as conn:
        first_rq, last_rq = (runs.get(conn, r)["rq_job_id"] for r in (first, last))
    assert q.job_ids[0] == first_rq and q.job_ids[-1] == last_rq
    proc.shutdown()
    rt.close()


def test_an_unscheduled_or_unknown_job_is_not_registered_and_a_removed_one_is_cancelled(
        config_factory, monkeypatch):
    from appliance.jobs import registry
    path = config_factory(schedules={**QUIET, "backfill": "0 2 * * *"})
    rt = _rt(path)
    sch = schedule.make_scheduler(rt)
    res = schedule.reconcile(rt, sch)
    assert set(res["added"]) == set(registry.JOBS)
    assert set(sch.registered()) == set(registry.JOBS)
    # a job that disappears (dropped from the registry by an upgrade) is cancelled
    monkeypatch.setattr(schedule, "JOBS", {})
    res = schedule.reconcile(rt, sch)
    assert "backfill" in res["removed"]
    assert sch.registered() == {}
    assert not rt.redis.exists("rq:job:appliance-cron-backfill")
    rt.close()


def test_a_schedule_turned_off_is_cancelled_never_caught_up_and_shown_as_off(config_factory):
    """``spot_check: off`` (YAML reads it as false) on a host that cannot reach
    a second source: by reload its cron job goes, no catch-up is queued for it,
    the failure rules do not count it as a rare job, and the overview says off."""
    from appliance.alerts import health, rules
    from appliance.jobs import reload as reload_mod
    path = config_factory(schedules={**QUIET, "spot_check": "0 5 2 * *",
                                     "maintenance": "0 4 * * 0"})
    admin_rt = _rt(path)
    sched_rt = _rt(path, check_interval=0)
    clock = Clock(dt.datetime(2026, 11, 28, 12, 0, tzinfo=UTC))
    proc = schedule.SchedulerProcess(sched_rt, clock=clock)
    proc.start(now=clock.t)
    assert "spot_check" in proc.sch.registered()
    assert "spot_check" in rules.rare_jobs(rules.active_schedules(admin_rt.config["schedules"]))

    text = path.read_text()
    assert "spot_check: 0 5 2 * *" in text
    path.write_text(text.replace("spot_check: 0 5 2 * *", "spot_check: off"))
    res = reload_mod.reload_config(admin_rt, source="cli", actor="test")
    assert res["ok"], res
    assert admin_rt.config["schedules"]["spot_check"] == "off"  # YAML's false, said as off
    proc.tick()
    assert "spot_check" not in proc.sch.registered()
    assert not admin_rt.redis.exists("rq:job:appliance-cron-spot_check")
    assert proc.sch.registered()["maintenance"]["cron"] == "0 4 * * 0"

    _insert_run(admin_rt, "spot_check", "2026-10-02T05:00Z")  # months ago
    later = dt.datetime(2026, 12, 20, 9, 0, tzinfo=UTC)
    assert [c for c in schedule.catch_up(admin_rt, later) if c["job"] == "spot_check"] == []
    assert "spot_check" not in rules.rare_jobs(
        rules.active_schedules(admin_rt.config["schedules"]))
    with pytest.raises(KeyError):  # a run queued before the reload runs as one by hand
        schedule.current_slot(admin_rt.config, "spot_check")
    overview = health.job_overview(admin_rt, {})
    assert (overview["spot_check"]["schedule"], overview["spot_check"]["next_run"]) == ("off", None)
    assert overview["maintenance"]["schedule"] == "0 4 * * 0"
    proc.shutdown()
    for rt in (sched_rt, admin_rt):
        rt.close()


# --------------------------------------------------------------------------- claims

def test_two_schedulers_never_run_the_same_slot_twice(config_factory):
    path = config_factory(schedules={**QUIET, "backfill": "0 2 * * *"}, symbols=["AAPL"],
                          history={"start": "2026-11-02"})
    rt = _rt(path)
    clock = Clock(dt.datetime(2026, 11, 28, 1, 59, tzinfo=UTC))
    a = schedule.SchedulerProcess(rt, clock=clock, ident="a")
    b = schedule.SchedulerProcess(rt, clock=clock, ident="b")
    a.start(now=clock.t)
    assert b.start(now=clock.t)["reconcile"]["added"] == []
    clock.t = dt.datetime(2026, 11, 28, 2, 0, 2, tzinfo=UTC)
    # both read the due entry before either moved it on (an expired lock)
    seen_by_b = list(b.sch.get_jobs_to_queue(with_times=True))
    assert [j.id for j, _ in seen_by_b] == ["appliance-cron-backfill"]
    assert len(a.sch.enqueue_jobs()) == 1
    assert [b.sch.enqueue_job(j, when) for j, when in seen_by_b] == [None]  # same RQ job id
    # and should a second RQ job for the slot still exist, its claim fails
    q = Queue("appliance", connection=a.sch.connection)
    q.enqueue(schedule.RUN_FUNC, "backfill", {}, slot="2026-11-28T02:00Z", trigger="scheduled",
              job_id="duplicate-of-the-slot")
    assert q.count == 2

    code, out = run_cli(path, "worker", "--burst")
    assert code == 0, out
    rows = _job_runs(rt)
    assert [(r["slot"], r["status"]) for r in rows] == [("2026-11-28T02:00Z", "ok")]
    results = [Job.fetch(i, connection=a.sch.connection).return_value()["status"]
               for i in ("appliance-run-backfill-20261128T0200Z", "duplicate-of-the-slot")]
    assert sorted(results) == ["ok", "skipped"]
    with rt.conn() as conn:
        n = conn.execute("SELECT count(*) FROM events WHERE kind = 'backfill'").fetchone()[0]
    assert n == 1
    rt.close()


# --------------------------------------------------------------------------- catch-up

def test_a_missed_slot_is_caught_up_once_not_once_per_missed_slot(config_factory):
    path = config_factory(schedules={**QUIET, "backfill": "0 2 * * *"})
    rt = _rt(path)
    _insert_run(rt, "backfill", "2026-11-23T02:00Z")  # then down for five days
    now = dt.datetime(2026, 11, 28, 9, 15, tzinfo=UTC)
    done = [c for c in schedule.catch_up(rt, now) if c["job"] == "backfill"]
    assert [(c["slot"]) for c in done] == ["2026-11-28T02:00Z"]
    with rt.conn() as conn:
        row = runs.get(conn, done[0]["run_id"])
        ev = conn.execute("SELECT message FROM events WHERE kind = 'backfill'").fetchall()
    assert (row["trigger"], row["status"], row["slot"]) == ("catch_up", "queued",
                                                             "2026-11-28T02:00Z")
    assert len(ev) == 1 and "missed" in ev[0][0]
    assert Queue("appliance", connection=rt.redis).count == 1
    # a second start-up (or a second scheduler) finds the slot claimed
    assert [c for c in schedule.catch_up(rt, now) if c["job"] == "backfill"] == []
    assert [c for c in schedule.catch_up(rt, now + dt.timedelta(hours=5))
            if c["job"] == "backfill"] == []
    assert len([r for r in _job_runs(rt) if r["trigger"] == "catch_up"]) == 1
    rt.close()


def test_catch_up_respects_the_switch_and_skips_every_minute_jobs(config_factory):
    path = config_factory(schedules={**QUIET, "backfill": "* * * * *"})
    rt = _rt(path)
    _insert_run(rt, "backfill", "2026-11-23T02:00Z")
    now = dt.datetime(2026, 11, 28, 9, 15, 30, tzinfo=UTC)
    assert [c for c in schedule.catch_up(rt, now) if c["job"] == "backfill"] == []
    config_factory(schedules={**QUIET, "backfill": "0 2 * * *"}, jobs={"catch_up": False})
    rt2 = _rt(path)
    assert schedule.catch_up(rt2, now) == []
    assert [r["slot"] for r in _job_runs(rt2)] == ["2026-11-23T02:00Z"]
    rt.close()
    rt2.close()


def test_nothing_is_caught_up_for_slots_before_the_appliance_existed(config_factory):
    path = config_factory(schedules={**QUIET, "backfill": "0 2 * * *"})
    rt = _rt(path)
    # no run ever, and the last due slot is before the first migration
    assert schedule.catch_up(rt, dt.datetime(2020, 6, 1, 12, 0, tzinfo=UTC)) == []
    rt.close()


# --------------------------------------------------------------------------- processes

def _cron_an_hour_ago() -> tuple[str, str]:
    t = schedule.utcnow() - dt.timedelta(hours=1)
    return f"{t.minute} {t.hour} * * *", schedule.slot_str(t)


def test_two_scheduler_processes_catch_up_a_missed_slot_exactly_once(config_factory, procs):
    expr, missed = _cron_an_hour_ago()
    path = config_factory(schedules={**QUIET, "backfill": expr})
    rt = _rt(path)
    _insert_run(rt, "backfill", "2020-01-01T00:00Z")
    procs += [cli(path, "scheduler"), cli(path, "scheduler")]
    wait_until(lambda: len(list(rt.redis.scan_iter("appliance:heartbeat:scheduler:*"))) == 2,
               30, "two scheduler heartbeats")
    wait_until(lambda: [r for r in _job_runs(rt) if r["trigger"] == "catch_up"], 15,
               "the catch-up run")
    # a heartbeat newer than this comes from a scheduler's loop: it has passed
    # start-up (and its catch-up) and ticked
    seen = time.time()

    def both_ticked() -> bool:
        keys = list(rt.redis.scan_iter("appliance:heartbeat:scheduler:*"))
        beats = [float(v) for v in rt.redis.mget(keys) if v is not None] if keys else []
        return len(beats) == 2 and min(beats) > seen
    wait_until(both_ticked, 30, "both schedulers past start-up and ticking")
    assert all(p.poll() is None for p in procs)
    caught = [(r["slot"], r["trigger"]) for r in _job_runs(rt) if r["slot"] != "2020-01-01T00:00Z"]
    assert caught == [(missed, "catch_up")]
    assert Queue("appliance", connection=rt.redis).count == 1
    for p in procs:
        code, out = stop(p)
        assert code == 0, out
        assert "stopping" in out
    assert list(rt.redis.scan_iter("appliance:heartbeat:scheduler:*")) == []
    rt.close()


@pytest.fixture
def config_path(config_factory):
    """For the client fixture: a 5 s scheduler heartbeat limit."""
    return config_factory(schedules={**QUIET, "backfill": "0 2 * * *"},
                          alerts={"scheduler_heartbeat_max_seconds": 5})


def test_scheduler_running_follows_the_scheduler_process_heartbeat(client, runtime, procs):
    def running():
        return client.get("/health").get_json()["scheduler_running"]

    assert running() is False
    p = cli(runtime.config.path, "scheduler", tz=FOREIGN_TZ)
    procs.append(p)
    wait_until(running, 30, "scheduler_running true")
    # registered in UTC although the process runs in another time zone
    score = wait_until(lambda: runtime.redis.zscore("rq:scheduler:scheduled_jobs",
                                                    "appliance-cron-backfill"), 10, "registration")
    nxt = dt.datetime.fromtimestamp(score, UTC)
    assert (nxt.hour, nxt.minute) == (2, 0)
    p.kill()  # SIGKILL: no chance to clean up, only the heartbeat ages
    p.communicate(timeout=10)
    wait_until(lambda: running() is False, 15, "scheduler_running false", step=0.5)
    body = client.get("/health").get_json()
    assert body["scheduler_running"] is False
    assert runtime.heartbeat_age("scheduler") is None or runtime.heartbeat_age("scheduler") > 5
