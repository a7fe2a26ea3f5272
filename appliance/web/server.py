"""Serving the app with gunicorn (``server.workers`` processes, gthread)."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import sys
from pathlib import Path

from ..errors import ServiceError

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


def gunicorn_options(cfg) -> dict:
    s = cfg["server"]
    return {
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
            from . import create_app
            return create_app(config_path, watchdog=True)

    App().run()


def _child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)
