"""Who may do what.

Credentials: ``Authorization: Bearer`` with ``server.admin_token`` (scopes
read + admin), ``server.read_token`` (read), a per-client key of
``server.api_keys`` (its scopes; only the key's sha256 is in the config),
``server.metrics_token`` (/metrics only), or a console login (a server-side
session, see ``sessions.py``).

Every request passes ``gate()`` (an app-wide ``before_request``) first:

* a Bearer token is checked; a wrong one counts as a failure of the client's
  address, and an address with ``server.auth_max_failures`` failures within
  ``auth_failure_window_seconds`` is locked out (429) for
  ``auth_lockout_seconds``. The counters live in Redis, so every web worker
  shares them; failures are events and counted in /metrics.
* a per-client key is counted (requests, last use) and limited to its
  ``requests_per_minute`` (429 beyond).
* when ``server.read_token`` is set or ``server.login_for_read`` is true,
  every surface but /health and the static assets needs a credential with
  the read scope, whatever the method (HEAD included): 401 for the API,
  metrics and JSON, a redirect to the login for console pages.
  ``server.metrics_token``, when set, guards /metrics the same way.

Admin actions need the admin scope: a Bearer token for the API, a console
login (plus its CSRF token) for the console.

The failure counter and lockout are two Redis commands each (INCR with an
expiry, SET with an expiry); a rate-limit library would add a dependency
without doing the lockout, so they are written out here.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from functools import wraps

import redis
from flask import Response, current_app, g, redirect, request, session, url_for

from appliance import store
from appliance.config.rules import listens_beyond_loopback
from appliance.web.errors import api_error
from appliance.web.lockout import LocalLockout

log = logging.getLogger("appliance.auth")

K_FAIL = "appliance:auth:fail:{}"
K_LOCK = "appliance:auth:lock:{}"
K_COUNTS = "appliance:auth:counts"
K_KEYSTATS = "appliance:apikeys:stats"
K_KEYRATE = "appliance:apikeys:rate:{}:{}"

READ, ADMIN, METRICS = "read", "admin", "metrics"
#: after a Redis error, auth skips Redis for this long (like the runtime's
#: config check): an unreachable or hung Redis must not add its timeout to
#: every authenticated request; limits and counts pause meanwhile
REDIS_DOWN_BACKOFF_S = 10.0
#: endpoints anyone may reach: liveness for load balancers, the login itself
#: and the static assets (CSS, JS, no data)
OPEN_ENDPOINTS = {"api.health", "static", "console.auth.login", "console.auth.logout"}
#: How admin is turned on, for the API's and the console's refusals while it is off.
ENABLE_ADMIN = ("put APPLIANCE_ADMIN_TOKEN=<at least 24 characters> in appliance.env (beside "
                "appliance.yaml, whose admin_token line reads it) and run 'appliance reload'")


@dataclass(frozen=True)
class Principal:
    name: str
    kind: str  # admin_token, read_token, api_key, metrics_token, session
    scopes: frozenset
    requests_per_minute: int | None = None

    def can(self, scope: str) -> bool:
        return scope in self.scopes or (scope == READ and ADMIN in self.scopes) or \
            (scope == METRICS and bool({READ, ADMIN} & self.scopes))

    @property
    def label(self) -> str:
        """As an error message names it: ``server.read_token``, ``the API key
        'notebook'``, ``the console reader``."""
        if self.kind == "api_key":
            return f"the API key {self.name!r}"
        if self.kind == "session":
            return f"the {self.name}'s login"
        return f"server.{self.kind}"


def _rt():
    return current_app.config["RUNTIME"]


def _redis():
    """The Redis client, or None while a recent error says it is down."""
    rt = _rt()
    return None if time.monotonic() < getattr(rt, "auth_redis_down_until", 0.0) else rt.redis


def _redis_failed(e: Exception, what: str) -> None:
    _rt().auth_redis_down_until = time.monotonic() + REDIS_DOWN_BACKOFF_S
    log.warning("auth: %s unavailable (Redis: %s); this worker counts failures itself "
                "for %.0f s", what, e, REDIS_DOWN_BACKOFF_S)


def _server() -> dict:
    return _rt().config["server"]


def _token_from_header() -> str | None:
    h = request.headers.get("Authorization", "")
    if h[:7].lower() == "bearer ":
        return h[7:].strip()
    return None


def token_matches(given: str | None, expected: str) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def admin_token() -> str:
    return _server()["admin_token"]


def fingerprint(token: str) -> str:
    """Ties a console session to the token it was made with (changing the token
    and reloading logs everybody out). Keyed with the secret key, so that it
    allows no offline guessing even if it were seen."""
    key = (current_app.secret_key or "").encode("utf-8")
    return hmac.new(key, ("session:" + token).encode("utf-8"), hashlib.sha256).hexdigest()


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def identify(token: str | None) -> Principal | None:
    """The principal a Bearer token stands for, or None."""
    if not token:
        return None
    s = _server()
    if token_matches(token, s["admin_token"]):
        return Principal("admin", "admin_token", frozenset({READ, ADMIN}))
    if token_matches(token, s["read_token"]):
        return Principal("read", "read_token", frozenset({READ}))
    digest = key_digest(token)
    for k in s.get("api_keys") or ():
        if hmac.compare_digest(digest, k["sha256"]):
            return Principal(k["name"], "api_key", frozenset(k.get("scopes") or (READ,)),
                             k.get("requests_per_minute"))
    if token_matches(token, s.get("metrics_token") or ""):
        return Principal("metrics", "metrics_token", frozenset({METRICS}))
    return None


def _session_principal() -> Principal | None:
    """The console login of this request's session, if still valid for the
    running tokens."""
    if not session.get("fp"):
        return None
    s = _server()
    if session.get("admin") and s["admin_token"] and \
            hmac.compare_digest(session["fp"], fingerprint(s["admin_token"])):
        return Principal("console admin", "session", frozenset({READ, ADMIN}))
    if session.get("read") and s["read_token"] and \
            hmac.compare_digest(session["fp"], fingerprint(s["read_token"])):
        return Principal("console reader", "session", frozenset({READ}))
    return None


def principal() -> Principal | None:
    if "principal" not in g:
        g.principal = identify(_token_from_header()) or _session_principal()
    return g.principal


def is_admin() -> bool:
    if not admin_token():
        return False
    p = principal()
    return p is not None and p.can(ADMIN)


def read_gated() -> bool:
    """Reads need a credential: a read token or login_for_read is configured, or
    the server can be reached from the network and the operator did not open
    reads explicitly (server.anonymous_reads)."""
    s = _server()
    return bool(s["read_token"] or s["login_for_read"]
                or (listens_beyond_loopback(s) and not s.get("anonymous_reads")))


def client_addr() -> str:
    return request.remote_addr or "unknown"


# --------------------------------------------------------------------------- guessing

def _local_lockout():
    """This worker's own failure counts, used while Redis refuses them (lockout.py)."""
    rt = _rt()
    if getattr(rt, "auth_local_lockout", None) is None:
        rt.auth_local_lockout = LocalLockout()
    return rt.auth_local_lockout


