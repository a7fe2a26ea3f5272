"""``appliance up``: one command that runs the whole appliance.

Starts (or attaches to) the embedded PostgreSQL and Redis when no URLs are
configured, migrates, then runs the web server, one worker and the scheduler
as child processes. A child that dies is restarted (with a growing delay) and
logged. SIGHUP reloads the config (same path as ``appliance reload``).
SIGTERM or Ctrl-C stops the children, then the embedded servers.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from . import db, services, store
from .errors import ApplianceError

log = logging.getLogger("appliance.up")

CHILDREN = ("serve", "worker", "scheduler")


@dataclass
class Child:
    role: str
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    history: list = field(default_factory=list)


def _spawn(role: str, cfg) -> subprocess.Popen:
    env = dict(os.environ)
    env["APPLIANCE_CONFIG"] = str(cfg.path)
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "appliance.cli", "--config", str(cfg.path), role]
    # own process group: Ctrl-C in the terminal reaches us, and we stop children in order
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def run_up(cfg, *, initial_backfill: bool = True) -> int:
    from .runtime import Runtime

    from .web.server import check_bind

    t0 = time.monotonic()
    try:
        check_bind(cfg["server"]["bind"])
        ep = services.resolve(cfg)
    except ApplianceError as e:
        log.error("%s", e.message)
        return 1
    log.info("using %s", ep.describe())
    try:
        applied = db.migrate(ep.database_url)
    except Exception as e:  # noqa: BLE001 - say what failed, no traceback
        log.error("migration failed: %s", e)
        return 1
    if applied:
        log.info("applied migrations %s", applied)
    rt = Runtime(cfg, endpoints=ep, pool_size=3)
    rt.open()
    with rt.conn() as conn:
        store.sync_symbols(conn, cfg.symbols)
        empty = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM symbol_stats)").fetchone()[0]
        store.record_config_reload(conn, source="startup", actor=None, sha256=cfg.sha256, ok=True,
                                   error=None, diff={})
        store.add_event(conn, "info", "startup", f"appliance starting ({ep.describe()}), "
                                                  f"provider {cfg['provider']['name']}")
    rt.publish_config(cfg)

    children = {role: Child(role) for role in CHILDREN}
    stopping = {"flag": False}
    reload_requested = {"flag": False}

    def on_term(signum, _frame):
        log.info("received %s: stopping", signal.Signals(signum).name)
        stopping["flag"] = True

    def on_hup(_signum, _frame):
        reload_requested["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)

    for c in children.values():
        c.proc = _spawn(c.role, cfg)
        c.started_at = time.monotonic()
        log.info("started %s (pid %d)", c.role, c.proc.pid)

    if empty and initial_backfill:
        try:
            from .queue import enqueue
            run_id = enqueue(rt, "backfill", {}, trigger="initial")
            log.info("empty database: initial backfill queued (job run %d)", run_id)
        except Exception as e:  # noqa: BLE001
            log.warning("could not queue the initial backfill: %s", e)
    log.info("appliance up in %.1f s: http://%s/dashboard", time.monotonic() - t0,
             cfg["server"]["bind"])

    try:
        while not stopping["flag"]:
            if reload_requested["flag"]:
                reload_requested["flag"] = False
                _reload(rt)
            now = time.monotonic()
            for c in children.values():
                if c.proc is not None and c.proc.poll() is not None:
                    code = c.proc.returncode
                    c.proc = None
                    lived = now - c.started_at
                    c.restarts += 1
                    delay = 1.0 if lived > 60 else min(30.0, 2.0 ** min(c.restarts, 5))
                    c.next_start = now + delay
                    log.error("%s exited with code %s after %.0f s; restarting in %.0f s",
                              c.role, code, lived, delay)
                    try:
                        with rt.conn() as conn:
                            store.add_event(conn, "error", "process",
                                            f"{c.role} exited with code {code}; restarted",
                                            {"role": c.role, "code": code})
                    except Exception:  # noqa: BLE001
                        pass
                if c.proc is None and now >= c.next_start and not stopping["flag"]:
                    c.proc = _spawn(c.role, cfg)
                    c.started_at = now
                    log.info("restarted %s (pid %d)", c.role, c.proc.pid)
            time.sleep(0.2)
    finally:
        _stop_children(children)
        rt.close()
        services.stop_embedded(cfg)
        log.info("appliance stopped")
    return 0


def _reload(rt) -> None:
    from .reload import reload_config
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
    deadline = time.monotonic() + 25
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop in time: killing it", p.pid)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
