"""Serving the app with gunicorn (``server.workers`` processes, gevent or gthread).

With gevent workers every request is a greenlet in one thread, so anything
that waits without going through gevent's hub stops every request of that
worker. psycopg 3 picks how it waits for the server when ``psycopg.waiting``
is first imported: its C ``wait_c`` (a plain ``poll()``, invisible to gevent)
unless ``select`` is already monkey-patched. gunicorn patches in each worker
after the fork, so psycopg must not be imported in the master;
``cooperative_psycopg`` checks it in the worker and corrects it if some
import got there first.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import sys
from pathlib import Path

from appliance.core.errors import ServiceError

log = logging.getLogger("appliance.server")


def check_bind(bind: str) -> None:
    """Fail with a clear message when the address is taken (not a traceback)."""
    host, _, port = bind.rpartition(":")
    try:
        infos = socket.getaddrinfo(host or "127.0.0.1", int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ServiceError(f"server.bind {bind}: cannot resolve {host!r}: {e}") from None
    family, _, _, _, addr = infos[0]
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(addr)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ServiceError(f"server.bind {bind} is already in use by another process; stop "
                               f"it or set server.bind (or APPLIANCE_BIND) to a free port") from None
        raise ServiceError(f"server.bind {bind}: {e.strerror}") from None
    finally:
        s.close()


def cooperative_psycopg() -> bool:
    """In a gevent-patched process, make psycopg wait for PostgreSQL through
    gevent. Returns True when it had to switch (psycopg was imported before the
    patch, so it chose the C wait function that blocks the whole worker)."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    if not monkey.is_module_patched("select"):
        return False
    from psycopg import waiting
    if waiting.wait is getattr(waiting, "wait_c", None):
        waiting.wait = waiting.wait_poll  # what psycopg picks when imported after the patch
        log.warning("psycopg was imported before gevent patched the worker; switched it to "
                    "gevent-aware waiting")
        return True
    return False


def warm_up(app) -> None:
    """Work that would otherwise fall on the first request that needs it, done
    in the worker before it serves: building the trading calendar (importing
    exchange_calendars and pandas, then computing 1990 to two years ahead)
    takes about half a second of CPU, seconds on a busy machine. Under gevent, CPU work keeps the
    event loop, so when the first /health, status or alert-watchdog
    evaluation did it, every request of that worker waited that long."""
    from appliance.core import calendar
    rt = app.config["RUNTIME"]
    try:
        calendar.all_sessions(rt.config["calendar"])
    except Exception:  # the first caller will report it
        log.exception("could not build the %s trading calendar", rt.config["calendar"])


#: the longest unix socket path the kernel takes (sun_path is 108 bytes with its NUL)
MAX_SOCKET_PATH = 100


def control_socket(cfg) -> dict:
    """gunicorn's control socket, one per instance (in data_dir), never the
    default ``~/.gunicorn/gunicorn.ctl`` every instance of a user would share;
    none when data_dir is too deep for a unix socket path."""
    path = str(Path(cfg["data_dir"]).resolve() / "gunicorn.ctl")
    if len(path.encode()) > MAX_SOCKET_PATH:
        return {"control_socket_disable": True}
    return {"control_socket": path, "control_socket_mode": 0o600}


def gunicorn_options(cfg) -> dict:
    s = cfg["server"]
    return {
        **control_socket(cfg),
        "bind": s["bind"],
        "workers": s["workers"],
        # gevent: a slow or stalled client costs a greenlet, not one of a few
        # threads, so a thousand of them cannot starve everyone else
        "worker_class": s["worker_class"],
        "threads": s["threads"],
        "worker_connections": 2000,
        "timeout": 120,
        "graceful_timeout": 20,
        "keepalive": 5,
        "limit_request_line": 8190,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "appliance-web",
    }


def serve(cfg) -> None:
    from gunicorn.app.base import BaseApplication

    try:
        check_bind(cfg["server"]["bind"])
    except ServiceError as e:
        print(f"error: {e.message}", file=sys.stderr)
        sys.exit(1)
    prom = Path(cfg["data_dir"]) / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)
    prom.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    config_path = str(cfg.path)

    class App(BaseApplication):
        def load_config(self):
            for k, v in gunicorn_options(cfg).items():
                self.cfg.set(k, v)
            self.cfg.set("child_exit", _child_exit)

        def load(self):
            # in the worker, after gevent's monkey-patching (gunicorn loads the
            # app there; nothing in the master imports psycopg)
            if cfg["server"]["worker_class"] == "gevent":
                cooperative_psycopg()
            from appliance.web import create_app
            try:
                app = create_app(config_path, watchdog=True, service=True)
            except Exception as e:
                from appliance.runtime.services import connection_problem
                msg = connection_problem(e, cfg)
                if msg:  # one line that says what to fix, above gunicorn's traceback
                    log.error("%s", msg)
                raise
            warm_up(app)
            return app

    App().run()


def _child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)