def locked_for(addr: str) -> int:
    """Seconds left of ``addr``'s lockout (0: not locked): in Redis, or in this
    worker's memory when Redis could not count a failure (fails closed)."""
    local = _local_lockout().locked_for(addr)
    r = _redis()
    if r is None:
        return local
    try:
        ttl = r.ttl(K_LOCK.format(addr))
    except redis.RedisError as e:
        _redis_failed(e, "lockout state")
        return local
    return max(int(ttl) if ttl and ttl > 0 else 0, local)


def record_failure(addr: str, kind: str, what: str) -> None:
    """One failed login or wrong token from ``addr``; locks it out at the limit.
    Recorded as an event and counted (appliance_auth_failures_total). When
    Redis refuses the count (full, unreachable), this worker counts it."""
    s = _server()
    r = _redis()
    n, locked = 0, False
    try:
        if r is None:
            raise redis.ConnectionError("recently unreachable")
        pipe = r.pipeline()
        # the window starts at the first failure (SET NX EX; EXPIRE NX needs Redis 7)
        pipe.set(K_FAIL.format(addr), 0, ex=int(s["auth_failure_window_seconds"]), nx=True)
        pipe.incr(K_FAIL.format(addr))
        pipe.hincrby(K_COUNTS, f"failures:{kind}", 1)
        n = int(pipe.execute()[1])
        locked = False
        if n >= int(s["auth_max_failures"]):
            locked = bool(r.set(K_LOCK.format(addr), str(n), nx=True,
                                ex=int(s["auth_lockout_seconds"])))
            if locked:
                r.hincrby(K_COUNTS, "lockouts", 1)
    except redis.RedisError as e:
        if r is not None:
            _redis_failed(e, "failure counting")
        n, locked = _local_lockout().record_failure(
            addr, int(s["auth_max_failures"]), float(s["auth_failure_window_seconds"]),
            float(s["auth_lockout_seconds"]))
    log.warning("auth: %s refused from %s (%d within %d s)%s", what, addr, n,
                s["auth_failure_window_seconds"],
                "; locked out" if locked else "")
    try:
        with _rt().pool.connection(timeout=1) as conn:  # a database outage: no wait
            store.add_event(conn, "warning", "auth",
                            f"{what} refused from {addr} ({n} failure(s) within "
                            f"{s['auth_failure_window_seconds']} s)",
                            {"address": addr, "kind": kind, "failures": n})
            if locked:
                store.add_event(conn, "error", "auth",
                                f"{addr} locked out for {s['auth_lockout_seconds']} s after "
                                f"{n} failed attempts", {"address": addr, "failures": n})
    except Exception as e:  # noqa: BLE001 - the refusal stands without its event
        log.warning("auth: cannot record the failure as an event: %s", e)


