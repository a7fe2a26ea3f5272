"""``appliance worker``: one RQ worker on the ``appliance`` queue.

The default forking ``rq.Worker`` runs each job in a fresh work horse, which
builds its own Runtime from ``$APPLIANCE_CONFIG`` (set here to this process's
config file) and adopts the running config from Redis, so a job runs with the
config that was current when it started. A job's exception is recorded by
``runs.execute`` (job_runs row + event) and handled by RQ (retry or failed
registry); it never ends the worker. A work horse that dies without raising
(killed, out of memory) has its run marked failed here.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
from pathlib import Path

import redis
from rq import Queue, Worker
from rq.exceptions import DequeueTimeout, StopRequested
from rq.worker import WorkerStatus

from appliance import store
from appliance.core.errors import WorkerStopping
from appliance.ingest import chunks
from appliance.ingest.chunks import release_dead
from appliance.jobs import entry
from appliance.jobs.queue import QUEUE_NAME
from appliance.jobs.schedule import heartbeat_settings
from appliance.runtime.children import forking_children_that_die_with_us
from appliance.runtime.runtime import K_HEARTBEAT
from appliance.store import pool as db

log = logging.getLogger("appliance.worker")

HEARTBEAT_SECONDS = 5.0
HEARTBEAT_TTL = 30
#: The longest an idle worker waits between two tries of a Redis that does not answer.
REDIS_RETRY_MAX_S = 30.0
#: A failure that repeats (Redis down) is logged once, then at most this often.
REPEAT_LOG_S = 60.0
#: How long a job goes on in its work horse after the worker was asked to
#: stop before it is interrupted (``WorkerStopping``): within the time the
#: stopper waits before it kills (``appliance up`` 25 s, a container's stop
#: 10 s, the systemd unit 120 s), so that the run is recorded as interrupted
#: and its files and child processes are cleaned up.
HORSE_STOP_GRACE_S = 5.0


def _rq_connection(url: str) -> redis.Redis:
    # No read timeout: the worker blocks on the queue for minutes at a time, and
    # rq.Worker quits on a redis TimeoutError.
    return redis.Redis.from_url(url, socket_connect_timeout=5,
                                health_check_interval=30)


def _mark_killed(rt, job, retpid, ret_val, rusage) -> None:
    """Called by the worker (not the horse) when a work horse died abruptly."""
    msg = f"work horse {retpid} died (exit status {ret_val}) while running RQ job {job.id}"
    try:
        with db.connect(rt.endpoints.database_url) as conn:
            for rid, name in store.runs.fail_by_rq_id(conn, job.id, msg):
                store.add_event(conn, "error", name, f"{name} failed: {msg}", {"run_id": rid})
    except Exception:  # the worker must survive its bookkeeping
        log.exception("could not record the death of the work horse for %s", job.id)
    try:  # the chunks it held go to another worker at once
        n = release_dead(rt, f"{socket.gethostname()}:{retpid}")
        if n:
            log.warning("%d backfill chunk(s) of work horse %s released", n, retpid)
    except Exception:
        log.exception("could not release the chunks of work horse %s", retpid)


# How long RQ's pub/sub thread (it takes the commands sent to this worker)
# waits for a message before it looks whether it should stop. RQ waits 60 s,
# and with redis-py 8 stopping the worker joins that thread: a worker could
# then take up to a minute to exit after SIGTERM or at the end of a burst.
PUBSUB_WAIT_SECONDS = 1.0
#: How long a stopping worker waits for RQ's scheduler process (it checks
#: for a stop every second) before it kills it.
SCHEDULER_STOP_SECONDS = 10.0


class EarlyStop:
    """SIGTERM/SIGINT that arrive before RQ installs its own handlers.

    ``Worker.work`` installs them only after it has subscribed to its channel
    and forked its scheduler. A signal in that window used to kill the worker
    outright and leave the scheduler process running on its own; now it is
    kept, and the worker stops as soon as its loop begins (tearing down the
    scheduler with it). A forked child that receives one before installing its
    own handlers gets the default action.

    ``requested`` is also set by a stop that comes later, while the worker is
    idle (``AppWorker._shutdown``): the queue reads it between its one-second
    waits for a job (``_queue_class``)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.signum: int | None = None
        self.requested = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.handle)

    def handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        log.info("got %s while starting: stopping once started", signal.Signals(signum).name)
        self.signum = signum
        self.requested = True


