"""``appliance up``: one command that runs the whole appliance.

Starts (or attaches to) the embedded PostgreSQL and Redis when no URLs are
configured, migrates, then runs the web server, one worker and the scheduler
as child processes. A child that dies is restarted (with a growing delay) and
logged; so is an embedded server that dies (killed, not stopped: see
``services.crashed``). SIGHUP reloads the config (same path as ``appliance reload``).
SIGTERM or Ctrl-C stops the children, then the embedded servers.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from appliance import store
from appliance.core import version
from appliance.core.errors import ApplianceError
from appliance.runtime import services
from appliance.runtime.logs import PrivateRotatingFileHandler
from appliance.runtime.runtime import K_PROCESSES
from appliance.store import pool as db

log = logging.getLogger("appliance.up")

CHILDREN = ("serve", "worker", "scheduler")

#: Like systemd's StartLimitBurst: a child that exits this many times in a row,
#: each within START_FAST_S of starting, will not come up by retrying; ``up``
#: stops and exits non-zero with that child's last error lines. Only while
#: starting: a child that had come up (lived START_FAST_S) and then cannot
#: start again (its environment lost a variable, its port was taken) is
#: tried again every RETRY_MAX_S at most, and the rest of the appliance runs
#: on (stopping the web server and the scheduler with it helped nobody).
START_LIMIT_BURST = 5
START_FAST_S = 10.0
RETRY_MAX_S = 60.0
#: How often ``up`` looks whether an embedded server has died, and the longest
#: wait between two tries to start one that does not come back.
WATCH_S = 2.0
REVIVE_MAX_DELAY_S = 60.0
#: How long ``up`` waits for the web server to answer /health before it says so.
READY_TIMEOUT_S = 120.0
#: How long ``up`` waits for its processes to stop before it kills them (a
#: worker's job is interrupted well within it: ``jobs.worker.HORSE_STOP_GRACE_S``).
STOP_WAIT_S = 25.0
ERROR_LINES = 80
_ERRORISH = re.compile(r"Error|Exception|error:|invalid|not found|denied|refused")


@dataclass
class Child:
    role: str
    proc: subprocess.Popen | None = None
    restarts: int = 0
    fast_exits: int = 0
    started_at: float = 0.0
    came_up: bool = False  # lived START_FAST_S once: not given up on any more
    next_start: float = 0.0
    last_code: int | None = None
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=ERROR_LINES))
    last_error: list = field(default_factory=list)

    def state(self) -> dict:
        return {"state": "running" if self.proc is not None else "restarting",
                "pid": self.proc.pid if self.proc is not None else None,
                "restarts": self.restarts, "last_exit_code": self.last_code,
                "last_error": self.last_error[-3:]}


#: Without systemd's journal, ``up`` keeps every process's log here (in
#: data_dir), rotated at LOG_BYTES with LOG_KEEP old files.
LOG_FILE = "log/appliance.log"
LOG_BYTES = 10 * 1024 * 1024
LOG_KEEP = 5
_file_log: logging.Handler | None = None


def open_log_file(cfg) -> Path:
    """Send this process's log and its children's output to data_dir/log."""
    global _file_log
    path = Path(cfg["data_dir"]) / LOG_FILE
    # 0700 folder, 0600 files (rotations too), whatever the umask
    _file_log = PrivateRotatingFileHandler(path, maxBytes=LOG_BYTES, backupCount=LOG_KEEP,
                                           encoding="utf-8")
    _file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(_file_log)
    return path


def _to_file(line: str) -> None:
    h = _file_log
    if h is None:
        return
    # a child's line is already formatted: written as it is, rotation included
    rec = logging.makeLogRecord({"msg": line})
    h.acquire()
    try:
        if h.shouldRollover(rec):
            h.doRollover()
        if h.stream is not None:
            h.stream.write(line + "\n")
            h.stream.flush()
    finally:
        h.release()


def _pump(stream, tail: collections.deque) -> None:
    """Copy a child's stderr to ours (and the log file) line by line, keeping
    the last lines for the message when it keeps failing."""
    out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
    for raw in iter(stream.readline, b""):
        if out is not None:
            try:
                out.write(raw)
                out.flush()
            except (OSError, ValueError):
                pass
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        try:
            _to_file(line)
        except Exception:  # noqa: BLE001 - a full disk must not stop the pump
            pass
    stream.close()


def error_lines(tail, limit: int = 12) -> list[str]:
    """What a dying child said that matters: the lines that name an error
    (a traceback's chain ends in its least telling exception), then its last
    lines."""
    lines = [ln for ln in tail if ln.strip()]
    errs = list(dict.fromkeys(ln.strip() for ln in lines if _ERRORISH.search(ln)))
    last = [ln.strip() for ln in lines[-3:]]
    return (errs[:limit - len(last)] + [ln for ln in last if ln not in errs]) or last


def _spawn(child: Child, cfg) -> subprocess.Popen:
    env = dict(os.environ)
    env["APPLIANCE_CONFIG"] = str(cfg.path)
    env["APPLIANCE_JOIN"] = "1"  # the running config up published, not the file as it is now
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "appliance.cli.main", "--config", str(cfg.path), child.role]
    child.tail.clear()
    # own process group: Ctrl-C in the terminal reaches us, and we stop children in order
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE)
    threading.Thread(target=_pump, args=(proc.stderr, child.tail), daemon=True,
                     name=f"stderr-{child.role}").start()
    return proc


def _answers(url: str) -> bool:
    """True when the web server answers /health at all (any HTTP status).
    The time limit is generous: /health answers within about a second by
    design, more on a loaded machine, and a slow answer is still an answer."""
    try:
        with urllib.request.urlopen(url, timeout=5.0):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def publish_processes(rt, children: dict) -> None:
    """Write the children's state where /health and ``appliance status`` read it."""
    try:
        rt.redis.set(K_PROCESSES, json.dumps({c.role: c.state() for c in children.values()}),
                     ex=30)
    except Exception:  # noqa: BLE001 - Redis down: health says so by itself
        pass


def run_up(cfg, *, initial_backfill: bool = True) -> int:
    """Run the appliance until SIGTERM/SIGINT; the exit code (1 when it could
    not start, or a child would not stay up)."""
    return Supervisor(cfg).run(initial_backfill=initial_backfill)


class Supervisor:
    """``appliance up``'s state: the runtime, the children and the flags the
    signal handlers set."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.t0 = time.monotonic()
        self.stopping = False
        self.reload_requested = False
        self.code = 0
        self.rt = None
        self.children = {role: Child(role) for role in CHILDREN}
        #: embedded servers found dead: name -> [found at, next try, tries]
        self.dead: dict[str, list] = {}
        self.stopped: set[str] = set()

    def _on_term(self, signum, _frame):
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def _on_hup(self, _signum, _frame):
        self.reload_requested = True

    def run(self, *, initial_backfill: bool) -> int:
        # before anything starts: a Ctrl-C during start-up stops what has
        # started instead of being lost in a library's retry loop
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            empty = self._start()
            if empty is None:
                self.code = 1
                return 1
            self._spawn_all()
            if empty and initial_backfill and not self.stopping:
                self._initial_backfill()
            self._loop()
        finally:
            self._stop()
        return self.code

    def _start(self) -> bool | None:
        """Services, migrations, the runtime; whether the database is empty
        (None: it could not start, and the log says why)."""
        from appliance.runtime.runtime import Runtime
        from appliance.web.server import check_bind
        cfg = self.cfg
        try:
            check_bind(cfg["server"]["bind"])
            ep = services.resolve(cfg)
        except ApplianceError as e:
            log.error("%s", e.message)
            return None
        try:
            log.info("logging to %s", open_log_file(cfg))
        except OSError as e:
            log.warning("no log file (%s); the log goes to this terminal only", e)
        log.info("appliance %s, using %s", version.describe(), ep.describe())
        try:
            applied = db.migrate(ep.database_url)
        except Exception as e:  # noqa: BLE001 - say what failed, no traceback
            log.error("migration failed: %s", e)
            return None
        log.info("database schema version %s: %s", db.latest_version(),
                 f"applied migrations {applied}" if applied else "up to date")
        self.rt = Runtime(cfg, endpoints=ep, pool_size=3)
        self.rt.open()
        with self.rt.conn() as conn:
            store.sync_symbols(conn, cfg.symbols)
            empty = store.no_symbol_stats(conn)
            store.record_config_reload(conn, source="startup", actor=None, sha256=cfg.sha256,
                                       ok=True, error=None, diff={})
            store.add_event(conn, "info", "startup", f"appliance starting ({ep.describe()}), "
                                                      f"provider {cfg['provider']['name']}")
        self.rt.publish_config(cfg, boot=True)  # a cold start takes the file (configsync)
        return bool(empty)

    def _spawn_all(self) -> None:
        for c in self.children.values():
            if self.stopping:
                break
            c.proc = _spawn(c, self.cfg)
            c.started_at = time.monotonic()
            log.info("started %s (pid %d)", c.role, c.proc.pid)

    def _initial_backfill(self) -> None:
        try:
            from appliance.jobs.queue import enqueue
            run_id = enqueue(self.rt, "backfill", {}, trigger="initial")
            log.info("empty database: initial backfill queued (job run %d)", run_id)
        except Exception as e:  # noqa: BLE001
            log.warning("could not queue the initial backfill: %s", e)

    def _loop(self) -> None:
        from appliance.ops.statusview import web_url
        health_url = web_url(self.cfg)
        ready = False
        next_probe = next_publish = next_watch = 0.0
        log.info("children started; waiting for the web server to answer %s", health_url)
        while not self.stopping:
            now = time.monotonic()
            if not ready and now >= next_probe:
                next_probe = now + 0.5
                if self.children["serve"].proc is not None and _answers(health_url):
                    ready = True
                    log.info("appliance up in %.1f s: http://%s/dashboard", now - self.t0,
                             self.cfg["server"]["bind"])
                elif now - self.t0 > READY_TIMEOUT_S:
                    log.warning("the web server has not answered %s after %.0f s",
                                health_url, now - self.t0)
                    next_probe = now + 30
            if now >= next_publish:
                next_publish = now + 5
                publish_processes(self.rt, self.children)
            if now >= next_watch:
                next_watch = now + WATCH_S
                self._revive(now)
            if self.reload_requested:
                self.reload_requested = False
                _reload(self.rt)
            for c in self.children.values():
                if c.proc is not None and c.proc.poll() is not None and not self._exited(c, now):
                    return
                if c.proc is None and now >= c.next_start and not self.stopping:
                    c.proc = _spawn(c, self.cfg)
                    c.started_at = now
                    log.info("restarted %s (pid %d)", c.role, c.proc.pid)
            time.sleep(0.2)

    def _revive(self, now: float) -> None:
        """Start again the embedded servers that died (tried at once, then
        with a growing delay while one will not start)."""
        now_stopped = set(services.stopped(self.cfg))
        for name in now_stopped - self.stopped:  # said once per stop
            log.error("embedded %s was stopped (not killed: it removed its pid file) while "
                      "appliance up runs; it is not started again: nothing works without it. "
                      "Stop appliance up (Ctrl-C) and start it again", name)
        self.stopped = now_stopped
        for name in services.crashed(self.cfg):
            if name not in self.dead:
                self.dead[name] = [now, now, 0]
                log.error("embedded %s has died (its process is gone, its pid file left "
                          "behind); starting it again", name)
        for name, (found, next_try, tries) in list(self.dead.items()):
            if now < next_try or self.stopping:
                continue
            try:
                services.restart_crashed(self.cfg, name)
            except Exception as e:  # noqa: BLE001 - logged, tried again
                delay = min(REVIVE_MAX_DELAY_S, WATCH_S * 2.0 ** tries)
                self.dead[name] = [found, now + delay, tries + 1]
                # the first tries often meet a server still shutting down: not yet an error
                (log.warning if tries < 2 else log.error)(
                    "embedded %s did not start again (%s); next try in %.0f s", name,
                    " ".join(str(getattr(e, "message", e)).split())[:500], delay)
                continue
            del self.dead[name]
            took = time.monotonic() - found
            log.warning("embedded %s started again, %.1f s after it was found dead", name, took)
            try:
                with self.rt.conn() as conn:
                    store.add_event(conn, "error", "service",
                                    f"embedded {name} had died; started again in {took:.0f} s",
                                    {"service": name, "tries": tries + 1})
            except Exception:  # noqa: BLE001 - Redis back, PostgreSQL still down: logged
                pass

    def _exited(self, c: Child, now: float) -> bool:
        """Record a child's exit and plan its restart; False when it keeps
        failing at start (``up`` gives up, like systemd's start limit)."""
        c.proc.wait()
        time.sleep(0.1)  # let the pump thread copy the last lines
        c.last_code = c.proc.returncode
        c.last_error = error_lines(c.tail)
        if c.last_code < 0:  # killed: its last lines are no error of its own
            try:
                sig = signal.Signals(-c.last_code).name
            except ValueError:
                sig = f"signal {-c.last_code}"
            c.last_error = [*c.last_error, f"killed by {sig} (the lines before: its last "
                                           f"output, no error of its own)"]
        c.proc = None
        lived = now - c.started_at
        c.restarts += 1
        c.fast_exits = c.fast_exits + 1 if lived < START_FAST_S else 0
        c.came_up = c.came_up or lived >= START_FAST_S
        publish_processes(self.rt, self.children)
        _record_exit(self.rt, c, lived)
        if c.fast_exits >= START_LIMIT_BURST and c.came_up:
            c.next_start = now + RETRY_MAX_S
            log.error("%s could not start again %d times in a row; the rest of the appliance "
                      "runs on, and %s is tried again every %.0f s. Its last error lines:\n%s",
                      c.role, c.fast_exits, c.role, RETRY_MAX_S,
                      "\n".join("  " + ln for ln in c.last_error) or "  (it printed nothing)")
            return True
        if c.fast_exits >= START_LIMIT_BURST:
            log.error("%s exited %d times in a row within %.0f s of starting; giving up. "
                      "Its last error lines:\n%s", c.role, c.fast_exits, START_FAST_S,
                      "\n".join("  " + ln for ln in c.last_error) or "  (it printed nothing)")
            self.code = 1
            self.stopping = True
            return False
        delay = 1.0 if lived > 60 else min(30.0, 2.0 ** min(c.restarts, 5))
        c.next_start = now + delay
        # exit 0: stopped on purpose (SIGTERM by hand, a restart), no failure of its own
        log.log(logging.WARNING if c.last_code == 0 else logging.ERROR,
                "%s exited with code %s after %.0f s; restarting in %.0f s (last line: %s)",
                c.role, c.last_code, lived, delay, c.last_error[-1] if c.last_error else "-")
        return True

    def _stop(self) -> None:
        _stop_children(self.children)
        if self.rt is not None:
            try:
                self.rt.redis.delete(K_PROCESSES)
                # its processes are gone: nothing of this appliance runs any
                # more, so commands take the file again (configsync)
                from appliance.runtime.configsync import forget_host
                forget_host(self.rt)
            except Exception:  # noqa: BLE001
                pass
            self.rt.close()
        services.stop_embedded(self.cfg)
        log.info("appliance stopped" if self.code == 0 else
                 "appliance stopped: a process would not start"
                 if any(c.fast_exits for c in self.children.values())
                 else "appliance stopped: it could not start")


def _record_exit(rt, c: Child, lived: float) -> None:
    try:
        with rt.conn() as conn:
            store.add_event(conn, "warning" if c.last_code == 0 else "error", "process",
                            f"{c.role} exited with code {c.last_code} after {lived:.0f} s",
                            {"role": c.role, "code": c.last_code,
                             "last_error": c.last_error[-5:]})
    except Exception:  # noqa: BLE001 - the log line above already says it
        pass


def _reload(rt) -> None:
    from appliance.jobs.reload import reload_config
    res = reload_config(rt, source="sighup")
    if res["ok"]:
        log.info("SIGHUP: config %s is running (version %s)", res["sha256"][:12], res["version"])
    else:
        for line in res["errors"]:
            log.error("SIGHUP reload refused: %s", line)


def _stop_children(children: dict) -> None:
    procs = [c.proc for c in children.values() if c.proc is not None]
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_WAIT_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop in time: killing it", p.pid)
            for group in _groups_of(p.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)
            p.wait()


def _groups_of(pid: int) -> list[int]:
    """The process groups of ``pid`` and of everything it started, its own
    first: RQ runs a job's work horse in a group of its own, which a kill of
    the worker's group alone left running, orphaned, on a stopped database."""
    groups = [pid]
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(OSError):
                g = os.getpgid(child.pid)
                if g not in groups:
                    groups.append(g)
    return groups
