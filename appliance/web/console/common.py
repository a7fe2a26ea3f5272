"""What every console page shares: request helpers (``request.htmx`` from
htmx-flask), the admin/CSRF check for actions, security headers, the
template context and filters.

The HTMX ops console: server-rendered pages, one partial per hx-target.

Every page works without JavaScript (plain links, GET forms, POST forms that
redirect); htmx only enhances: panels poll for changes, filters swap the
table in place, buttons swap their result in. A request with ``HX-Request``
and the page's ``HX-Target`` gets the partial alone, any other request the
full page (which includes the same partial).

Reading needs no login unless ``server.login_for_read`` is true or
``server.read_token`` is set (checked app-wide by ``auth.gate``). Everything
that changes something is a POST that needs an admin login (a form checking
``server.admin_token``, a server-side session, see ``sessions.py``) and the session's CSRF
token (form field ``csrf_token`` or header ``X-CSRFToken``, which htmx sends
from ``hx-headers`` on <body>). Values are escaped by Jinja's autoescape;
secrets come only from ``Config.masked()``.
"""
from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import math
import secrets
from functools import wraps

import psycopg
import redis
from flask import Response, current_app, g, redirect, render_template, request, session
from itsdangerous import BadData, URLSafeTimedSerializer
from psycopg_pool import PoolTimeout

from appliance.core import units
from appliance.jobs.queue import enqueue
from appliance.web import auth
from appliance.web.auth import admin_token, is_admin

log = logging.getLogger("appliance.console")

SORT_KEYS = ("symbol", "first_session", "last_session", "records", "completeness",
             "quality_score", "gaps", "missing_sessions", "last_update")
EVENT_LEVELS = ("debug", "info", "warning", "error")
FINISHED = ("ok", "partial", "failed")


def rt():
    return current_app.config["RUNTIME"]




def is_htmx() -> bool:
    return bool(request.htmx)


def hx_target() -> str | None:
    return request.htmx.target if request.htmx else None


def page(template: str, partial: str, target: str, status: int = 200, **ctx):
    """The partial alone for an htmx request aimed at ``target``, else the page."""
    if hx_target() == target and not request.htmx.boosted:
        return render_template(partial, **ctx), status
    return render_template(template, **ctx), status


# Before a login there is no server-side session (an anonymous visitor must
# not be able to fill Redis): the login form's CSRF token is then stateless,
# a random value in a cookie of its own, signed with the secret key and dated
# (double submit). A token works only with the cookie of the browser it was
# given to, for LOGIN_CSRF_MAX_AGE_S; a logged-in session has its own token.
LOGIN_CSRF_COOKIE = "appliance_login_csrf"
LOGIN_CSRF_MAX_AGE_S = 3600


def _login_csrf_signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt="appliance-login-csrf")


def _login_csrf_nonce() -> str:
    nonce = g.get("login_csrf_nonce") or request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not 32 <= len(nonce) <= 64:
        nonce = secrets.token_urlsafe(32)
        g.login_csrf_new = True
    g.login_csrf_nonce = nonce
    return nonce


def csrf_token() -> str:
    if session.get("fp"):  # logged in: the session's own token
        tok = session.get("csrf")
        if not tok:
            tok = secrets.token_urlsafe(32)
            session["csrf"] = tok
        return tok
    return _login_csrf_signer().dumps(_login_csrf_nonce())


def _csrf_ok() -> bool:
    given = request.headers.get("X-CSRFToken") or request.form.get("csrf_token")
    if not given:
        return False
    if session.get("fp"):  # logged in: the session's token
        expected = session.get("csrf")
        return bool(expected) and hmac.compare_digest(str(given), str(expected))
    nonce = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not nonce:
        return False
    try:
        signed = _login_csrf_signer().loads(str(given), max_age=LOGIN_CSRF_MAX_AGE_S)
    except BadData:
        return False
    return isinstance(signed, str) and hmac.compare_digest(signed, nonce)


def set_login_csrf_cookie(resp: Response) -> None:
    """Sends the login form's CSRF cookie when a page made a new one."""
    if g.get("login_csrf_new"):
        secure = bool(rt().config["server"].get("secure_cookies")) or \
            bool(current_app.config.get("SESSION_COOKIE_SECURE"))
        resp.set_cookie(LOGIN_CSRF_COOKIE, g.login_csrf_nonce, httponly=True,
                        samesite="Strict", secure=secure, path="/")