#: The longest a stopping idle worker waits on the queue before it sees the stop.
QUEUE_WAIT_SECONDS = 1


def _queue_class(early: EarlyStop) -> type[Queue]:

    class AppQueue(Queue):
        """RQ's queue, whose blocking wait for a job is cut into waits of
        ``QUEUE_WAIT_SECONDS``, with a look at ``early.requested`` before
        each: a stop asked for while the worker is idle ends the wait from
        ordinary code, not by an exception raised inside a signal handler."""

        @classmethod
        def lmove(cls, connection, queue_key, timeout):
            def once(wait):
                return super(AppQueue, cls).lmove(connection, queue_key, wait)
            return _waiting(once, timeout, queue_key, early)

        @classmethod
        def lpop(cls, queue_keys, timeout, connection=None):
            def once(wait):
                return super(AppQueue, cls).lpop(queue_keys, wait, connection=connection)
            return _waiting(once, timeout, queue_keys, early)

    return AppQueue


def _waiting(once, timeout, keys, early: EarlyStop):
    """RQ's blocking pop of up to ``timeout`` seconds, as one-second pops that
    stop (StopRequested, which the work loop takes as its end) once a stop is
    requested; RQ's DequeueTimeout when the whole timeout passed."""
    if timeout is None:  # the non-blocking pop of a burst
        return once(None)
    deadline = time.monotonic() + timeout
    while True:
        if early.requested:
            raise StopRequested()
        left = deadline - time.monotonic()
        if left <= 0:
            raise DequeueTimeout(timeout, keys)
        try:
            return once(max(1, min(QUEUE_WAIT_SECONDS, math.ceil(left))))
        except DequeueTimeout:
            continue


class Repeats:
    """Whether to log a failure that repeats: the first one, then at most
    every ``REPEAT_LOG_S`` until ``clear()`` (it passed). With Redis down,
    RQ's pub/sub thread logged an error every 2 s and the heartbeat a warning
    every 5 s. (The standard logging has no rate limit of its own.)"""

    def __init__(self) -> None:
        self.next: float | None = None

    def due(self) -> bool:
        now = time.monotonic()
        if self.next is not None and now < self.next:
            return False
        self.next = now + REPEAT_LOG_S
        return True

    def clear(self) -> None:
        self.next = None


def _pause(seconds: float, early: EarlyStop) -> None:
    """Sleep ``seconds`` in short steps; StopRequested once a stop is asked for."""
    end = time.monotonic() + seconds
    while not early.requested and time.monotonic() < end:
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))
    if early.requested:
        raise StopRequested()


