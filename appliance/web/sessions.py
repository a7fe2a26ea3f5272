"""Console sessions kept server-side, in Redis.

The cookie holds only a random session id (256 bits); the data lives in Redis
under a key derived from the id with the secret key (a copy of Redis yields
no usable cookie), so every web worker sees the same sessions and a logout
deletes the session for good: a cookie saved before the logout is worthless
after it. A session ends after ``server.session_idle_minutes`` without a
request (the key's expiry, renewed by each request; a reload that lowers it
ends at once the sessions idle for longer) and, used or not,
``server.session_max_hours`` after it began. Logging in issues a new id.
Nothing is stored before a login: a session without one (no ``fp``) is never
written, so anonymous visitors cannot fill Redis (the login form's CSRF token
is stateless, see ``console/common.py``).

Flask-Session would also keep sessions in Redis, but it opens the session on
every request and turns an unreachable Redis into an error on each of them,
/health and the API included; here a request without a session cookie never
touches Redis, and an unreachable Redis only means "not logged in".
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import TYPE_CHECKING

import redis
from flask.sessions import SecureCookieSession, SessionInterface

from appliance.runtime.fs import local_secret

if TYPE_CHECKING:
    from appliance.config.loader import Config
    from appliance.runtime.runtime import Runtime

log = logging.getLogger("appliance.sessions")

PREFIX = "appliance:session:"
CREATED = "_created"
#: the idle limit (seconds) the key's expiry was last set with: a reload that
#: lowers ``session_idle_minutes`` ends the sessions idle longer than the new
#: limit at once, not when the old expiry runs out
IDLE = "_idle"


class ServerSession(SecureCookieSession):
    def __init__(self, initial=None, sid: str | None = None):
        super().__init__(initial or {})
        self.sid = sid
        self.rotate = False

    def regenerate(self) -> None:
        """A new id at the next save (after a login: no session fixation)."""
        self.rotate = True
        self.modified = True


class RedisSessionInterface(SessionInterface):
    def __init__(self, rt):
        self.rt = rt

    def _key(self, app, sid: str) -> str:
        secret = (app.secret_key or "").encode("utf-8")
        return PREFIX + hmac.new(secret, sid.encode("utf-8"), hashlib.sha256).hexdigest()

    def _limits(self) -> tuple[int, int]:
        s = self.rt.config["server"]
        return int(s["session_idle_minutes"]) * 60, int(s["session_max_hours"]) * 3600

    def open_session(self, app, request):
        # the running config's key (a reload that rotates it ends every session)
        app.secret_key = current_secret_key(self.rt)
        sid = request.cookies.get(self.get_cookie_name(app))
        if not sid or len(sid) > 128:
            return ServerSession()
        key = self._key(app, sid)
        try:
            raw, ttl_ms = self.rt.redis.pipeline().get(key).pttl(key).execute()
        except redis.RedisError as e:
            log.warning("sessions unavailable (Redis): %s", e)
            return ServerSession()
        if raw is None:  # logged out, expired, or never issued
            return ServerSession()
        try:
            data = json.loads(raw)
        except ValueError:
            return ServerSession()
        idle, max_age = self._limits()
        if not isinstance(data, dict) or time.time() - float(data.get(CREATED, 0)) > max_age \
                or float(data.get(IDLE, idle)) - max(ttl_ms, 0) / 1000 > idle:
            try:
                self.rt.redis.delete(key)
            except redis.RedisError:
                pass
            return ServerSession()
        return ServerSession(data, sid=sid)

    def save_session(self, app, session: ServerSession, response) -> None:
        name = self.get_cookie_name(app)
        domain = self.get_cookie_domain(app)
        path = self.get_cookie_path(app)
        secure = bool(self.rt.config["server"].get("secure_cookies")) or \
            self.get_cookie_secure(app)
        if session.accessed:
            response.vary.add("Cookie")
        idle, _max_age = self._limits()
        r = self.rt.redis
        try:
            if not session.get("fp"):  # no login in it: nothing to keep
                if session.sid and session.modified:  # logout: the session is gone for good
                    r.delete(self._key(app, session.sid))
                    response.delete_cookie(name, domain=domain, path=path, secure=secure,
                                           httponly=True, samesite="Strict")
                return
            new_cookie = False
            if session.rotate and session.sid:
                r.delete(self._key(app, session.sid))
                session.sid = None
            if session.sid is None:
                session.sid = secrets.token_urlsafe(32)
                session[CREATED] = time.time()
                new_cookie = True
            key = self._key(app, session.sid)
            if session.modified or new_cookie:
                session[IDLE] = idle
                r.set(key, json.dumps(dict(session)), ex=idle)
            elif session.get(IDLE, idle) != idle:  # the limit was changed by a reload
                session[IDLE] = idle
                r.set(key, json.dumps(dict(session)), ex=idle, xx=True)  # not if logged out
            else:
                r.expire(key, idle)  # each request renews the idle timeout
        except redis.RedisError as e:
            log.warning("session not saved (Redis): %s", e)
            return
        if new_cookie:
            # no Expires: the browser forgets it when it closes; the server's
            # idle and absolute limits end it anyway
            response.set_cookie(name, session.sid, domain=domain, path=path, secure=secure,
                                httponly=True, samesite="Strict")


def current_secret_key(rt: Runtime) -> str:
    """server.secret_key of the running config (a reload rotates it: every
    console session signed with the old one ends), else the key kept in data_dir."""
    return secret_key_of(rt.config)


def secret_key_of(cfg: Config) -> str:
    """server.secret_key of ``cfg``, else the key kept in its data_dir."""
    return cfg["server"]["secret_key"] or _derived_secret(cfg)


def _derived_secret(cfg: Config) -> str:
    """Without server.secret_key, a key kept in data_dir (created once, 0600)."""
    d = cfg["data_dir"]
    if _derived.get(d) is None:
        _derived[d] = local_secret(d, "secret_key", lambda: secrets.token_hex(32))
    return _derived[d]


_derived: dict[str, str] = {}
