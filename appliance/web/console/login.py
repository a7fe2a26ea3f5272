"""Console login and logout (admin or read-only), with the lockout."""
from __future__ import annotations

import logging
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, session, url_for

from appliance.web import auth
from appliance.web.auth import ENABLE_ADMIN, admin_token, fingerprint, token_matches
from appliance.web.console.common import _csrf_ok, _refused, rt

log = logging.getLogger("appliance.console")

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str:
    """A local path to go to after the login, else the dashboard. Browsers drop
    tabs and newlines from URLs (``/\t/evil.example`` is ``//evil.example``, another
    host), so any control character or space refuses the target outright."""
    if target and target.startswith("/") and not target.startswith("//") \
            and "\\" not in target and not any(ord(c) <= 0x20 or ord(c) == 0x7f for c in target):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("console.dashboard.dashboard")


@bp.route("/login", methods=["GET", "POST"])
def login():
    nxt = _safe_next(request.values.get("next"))
    if request.method in ("GET", "HEAD"):  # Flask answers HEAD with the GET view
        return render_template("login.html", next=nxt, error=None)
    if not _csrf_ok():
        return _refused("Missing or wrong CSRF token: reload the login page and try again.")
    addr = auth.client_addr()
    wait = auth.locked_for(addr)
    if wait:  # checked before the token: a locked-out address learns nothing
        auth.count_refusal("login")
        resp = render_template("login.html", next=nxt,
                               error=f"Too many failed logins from this address; try again "
                                     f"in {wait} s."), 429, {"Retry-After": str(wait)}
        return resp
    cfg = rt().config["server"]
    expected, reader = admin_token(), cfg["read_token"]
    if not expected and not reader:
        return render_template("login.html", next=nxt,
                               error=f"Login is disabled: server.admin_token is empty; "
                                     f"{ENABLE_ADMIN}."), 403
    given = request.form.get("token") or ""
    as_admin = token_matches(given, expected)
    if not as_admin and not token_matches(given, reader):
        # no sleep: under gevent it would not serialise guesses; the lockout does
        auth.record_failure(addr, "login", "a console login")
        error = "Wrong admin token." if not reader else "Wrong token." if expected else \
            f"Wrong token. Admin logins are off (server.admin_token is empty): {ENABLE_ADMIN}."
        return render_template("login.html", next=nxt, error=error), 403
    session.clear()
    session.regenerate()  # a new session id: one planted before the login is worthless
    session["admin" if as_admin else "read"] = True
    session["fp"] = fingerprint(expected if as_admin else reader)
    session["csrf"] = secrets.token_urlsafe(32)
    log.info("console %s login from %s", "admin" if as_admin else "read-only", addr)
    return redirect(nxt, code=303)


@bp.post("/logout")
def logout():
    if not _csrf_ok():
        return _refused("Missing or wrong CSRF token.")
    session.clear()  # deletes the server-side session: the cookie is worthless from now
    return redirect(url_for("console.dashboard.dashboard"), code=303)