class PatientWorker(Worker):
    """RQ's worker, waiting for a Redis that does not answer in a way a stop
    ends (``early``: the stop asked for while idle; ``repeats``: when to say
    the outage again)."""

    early: EarlyStop
    repeats: Repeats

    def heartbeat(self, timeout=None, pipeline=None):
        """RQ's. An idle worker whose Redis does not answer waits for it
        here, in steps that see a stop: RQ's own retry loop sleeps up to
        a minute at a time and never looks at a stop, so Ctrl-C of
        ``appliance up`` with its Redis down waited 25 s and then killed
        the worker. A busy worker keeps RQ's behaviour."""
        if self.early.requested:
            raise StopRequested()
        if pipeline is not None or self.get_state() == WorkerStatus.BUSY:
            return super().heartbeat(timeout, pipeline)
        wait, waited = 1.0, 0.0
        while True:
            try:
                beat = super().heartbeat(timeout, pipeline)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if not waited:
                    log.error("Redis does not answer (%s); the worker waits for it", e)
                _pause(wait, self.early)
                waited += wait
                wait = min(wait * 2, REDIS_RETRY_MAX_S)
                continue
            if waited:
                self.repeats.clear()
                log.info("Redis answers again (after %.0f s); the worker goes on", waited)
            return beat

    def teardown(self):
        """RQ's; a Redis that does not answer made it end the worker with
        a traceback. The worker's entry there expires by itself."""
        try:
            super().teardown()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            log.warning("could not record the worker's stop in Redis (%s); its entry "
                        "there expires by itself", e)

    def _pubsub_exception_handler(self, exc, pubsub, pubsub_thread):
        """RQ's, saying a Redis that does not answer once a minute, not
        at every try (every 2 s)."""
        if isinstance(exc, redis.ConnectionError) and not self.repeats.due():
            time.sleep(2.0)
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    def handle_exception(self, job, *exc_info):
        """RQ's, which logs the traceback of a job's exception; a job
        interrupted by its worker's stop gets one line: no fault of its own."""
        if isinstance(exc_info[1], WorkerStopping):
            self.log.warning("Worker %s: job %s %s", self.name, job.id, exc_info[1].message)
            return
        super().handle_exception(job, *exc_info)


def _worker_class(early: EarlyStop):

    class AppWorker(PatientWorker):
        def stop_scheduler(self):
            """RQ's, with its wait bounded: RQ sends RQ's scheduler process
            SIGTERM and waits for it without end. A scheduler process that
            does not stop within ``SCHEDULER_STOP_SECONDS`` (one caught in
            its start-up when the worker stopped) is killed, so the worker
            always exits and leaves no process of its own behind."""
            # RQ keeps the process in a private attribute, as its own stop_scheduler reads it
            proc = self.scheduler._process if self.scheduler else None  # noqa: SLF001
            if proc is None or not proc.pid:
                return
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except OSError:
                pass
            proc.join(SCHEDULER_STOP_SECONDS)
            if proc.is_alive():
                log.warning("RQ's scheduler process %s did not stop within %s s of SIGTERM: "
                            "killed", proc.pid, SCHEDULER_STOP_SECONDS)
                proc.kill()
                proc.join()

        def _start_scheduler(self, *args, **kwargs):
            """RQ's, with RQ's scheduler process dying with this worker: a
            worker killed outright left it running, moving jobs unseen. RQ
            forks it here, and again from its maintenance (the scheduler's
            ``start``, when it takes the lock over): both are armed; the work
            horses, forked elsewhere, finish their job as before."""
            with forking_children_that_die_with_us():
                super()._start_scheduler(*args, **kwargs)
            scheduler = self.scheduler
            if scheduler is not None:
                start = scheduler.start

                def start_armed():
                    with forking_children_that_die_with_us():
                        return start()
                scheduler.start = start_armed

        def _install_signal_handlers(self):
            super()._install_signal_handlers()
            if early.signum is not None:
                self._stop_requested = True  # the loop's first check ends it

        def _shutdown(self):
            """RQ's, for a worker running a job; an idle one is stopped by
            a flag the loop and the queue's waits read. RQ raised its
            StopRequested here, inside whatever code the signal interrupted:
            in a log call (RQ logs as its loop starts), the log handler
            caught it and the worker ran on, deaf to the signal."""
            if self.get_state() == WorkerStatus.BUSY:
                super()._shutdown()
                # a fanned-out backfill in the work horse ends after its chunk
                # (``ingest.chunks.STOPPING``), its other chunks stay queued;
                # any other job is interrupted if it runs on (_horse_asked_to_stop)
                if self.horse_pid:
                    with contextlib.suppress(OSError):
                        os.kill(self.horse_pid, signal.SIGUSR1)
                return
            self._stop_requested = True
            early.requested = True

        def subscribe(self):
            """RQ's subscribe, with a short wait (see PUBSUB_WAIT_SECONDS)."""
            self.log.info("Worker %s: subscribing to channel %s", self.name,
                          self.pubsub_channel_name)
            self.pubsub = self.connection.pubsub()
            self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
            self.pubsub_thread = self.pubsub.run_in_thread(
                sleep_time=PUBSUB_WAIT_SECONDS, daemon=True,
                exception_handler=self._pubsub_exception_handler)

    AppWorker.early, AppWorker.repeats = early, Repeats()
    return AppWorker


