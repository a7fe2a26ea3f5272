"""The Flask application: REST API, health, metrics and the HTMX console."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, request

from ..config import Config, load_config

if TYPE_CHECKING:  # imported in create_app: ``web.server`` runs in the gunicorn master,
    from ..runtime import Runtime  # which must not import psycopg (see web/server.py)

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
               wait: bool = False, watchdog: bool = False) -> Flask:
    """Build the app. Pools are created here (``open=False``) and opened before
    the first request; nothing connects at import."""
    from ..runtime import Runtime
    if runtime is None:
        cfg = config if isinstance(config, Config) else load_config(config)
        runtime = Runtime(cfg)
        runtime.adopt_running_config()
    app = Flask("appliance", template_folder=_asset_dir("templates"),
                static_folder=_asset_dir("static"), static_url_path="/static")
    app.config["RUNTIME"] = runtime
    cfg = runtime.config
    app.config["MAX_CONTENT_LENGTH"] = cfg["server"]["max_request_bytes"]
    app.secret_key = cfg["server"]["secret_key"] or _derived_secret(runtime)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_SECURE=bool(cfg["server"]["secure_cookies"]))
    from .sessions import RedisSessionInterface
    app.session_interface = RedisSessionInterface(runtime)
    hops = int(cfg["server"]["trusted_proxy_hops"])
    if hops:
        # behind the TLS front: the client's address (for the lockout) and
        # scheme come from the proxy's X-Forwarded-For / -Proto
        from werkzeug.middleware.proxy_fix import ProxyFix
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=0)
    runtime.open(wait=wait)

    from . import api, auth, console, metrics
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
        from ..alerts import start_watchdog
        start_watchdog(runtime)
    return app


def _derived_secret(rt: Runtime) -> str:
    """Without server.secret_key, a key kept in data_dir (created once, 0600)."""
    import secrets
    from ..runtime import local_secret
    return local_secret(rt.config["data_dir"], "secret_key", lambda: secrets.token_hex(32))
