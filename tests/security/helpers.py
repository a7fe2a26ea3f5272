"""Helpers of the security suite."""
from __future__ import annotations

import re
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "admin-" + "a" * 40
READ_TOKEN = "read-" + "r" * 40
METRICS_TOKEN = "metrics-" + "m" * 40
SECRET = "secret-key-" + "s" * 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secured(**server) -> dict:
    """server settings with long tokens (and ``server`` over them)."""
    return {"admin_token": ADMIN_TOKEN, "secret_key": SECRET, **server}


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(http, base: str, token: str = ADMIN_TOKEN, next_: str = "/dashboard"):
    """Logs ``http`` (a requests.Session) in; returns the response (303 when accepted)."""
    tok = csrf_of(http.get(base + "/login").text)
    return http.post(base + "/login", data={"token": token, "csrf_token": tok, "next": next_},
                     allow_redirects=False)


def app_for(config_path):
    """An in-process app (one more 'worker') on ``config_path``."""
    from appliance.runtime.runtime import Runtime
    from appliance.web import create_app
    rt = Runtime.from_path(config_path)
    rt.open()
    app = create_app(runtime=rt)
    app.config["TESTING"] = True
    return app, rt
