"""``appliance worker`` as a real process: failures are recorded and survived,
retries are bounded by the config, SIGTERM stops it cleanly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime

from rq import Queue
from rq.job import Job

from appliance.config.loader import DEFAULTS
from appliance.jobs import queue as queue_mod
from appliance.jobs import runs
from appliance.runtime.runtime import Runtime
from tests.support import wait_until

QUIET = {job: "0 0 1 1 *" for job in DEFAULTS["schedules"]}


def cli(path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(path), *args],
                            env={**os.environ, "APPLIANCE_LOG_LEVEL": "INFO"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rt(path) -> Runtime:
    rt = Runtime.from_path(path)
    rt.open()
    return rt


def _run(rt, run_id):
    with rt.conn() as conn:
        return runs.get(conn, run_id)


#: the sessions the worker's backfills fetch: a fixed range, whatever today is
HISTORY = {"history": {"start": "2026-11-02"}}
FIXED = {"end": "2026-11-13"}


def test_a_failing_job_is_recorded_failed_and_the_worker_keeps_running(config_factory, procs):
    path = config_factory(schedules=QUIET, symbols=["AAPL"], **HISTORY)
    rt = _rt(path)
    bad = queue_mod.enqueue(rt, "backfill", {"no_such_parameter": 1})
    good = queue_mod.enqueue(rt, "backfill", dict(FIXED))
    w = cli(path, "worker", "--name", "w1")
    procs.append(w)
    wait_until(lambda: _run(rt, good)["status"] in ("ok", "partial", "failed"), 30,
               "the second job to finish")
    failed, ok = _run(rt, bad), _run(rt, good)
    assert failed["status"] == "failed"
    assert "no_such_parameter" in failed["error"]
    assert failed["finished_at"] is not None
    assert ok["status"] == "ok", ok
    with rt.conn() as conn:
        ev = conn.execute("""SELECT level, message, details->>'run_id' FROM events
                             WHERE kind = 'backfill' ORDER BY id""").fetchall()
    assert ("error", str(bad)) in [(lvl, rid) for lvl, _, rid in ev]
    assert any("failed" in msg and rid == str(bad) for _, msg, rid in ev)
    # RQ saw the failure too (failed registry), and the worker lives on
    rq_bad = Job.fetch(failed["rq_job_id"], connection=rt.redis)
    assert rq_bad.get_status() == "failed"
    assert w.poll() is None
    assert rt.heartbeat_age("worker") is not None
    # and still takes work
    third = queue_mod.enqueue(rt, "backfill", dict(FIXED))
    wait_until(lambda: _run(rt, third)["status"] == "ok", 30, "a job after the failure")

    w.send_signal(signal.SIGTERM)
    out, _ = w.communicate(timeout=20)
    assert w.returncode == 0, out
    assert rt.heartbeat_age("worker") is None  # its heartbeat went with it
    rt.close()


def test_a_failing_job_is_retried_as_often_as_configured_then_left_failed(config_factory):
    path = config_factory(schedules=QUIET, jobs={"retries": 1, "retry_interval_seconds": 1})
    rt = _rt(path)
    bad = queue_mod.enqueue(rt, "backfill", {"no_such_parameter": 1})
    rq_id = _run(rt, bad)["rq_job_id"]
    job = Job.fetch(rq_id, connection=rt.redis)
    assert job.timeout == 600  # jobs.timeout_seconds of the test config
    assert job.retries_left == 1
    # burst workers until RQ has given up (the retry waits its interval first)
    def burst_and_check() -> bool:
        p = cli(path, "worker", "--burst")
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0, out
        return Job.fetch(rq_id, connection=rt.redis).get_status() == "failed"
    wait_until(burst_and_check, 30, "RQ to give up on the job", step=0.3)
    row = _run(rt, bad)
    assert (row["status"], row["attempts"]) == ("failed", 2)
    assert Queue("appliance", connection=rt.redis).count == 0
    rt.close()


def test_an_error_retrying_cannot_help_is_not_retried(config_factory):
    """A backup to a drive that is not mounted (a permanent error, as bad
    credentials or an invalid config are): RQ does not try it again
    ``jobs.retries`` times, so the worker is free and the run failed at once."""
    path = config_factory(schedules=QUIET, jobs={"retries": 2, "retry_interval_seconds": 1},
                          backup={"path": "/nonexistent-mda-drive/backups",
                                  "require_mount": True})
    rt = _rt(path)
    bad = queue_mod.enqueue(rt, "backup")
    rq_id = _run(rt, bad)["rq_job_id"]
    assert Job.fetch(rq_id, connection=rt.redis).retries_left == 2
    p = cli(path, "worker", "--burst")
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    job = Job.fetch(rq_id, connection=rt.redis)
    assert job.get_status() == "failed", job.get_status()
    row = _run(rt, bad)
    assert (row["status"], row["attempts"]) == ("failed", 1), row
    assert "is the backup drive mounted?" in row["error"]
    assert "no retry" in out
    assert Queue("appliance", connection=rt.redis).count == 0
    rt.close()


def test_a_work_horse_that_dies_without_raising_has_its_run_marked_failed(config_factory):
    path = config_factory(schedules=QUIET)
    rt = _rt(path)
    with rt.conn() as conn:
        run_id = runs.claim(conn, "backfill", runs.manual_slot(), rq_job_id="dies-abruptly")
    # the horse exits at once, as if killed (out of memory, SIGKILL)
    Queue("appliance", connection=rt.redis).enqueue("os._exit", 3, job_id="dies-abruptly")
    p = cli(path, "worker", "--burst")
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, out
    row = _run(rt, run_id)
    assert row["status"] == "failed"
    assert "died" in row["error"] and "dies-abruptly" in row["error"]
    with rt.conn() as conn:
        n = conn.execute("""SELECT count(*) FROM events WHERE kind = 'backfill'
                            AND level = 'error' AND details->>'run_id' = %s""",
                         (str(run_id),)).fetchone()[0]
    assert n == 1
    rt.close()


def _subscribed(rt, name: str) -> bool:
    """The worker listens on its RQ command channel (its pub/sub thread runs)."""
    from rq.command import PUBSUB_CHANNEL_TEMPLATE
    channel = PUBSUB_CHANNEL_TEMPLATE % name
    return dict(rt.redis.pubsub_numsub(channel)).get(channel.encode(), 0) > 0


def test_idle_workers_stop_soon_after_sigterm(config_factory, procs):
    """RQ's pub/sub thread waits up to its sleep time (60 s in RQ) for a message;
    stopping the worker must not wait for it. The wait depended on a race, so
    three workers are stopped at once."""
    path = config_factory(schedules=QUIET)
    rt = _rt(path)
    names = [f"w-stop{i}" for i in range(3)]
    ws = [cli(path, "worker", "--name", n) for n in names]
    procs.extend(ws)
    for n in names:
        wait_until(lambda n=n: _subscribed(rt, n), 60, f"worker {n} to subscribe to its channel")
    for w in ws:
        w.send_signal(signal.SIGTERM)
    # well before RQ's 60 s pub/sub wait would have let them go
    wait_until(lambda: all(w.poll() is not None for w in ws), 20,
               "the workers to exit within 20 s of SIGTERM")
    outs = [w.communicate(timeout=5)[0] for w in ws]
    assert [w.returncode for w in ws] == [0, 0, 0], outs
    rt.close()


def test_a_sigterm_while_the_worker_starts_stops_it_and_its_scheduler(config_factory, procs):
    """A signal between the worker's start and RQ's own handlers (subscribing,
    forking RQ's scheduler) used to kill the worker and leave the scheduler
    process behind, holding the worker's output open. Each worker here is
    signalled the moment its first heartbeat is seen, so in its start-up."""
    from appliance.runtime.runtime import K_HEARTBEAT
    path = config_factory(schedules=QUIET)
    rt = _rt(path)
    for i in range(3):
        name = f"w-early{i}"
        w = cli(path, "worker", "--name", name)
        procs.append(w)
        wait_until(lambda n=name: rt.redis.exists(K_HEARTBEAT.format(f"worker:{n}")), 60,
                   f"worker {name}'s first heartbeat", step=0.01)
        w.send_signal(signal.SIGTERM)
        # the output closes only once every process holding it (the scheduler) is gone
        out = w.communicate(timeout=30)[0]
        assert w.returncode == 0, out
        assert f"worker {name} stopped" in out, out
    rt.close()


# Run as ``python -c``: a worker whose log handler sends the process SIGTERM
# in the middle of writing a record, once RQ's own handlers are in place. The
# handler catches what writing raises, as logging's StreamHandler does.
_SIGTERM_MID_LOG = """
import logging, os, signal, sys
from appliance.jobs.worker import run_worker
from appliance.runtime.runtime import Runtime

class SignalMidRecord(logging.StreamHandler):
    sent = False
    def emit(self, record):
        try:
            if not self.sent and 'request_stop' in repr(signal.getsignal(signal.SIGTERM)):
                SignalMidRecord.sent = True
                print('SIGTERM sent while logging: ' + record.getMessage(), flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
            super().emit(record)
        except Exception as e:
            print('the log handler caught ' + type(e).__name__, flush=True)

logging.basicConfig(level=logging.INFO, handlers=[SignalMidRecord(sys.stdout)])
rt = Runtime.from_path(sys.argv[1])
rt.open()
sys.exit(run_worker(rt, name='w-midlog'))
"""


def test_a_sigterm_while_the_worker_logs_still_stops_it(config_factory, procs):
    """RQ's handler raised its stop into whatever code the signal interrupted;
    in a log call (RQ logs as its loop starts) the log handler swallowed it and
    the worker ran on, deaf to the signal. The stop is now a flag the loop
    reads, also between the queue's one-second waits for a job."""
    path = config_factory(schedules=QUIET)
    w = subprocess.Popen([sys.executable, "-c", _SIGTERM_MID_LOG, str(path)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs.append(w)
    out = w.communicate(timeout=30)[0]
    assert "SIGTERM sent while logging" in out, out
    assert "the log handler caught" not in out, out
    assert w.returncode == 0, out
    assert "worker w-midlog stopped" in out, out


def test_a_worker_killed_outright_takes_rq_s_scheduler_process_with_it(config_factory, procs):
    """SIGKILL (the OOM killer, kill -9) left RQ's scheduler process running
    on its own, still moving jobs, until the next stop printed its errors."""
    import psutil
    path = config_factory(schedules=QUIET)
    rt = _rt(path)
    w = cli(path, "worker", "--name", "w-kill9")
    procs.append(w)
    wait_until(lambda: _subscribed(rt, "w-kill9"), 60, "the worker to subscribe")
    children = wait_until(lambda: psutil.Process(w.pid).children(), 30,
                          "RQ's scheduler process to start")
    w.kill()
    w.wait(timeout=10)

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    wait_until(lambda: all(gone(c.pid) for c in children), 10,
               f"the worker's children {[c.pid for c in children]} to end with it")
    rt.close()


def _deaf() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import time
    time.sleep(120)


def test_a_scheduler_process_that_ignores_sigterm_is_killed_and_the_worker_goes_on(
        redis_url, monkeypatch, caplog):
    """RQ waits for its scheduler process without end once it has sent it
    SIGTERM; the worker bounds that wait and kills a process that stays."""
    import multiprocessing
    import types

    import redis as redis_lib

    from appliance.jobs import worker as worker_mod
    monkeypatch.setattr(worker_mod, "SCHEDULER_STOP_SECONDS", 1.0)
    conn = redis_lib.Redis.from_url(redis_url)
    w = worker_mod._worker_class(worker_mod.EarlyStop())(
        [Queue("appliance-deaf", connection=conn)], connection=conn, name="w-deaf")
    proc = multiprocessing.get_context("fork").Process(target=_deaf, daemon=True)
    proc.start()
    w.scheduler = types.SimpleNamespace(_process=proc)
    import time
    time.sleep(0.3)  # its SIGTERM ignored from here on
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="appliance.worker"):
        w.stop_scheduler()
    assert not proc.is_alive() and proc.exitcode == -signal.SIGKILL
    assert time.monotonic() - t0 < 10
    assert "did not stop within 1.0 s of SIGTERM: killed" in caplog.text
    conn.close()


def _logged_at(out: str, text: str) -> datetime:
    line = next(ln for ln in out.splitlines() if text in ln)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_a_burst_worker_on_an_empty_queue_exits_within_5_s_of_subscribing(config_factory):
    path = config_factory(schedules=QUIET)
    p = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(path),
                        "worker", "--burst", "--name", "w-burst"],
                       env={**os.environ, "APPLIANCE_LOG_LEVEL": "INFO"},
                       capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    # measured from its own log (the process start is not what is measured)
    took = (_logged_at(out, "worker w-burst stopped")
            - _logged_at(out, "subscribing to channel")).total_seconds()
    assert took < 5, f"worker --burst took {took:.1f} s to quit:\n{out}"


def test_a_stop_while_redis_does_not_answer_ends_the_worker_at_once(tmp_path, database_url, procs):
    """With its Redis down, an idle worker sat in RQ's retry loop, which
    sleeps up to a minute at a time and never looks at a stop: SIGTERM (Ctrl-C
    of ``appliance up``) waited until ``up`` killed it 25 s later. It now waits
    for Redis in steps that see the stop, exits 0, and says the outage once,
    not at every try."""
    from appliance.runtime.services import redis_server_binary
    from tests.conftest import write_config
    sock = tmp_path / "r.sock"
    server = subprocess.Popen([str(redis_server_binary()), "--port", "0", "--unixsocket",
                               str(sock), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(server)
    import redis as redis_lib
    own = redis_lib.Redis(unix_socket_path=str(sock))
    wait_until(lambda: sock.exists() and own.ping(), 20, "the test's own Redis to answer")
    path = write_config(tmp_path / "appliance.yaml", database_url, f"unix://{sock}?db=0",
                        schedules=QUIET)
    rt = _rt(path)
    w = cli(path, "worker", "--name", "w-noredis")
    procs.append(w)
    wait_until(lambda: _subscribed(rt, "w-noredis"), 60, "the worker to subscribe")
    rt.close()
    server.terminate()
    server.wait(timeout=10)
    import time
    time.sleep(8)  # past RQ's first retries: its sleeps had grown to 4 and 8 s
    w.send_signal(signal.SIGTERM)
    out = w.communicate(timeout=6)[0]  # RQ's loop never stopped; `up` killed it after 25 s
    assert w.returncode == 0, out
    assert "worker w-noredis stopped" in out, out
    assert out.count("the worker waits for it") == 1, out
    # RQ's: the wait for a job that Redis's end cut, and its pub/sub thread (once a minute)
    assert out.count("could not connect to Redis instance") <= 2, out
    # the stop itself prints no traceback (RQ's scheduler process, which dies
    # with the connection before, is started again by RQ once Redis answers)
    assert "Traceback" not in out.split("warm shut down requested")[1], out


def _processes_of(config_path) -> list[int]:
    """Every process started with this config (a work horse runs in a
    session of its own: it outlived a worker killed outright)."""
    from pathlib import Path
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and str(config_path).encode() in (d / "cmdline").read_bytes():
                found.append(int(d.name))
        except OSError:
            continue
    return found


def test_a_stopped_worker_interrupts_a_long_job_records_it_and_rq_runs_it_again(
        config_factory, procs, tmp_path):
    """SIGTERM (Ctrl-C of ``appliance up``, a restart) to a worker whose job
    is not a fanned-out backfill waited for the whole job: ``up`` killed the
    worker 25 s later and the work horse, in a session of its own, ran on
    against a stopped database, its run left 'running'. Now the job is
    interrupted a few seconds after the stop: the run is recorded as
    interrupted, no process is left, and RQ's retry runs it again."""
    from tests.fakes.polygon_fake import PolygonFake, make_truth
    start, end = datetime(2024, 1, 2).date(), datetime(2024, 3, 28).date()
    truth = make_truth(["AAPL"], start, end, seed=11)
    # the first request for the bars answers only after 120 s
    fake = PolygonFake(truth.bars, truth.splits, faults=["hang"],
                       fault_paths="/v2/aggs/ticker/AAPL", hang_seconds=120)
    with fake:
        path = config_factory(
            schedules=QUIET, symbols=["AAPL"],
            history={"start": start.isoformat(), "lookback_sessions": 5},
            jobs={"retries": 1, "retry_interval_seconds": 1},
            provider={"name": "polygon",
                      "polygon": {"api_key": "test-key", "base_url": fake.base_url,
                                  "requests_per_minute": 6000, "timeout_seconds": 300,
                                  "max_retries": 0, "retry_backoff_seconds": 0.01}},
            backfill={"fan_out": False})
        rt = _rt(path)
        try:
            log1 = open(tmp_path / "w1.log", "w+")
            w1 = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config",
                                   str(path), "worker", "--name", "w-stopped"],
                                  env={**os.environ, "APPLIANCE_LOG_LEVEL": "INFO"},
                                  stdout=log1, stderr=subprocess.STDOUT)
            procs.append(w1)
            run_id = queue_mod.enqueue(rt, "backfill", {"end": end.isoformat()})
            wait_until(lambda: fake.faults_served["hang"] >= 1 or None, 60,
                       "the backfill to wait on the hanging vendor")
            w1.send_signal(signal.SIGTERM)
            # it waited for the job (120 s more) before
            w1.wait(timeout=20)
            log1.seek(0)
            out = log1.read()
            assert w1.returncode == 0, out
            assert _processes_of(path) == [], out  # no work horse left behind
            row = _run(rt, run_id)
            assert row["status"] == "failed", row
            assert row["error"].startswith("interrupted: its worker was stopped"), row
            with rt.conn() as conn:
                ev = conn.execute("""SELECT level, message FROM events WHERE kind = 'backfill'
                                     AND details->>'run_id' = %s""", (str(run_id),)).fetchall()
            assert [lvl for lvl, m in ev if "interrupted" in m] == ["warning"], ev
            assert "Traceback" not in out, out

            # RQ's retry (jobs.retries) runs it again on the next worker
            w2 = cli(path, "worker", "--name", "w-next")
            procs.append(w2)
            done = wait_until(lambda: (r := _run(rt, run_id))["status"] == "ok" and r or None,
                              90, "the retried run to finish")
            assert done["attempts"] == 2, done
            with rt.conn() as conn:
                n = conn.execute("SELECT count(*) FROM market_data WHERE symbol = 'AAPL'"
                                 ).fetchone()[0]
            assert n == len(truth.rows("AAPL"))
            w2.send_signal(signal.SIGTERM)
            w2.communicate(timeout=20)
        finally:
            rt.close()