def _horse_asked_to_stop(_signum, _frame) -> None:
    """SIGUSR1 in a work horse (sent by ``AppWorker._shutdown``): a
    fanned-out backfill ends after the chunk it is fetching
    (``chunks.STOPPING``); any other job still running HORSE_STOP_GRACE_S
    later is interrupted."""
    if chunks.STOPPING.is_set():
        return
    chunks.STOPPING.set()
    main = threading.main_thread().ident

    def interrupt() -> None:
        if main is not None and not chunks.STOP_AWARE.is_set():
            signal.pthread_kill(main, signal.SIGUSR2)  # wakes a blocking call too
    timer = threading.Timer(HORSE_STOP_GRACE_S, interrupt)
    timer.daemon = True
    timer.start()


def _interrupt_job(_signum, _frame) -> None:
    raise WorkerStopping(
        f"interrupted: its worker was stopped (the appliance stopped or restarted) and the job "
        f"had not ended {HORSE_STOP_GRACE_S:.0f} s later; what it stored is kept")


def run_worker(rt, burst: bool = False, name: str | None = None) -> int:
    """Work the ``appliance`` queue until SIGTERM/SIGINT (or, with ``burst``,
    until it is empty). Returns the exit code (0)."""

    cfg = rt.config
    os.environ["APPLIANCE_CONFIG"] = str(Path(cfg.path).resolve())
    entry.parent = rt  # work horses start from this process's config
    name = name or f"appliance-{socket.gethostname()}-{os.getpid()}"
    conn = _rq_connection(rt.endpoints.redis_url)
    early = EarlyStop()
    early.install()
    # before any fork: every work horse inherits them (see AppWorker._shutdown)
    signal.signal(signal.SIGUSR1, _horse_asked_to_stop)
    signal.signal(signal.SIGUSR2, _interrupt_job)
    queue_class = _queue_class(early)
    q = queue_class(QUEUE_NAME, connection=conn, default_timeout=cfg["jobs"]["timeout_seconds"])
    worker = _worker_class(early)([q], connection=conn, name=name, queue_class=queue_class,
                                  work_horse_killed_handler=lambda *a: _mark_killed(rt, *a))

    stop = threading.Event()
    # beat often enough for the configured staleness limit (the one /health
    # and the alerts judge the heartbeat by), never more than every HEARTBEAT_SECONDS
    every, ttl = heartbeat_settings(cfg)
    every = min(every, HEARTBEAT_SECONDS)

    failing = Repeats()

    def beat():
        while True:
            try:
                rt.heartbeat("worker", ttl=max(ttl, HEARTBEAT_TTL), ident=name)
                failing.clear()
            except redis.RedisError as e:
                if failing.due():
                    log.warning("worker heartbeat failed: %s", e)
            if stop.wait(every):
                return

    hb = threading.Thread(target=beat, name="heartbeat", daemon=True)
    hb.start()
    log.info("worker %s on queue %r (config %s)", name, QUEUE_NAME, os.environ["APPLIANCE_CONFIG"])
    try:
        # with_scheduler: RQ's own scheduler moves retries with an interval back
        # onto the queue; it is unrelated to the appliance's cron scheduler.
        worker.work(burst=burst, with_scheduler=True,
                    logging_level=logging.getLevelName(logging.getLogger().level))
    finally:
        stop.set()
        hb.join(timeout=2)
        try:
            rt.redis.delete(K_HEARTBEAT.format(f"worker:{name}"))
        except redis.RedisError:
            pass
        conn.close()
    log.info("worker %s stopped", name)
    return 0