def _refused(message: str, status: int = 403):
    if is_htmx():
        return render_template("partials/refused_inline.html", message=message), status
    return render_template("refused.html", message=message), status


def admin_post(fn):
    """A console action: admin login and the session's CSRF token, else 403."""
    @wraps(fn)
    def wrapper(*a, **kw):
        if not admin_token():
            return _refused("Actions are disabled: set server.admin_token in appliance.yaml "
                            "and reload.")
        if not is_admin():
            return _refused("This action needs an admin login.")
        if not _csrf_ok():
            return _refused("Missing or wrong CSRF token: reload the page and try again.")
        return fn(*a, **kw)
    return wrapper


def _actor() -> str:
    return f"console admin ({request.remote_addr or 'unknown'})"


def _done(result_template: str, fallback: str, **ctx):
    """After an action: the result partial for htmx, a redirect for a plain form."""
    if is_htmx():
        return render_template(result_template, **ctx)
    return redirect(fallback, code=303)


def _nonce():
    # reading is gated app-wide (auth.gate), before this
    g.csp_nonce = secrets.token_urlsafe(16)
    return None


def _headers(resp: Response):
    set_login_csrf_cookie(resp)
    nonce = getattr(g, "csp_nonce", "")
    resp.headers.setdefault(
        "Content-Security-Policy",
        f"default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    if resp.mimetype == "text/html":
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.vary.add("HX-Request")
        resp.vary.add("HX-Target")
    return resp


def _context():
    cfg = rt().config
    return {
        "csrf_token": csrf_token,
        "csp_nonce": getattr(g, "csp_nonce", ""),
        "is_admin": is_admin(),
        "logged_in": getattr(auth.principal(), "kind", None) == "session",
        "admin_enabled": bool(admin_token()),
        "provider_name": cfg["provider"]["name"],
        "refresh_seconds": int(cfg["dashboard"]["refresh_seconds"]),
        "nav_active": request.endpoint,
    }


def _unavailable(e):
    log.warning("console: service unavailable: %s", e)
    what = "Redis (the job queue)" if isinstance(e, redis.RedisError) else "the database"
    return render_template("refused.html", title="Service unavailable",
                           message=f"{what} is unreachable right now; this page will work again "
                                   "when it is back."), 503


#: the errors the console answers with "service unavailable"
UNAVAILABLE = (psycopg.OperationalError, PoolTimeout, redis.RedisError)




def _age_seconds(ts) -> float | None:
    if ts is None:
        return None
    if isinstance(ts, str):
        try:
            ts = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(ts, dt.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.UTC)
        return (dt.datetime.now(dt.UTC) - ts).total_seconds()
    return None


def f_age(ts) -> str:
    """How long ago, to the minute ("under a minute ago", "5 min ago",
    "3 h 12 min ago"): a polled panel that shows it re-renders the same until
    a minute has passed, so the dashboard's poll sends nothing when nothing
    changed (a count of seconds would differ at every poll)."""
    s = _age_seconds(ts)
    if s is None:
        return "—"
    if s < 60:
        return "under a minute ago"
    return f_duration(s - s % 60).replace(" 0 s", "") + " ago"


def f_duration(s) -> str:
    if s is None:
        return "—"
    s = float(s)
    if s < 1:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def f_bytes(n) -> str:
    return units.human_bytes(n, missing="—")


def f_num(n, digits: int = 0) -> str:
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "—"
    return f"{n:,.{digits}f}"


def f_pct(x, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{100 * x:.{digits}f} %"


def f_ts(ts) -> str:
    if ts is None:
        return "—"
    if isinstance(ts, dt.datetime):
        if ts.tzinfo is not None:
            ts = ts.astimezone(dt.UTC)
        return ts.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(ts)


def f_json(v) -> str:
    return json.dumps(v, default=str, ensure_ascii=False, sort_keys=True)




def _date_arg(name: str) -> dt.date | None:
    v = request.args.get(name) or ""
    try:
        return dt.date.fromisoformat(v) if v else None
    except ValueError:
        return None


def _float_arg(name: str) -> float | None:
    try:
        v = float(request.args.get(name) or "")
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _enqueue(job: str, params: dict) -> int:
    return enqueue(rt(), job, params)


def quality_class(score, grid=None) -> str:
    grid = grid or rt().config["quality"]["grid"]
    if score is None:
        return "q-red"
    if score > grid["green"]:
        return "q-green"
    if score >= grid["yellow"]:
        return "q-yellow"
    return "q-red"