def unlock(rt, addr: str) -> dict:
    """End ``addr``'s lockout and its failure count (``appliance unlock``);
    recorded as an event. Returns ``{"address", "was_locked", "failures"}``."""
    r = rt.redis
    pipe = r.pipeline()
    pipe.ttl(K_LOCK.format(addr))
    pipe.get(K_FAIL.format(addr))
    pipe.delete(K_LOCK.format(addr), K_FAIL.format(addr))
    ttl, fails, _ = pipe.execute()
    out = {"address": addr, "was_locked": bool(ttl and ttl > 0),
           "failures": int(fails) if fails else 0}
    with rt.conn() as conn:
        store.add_event(conn, "info", "auth",
                        f"{addr} unlocked by the operator ("
                        + ("it was locked out, " if out["was_locked"] else "not locked out, ")
                        + f"{out['failures']} failure(s) cleared)", out)
    return out


def count_refusal(kind: str) -> None:
    r = _redis()
    try:
        if r is not None:
            r.hincrby(K_COUNTS, f"locked_refusals:{kind}", 1)
    except redis.RedisError as e:
        _redis_failed(e, "refusal counting")


def _locked_response(seconds: int):
    resp = api_error(429, "locked_out", f"too many failed attempts from this address; try "
                                        f"again in {seconds} s")
    resp.headers["Retry-After"] = str(seconds)
    return resp


# --------------------------------------------------------------------------- API keys

