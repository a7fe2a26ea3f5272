"""The Flask application: REST API, health, metrics and the HTMX console."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, request

from appliance.config.loader import Config, load_config

if TYPE_CHECKING:  # imported in create_app: ``web.server`` runs in the gunicorn master,
    from appliance.runtime.runtime import (
        Runtime,  # which must not import psycopg (see web/server.py)
    )

log = logging.getLogger("appliance.web")

PACKAGE = Path(__file__).resolve().parents[1]
ROOT = PACKAGE.parent


def _asset_dir(name: str) -> str:
    """templates/ and static/: APPLIANCE_HOME when set, else inside the
    installed package (the wheel maps them to appliance/templates and
    appliance/static), else the top of the source tree (a checkout)."""
    for base in (os.environ.get("APPLIANCE_HOME"), str(PACKAGE), str(ROOT)):
        if base and (Path(base) / name).is_dir():
            return str(Path(base) / name)
    return str(ROOT / name)


def create_app(config: Config | str | os.PathLike | None = None, *, runtime: Runtime | None = None,
               wait: bool = False, watchdog: bool = False, service: bool = False) -> Flask:
    """Build the app. Pools are created here (``open=False``) and opened before
    the first request; nothing connects at import. ``service``: a web server
    process of the appliance (gunicorn's worker): it joins the running
    appliance or starts it from the file, and answers reloads (configsync)."""
    from appliance.runtime.runtime import Runtime
    adopt = False
    if runtime is None and service:
        runtime = _service_runtime(config)
    elif runtime is None:
        cfg = config if isinstance(config, Config) else load_config(config)
        runtime = Runtime(cfg)
        adopt = True  # the running config, at the first request (Redis is up by then)
    app = Flask("appliance", template_folder=_asset_dir("templates"),
                static_folder=_asset_dir("static"), static_url_path="/static")
    app.config["RUNTIME"] = runtime
    # nothing here reaches PostgreSQL or Redis (building an app starts no
    # server): the config as it is now, the running one from the first request
    cfg = runtime.current_config()
    app.config["MAX_CONTENT_LENGTH"] = cfg["server"]["max_request_bytes"]
    from appliance.web.sessions import RedisSessionInterface, secret_key_of
    app.secret_key = secret_key_of(cfg)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_SECURE=bool(cfg["server"]["secure_cookies"]))
    app.session_interface = RedisSessionInterface(runtime)
    # behind the TLS front: the client's address (for the lockout) and scheme
    # come from the proxy's X-Forwarded-For / -Proto (server.trusted_proxy_hops)
    app.wsgi_app = _LiveProxyFix(app.wsgi_app, runtime)
    if service:  # the web service joins the running appliance, or starts it, now
        runtime.open(wait=wait)
    else:
        _open_at_first_request(app, runtime, adopt=adopt, wait=wait)

    from appliance.web import api, auth, console, metrics
    api.register(app)
    app.before_request(auth.gate)
    metrics.register(app)

    @app.after_request
    def _hsts(resp):
        if runtime.config["server"]["secure_cookies"] and request.is_secure:
            resp.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return resp

    console.register(app)
    if watchdog:
        # the web server evaluates the alert rules itself when nothing else
        # does (a dead scheduler would otherwise silence its own alert)
        from appliance.alerts.rules import start_watchdog
        start_watchdog(runtime)
    return app


def _open_at_first_request(app: Flask, runtime: Runtime, *, adopt: bool, wait: bool) -> None:
    """Resolve the services, take the running config and open the pool before
    the first request is handled (the first of the app's hooks)."""
    lock = threading.Lock()
    done: list[bool] = []

    def _open() -> None:
        if done:
            return
        with lock:
            if not done:
                if adopt:
                    runtime.adopt_running_config()
                runtime.open(wait=wait)
                done.append(True)
    app.before_request(_open)


def _service_runtime(config) -> Runtime:
    import atexit

    from appliance.config.salvage import salvage_connection_settings
    from appliance.core.errors import ConfigError
    from appliance.runtime import configsync
    from appliance.runtime.runtime import Runtime
    path = config.path if isinstance(config, Config) else config
    try:
        file_cfg = config if isinstance(config, Config) else load_config(path)
    except ConfigError:
        file_cfg = None  # joins the running appliance, or refuses to start below
    rt = Runtime(file_cfg or salvage_connection_settings(path))
    configsync.start_service(rt, file_cfg, join=os.environ.get("APPLIANCE_JOIN") == "1")
    atexit.register(configsync.Watcher(rt, "web").start().close)
    return rt


class _LiveProxyFix:
    """werkzeug's ProxyFix with the hop count of the running config (a
    reload changes it without a restart)."""

    def __init__(self, app, rt):
        self.app, self.rt, self._fixes = app, rt, {}

    def __call__(self, environ, start_response):
        hops = int(self.rt.config["server"]["trusted_proxy_hops"])
        if not hops:
            return self.app(environ, start_response)
        if hops not in self._fixes:
            from werkzeug.middleware.proxy_fix import ProxyFix
            self._fixes[hops] = ProxyFix(self.app, x_for=hops, x_proto=hops, x_host=0)
        return self._fixes[hops](environ, start_response)
