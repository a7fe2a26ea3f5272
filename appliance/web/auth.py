"""Who may do what. Admin actions need ``server.admin_token`` (Bearer header
for the API, a login for the console); without a configured token they are
disabled. Read endpoints are open unless ``server.read_token`` is set."""
from __future__ import annotations

import hmac
from functools import wraps

from flask import current_app, request, session

from .errors import api_error


def _token_from_header() -> str | None:
    h = request.headers.get("Authorization", "")
    if h.startswith("Bearer "):
        return h[len("Bearer "):].strip()
    return None


def token_matches(given: str | None, expected: str) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def admin_token() -> str:
    return current_app.config["RUNTIME"].config["server"]["admin_token"]


def is_admin() -> bool:
    expected = admin_token()
    if not expected:
        return False
    if token_matches(_token_from_header(), expected):
        return True
    return bool(session.get("admin")) and session.get("token_fp") == fingerprint(expected)


def fingerprint(token: str) -> str:
    """Ties a console session to the token it was made with: changing the token
    in appliance.yaml (and reloading) logs everybody out."""
    import hashlib
    return hashlib.sha256(("session:" + token).encode()).hexdigest()[:16]


def require_admin(fn):
    @wraps(fn)
    def wrapper(*a, **kw):
        if not admin_token():
            return api_error(403, "admin_disabled",
                             "admin endpoints are disabled: set server.admin_token in "
                             "appliance.yaml (e.g. admin_token: ${APPLIANCE_ADMIN_TOKEN}) and reload")
        if not token_matches(_token_from_header(), admin_token()):
            return api_error(401, "unauthorized",
                             "this endpoint needs 'Authorization: Bearer <server.admin_token>'")
        return fn(*a, **kw)
    return wrapper


def require_read(fn):
    @wraps(fn)
    def wrapper(*a, **kw):
        cfg = current_app.config["RUNTIME"].config["server"]
        if cfg["read_token"]:
            tok = _token_from_header()
            if not (token_matches(tok, cfg["read_token"]) or token_matches(tok, cfg["admin_token"])
                    or is_admin()):
                return api_error(401, "unauthorized",
                                 "reading needs 'Authorization: Bearer <server.read_token>'")
        return fn(*a, **kw)
    return wrapper