def _count_key_use(p: Principal):
    """Counts a request made with a per-client key; a 429 past its rate."""
    r = _redis()
    now = time.time()
    if r is None:
        return None
    try:
        over = False
        if p.requests_per_minute:
            k = K_KEYRATE.format(p.name, int(now // 60))
            pipe = r.pipeline()
            pipe.incr(k)
            pipe.expire(k, 120)
            over = int(pipe.execute()[0]) > p.requests_per_minute
        pipe = r.pipeline()
        pipe.hincrby(K_KEYSTATS, f"{p.name}:{'rate_limited' if over else 'requests'}", 1)
        pipe.hset(K_KEYSTATS, f"{p.name}:last_used", f"{now:.3f}")
        pipe.execute()
    except redis.RedisError as e:
        _redis_failed(e, f"api key {p.name} counting")
        return None
    if over:
        wait = max(1, int(60 - now % 60))
        resp = api_error(429, "rate_limited", f"API key {p.name} is limited to "
                                              f"{p.requests_per_minute} requests per minute")
        resp.headers["Retry-After"] = str(wait)
        return resp
    return None


def key_stats(rt) -> dict[str, dict]:
    """name -> {requests, rate_limited, last_used (epoch s or None)} for every
    configured key (a removed key's counts are not shown)."""
    names = [k["name"] for k in rt.config["server"].get("api_keys") or ()]
    try:
        raw = rt.redis.hgetall(K_KEYSTATS) if names else {}
    except redis.RedisError:
        raw = {}
    vals = {k.decode(): v.decode() for k, v in raw.items()}
    out = {}
    for n in names:
        lu = vals.get(f"{n}:last_used")
        out[n] = {"requests": int(vals.get(f"{n}:requests", 0)),
                  "rate_limited": int(vals.get(f"{n}:rate_limited", 0)),
                  "last_used": float(lu) if lu else None}
    return out


def auth_counts(rt) -> dict[str, int]:
    try:
        raw = rt.redis.hgetall(K_COUNTS)
    except redis.RedisError:
        return {}
    return {k.decode(): int(v) for k, v in raw.items()}


# --------------------------------------------------------------------------- the gate

def _wants_json() -> bool:
    p = request.path
    return (p.startswith("/api/") or p == "/metrics"
            or request.accept_mimetypes.best == "application/json")


def _unauthorized(scope: str):
    if _wants_json():
        what = ("/metrics needs 'Authorization: Bearer <server.metrics_token>' (or a read "
                "credential)" if scope == METRICS else
                "reading needs 'Authorization: Bearer <server.read_token>' or an API key "
                "with the read scope (the server can be reached from the network, or "
                "server.read_token or server.login_for_read is set; server.anonymous_reads "
                "opens reads)")
        resp = api_error(401, "unauthorized", what)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="appliance"'
        return resp
    target = url_for("console.auth.login", next=request.full_path.rstrip("?"))
    if request.headers.get("HX-Request", "").lower() == "true":
        return Response(status=204, headers={"HX-Redirect": target})
    return redirect(target)


def _admin_view() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, "requires_admin", False))


def _bad_token():
    resp = api_error(401, "unauthorized", "the Bearer token is not valid (unknown, or a "
                                          "revoked API key)")
    resp.headers["WWW-Authenticate"] = 'Bearer realm="appliance", error="invalid_token"'
    return resp


def gate():
    """The app-wide check of every request (see the module's docstring)."""
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    tok = _token_from_header()
    p = None
    if tok is not None:
        addr = client_addr()
        wait = locked_for(addr)
        if wait:
            count_refusal("api")
            return _locked_response(wait)
        p = identify(tok)
        g.principal = p
        if p is None:
            # unknown or revoked: refused whatever the endpoint, also where reads
            # are open (a revoked key must stop working), and counted
            record_failure(addr, "api", "a wrong Bearer token")
            if not _admin_view():  # an admin endpoint says 401, or 403 while admin is off
                return _bad_token()
        elif p.kind == "api_key":
            refused = _count_key_use(p)
            if refused is not None:
                return refused
    else:
        p = principal()
    s = _server()
    if request.endpoint == "metrics.metrics" or request.path == "/metrics":
        if (s.get("metrics_token") or read_gated()) and not (p and p.can(METRICS)):
            return _unauthorized(METRICS)
        return None
    if _admin_view():
        # require_admin answers: 403 while admin is off (not the read gate's
        # 401, which sent the operator to the read token), 401, or 403
        return None
    if read_gated() and not (p and p.can(READ)):
        return _unauthorized(READ)
    return None


def require_admin(fn):
    @wraps(fn)
    def wrapper(*a, **kw):
        if not admin_token() and not any(ADMIN in (k.get("scopes") or ())
                                         for k in _server().get("api_keys") or ()):
            return api_error(403, "admin_disabled",
                             f"admin endpoints are disabled: server.admin_token is empty; "
                             f"{ENABLE_ADMIN}")
        p = identify(_token_from_header())  # the API takes no cookies: no CSRF to fear
        if p is None:
            return api_error(401, "unauthorized",
                             "this endpoint needs 'Authorization: Bearer <server.admin_token>' "
                             "or an API key with the admin scope")
        if not p.can(ADMIN):
            return api_error(403, "forbidden",
                             f"{p.label} has no admin scope: this endpoint needs "
                             f"server.admin_token or an API key with the admin scope")
        return fn(*a, **kw)
    wrapper.requires_admin = True
    return wrapper


def require_read(fn):
    """Reads are checked by ``gate()``; kept as a marker of read endpoints."""
    return fn
