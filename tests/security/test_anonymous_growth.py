"""No anonymous way to grow memory or disk (issue 24): metrics label values
come from closed sets, an anonymous visitor stores no session, /health probes
once per interval."""
from __future__ import annotations

import random
import socket
import string
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from .helpers import ADMIN_TOKEN, READ_TOKEN, app_for, csrf_of, secured

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HTTP = "appliance_http_request_duration_seconds"


def _raw(base: str, method: str, path: str = "/health") -> int:
    """One request with any method, as a client may send it; the status code."""
    u = urlsplit(base)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                  f"Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def _http_series(base: str) -> set[tuple]:
    text = requests.get(base + "/metrics", headers=BEARER, timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items())))
            for f in text_string_to_metric_families(text) if f.name == HTTP
            for s in f.samples}


def _method() -> str:
    return "X" + "".join(random.choices(string.ascii_uppercase + string.digits, k=10))


def test_random_methods_do_not_grow_the_metrics(served):
    base, _ = served()
    for _ in range(10):  # every worker has seen an unknown method and a 404
        _raw(base, _method())
        _raw(base, "GET", "/no-such-page-" + _method())
        _http_series(base)  # and a scrape
    before = _http_series(base)
    methods = [_method() for _ in range(200)]
    codes = {_raw(base, m) for m in methods}
    assert codes <= {405, 400, 501}, codes
    for i in range(20):
        _raw(base, "GET", f"/no-such-page-{i}")
    after = _http_series(base)
    assert after == before, sorted(after - before)[:10]
    labels = {v for _, lab in after for k, v in lab if k != "le"}
    assert not labels & set(methods)
    assert {v for _, lab in after for k, v in lab if k == "method"} <= {
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert {v for _, lab in after for k, v in lab if k == "status"} <= {
        "1xx", "2xx", "3xx", "4xx", "5xx"}


# --------------------------------------------------------------------------- sessions

def _session_keys(redis_url) -> int:
    import redis
    r = redis.Redis.from_url(redis_url)
    try:
        return len(list(r.scan_iter("appliance:session:*")))
    finally:
        r.close()


def test_anonymous_visits_store_no_session_and_the_login_still_works(config_factory, redis_url):
    app, rt = app_for(config_factory(server=secured()))
    try:
        for _ in range(30):  # each a new visitor, as a flood would be
            c = app.test_client()
            assert c.get("/login").status_code == 200
            assert c.get("/dashboard").status_code == 200
        assert _session_keys(redis_url) == 0
        c = app.test_client()
        tok = csrf_of(c.get("/login").get_data(as_text=True))
        assert _session_keys(redis_url) == 0
        r = c.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": tok})
        assert r.status_code == 303, r.get_data(as_text=True)
        assert _session_keys(redis_url) == 1
        # logged in: an action with the session's CSRF token works
        csrf = csrf_of(c.get("/backups").get_data(as_text=True))
        assert c.post("/logout", data={"csrf_token": csrf}).status_code == 303
        assert _session_keys(redis_url) == 0
    finally:
        rt.close()


def test_the_login_forms_token_works_only_with_its_own_cookie(config_factory):
    app, rt = app_for(config_factory(server=secured()))
    try:
        a, b = app.test_client(), app.test_client()
        tok = csrf_of(a.get("/login").get_data(as_text=True))
        b.get("/login")  # b has a cookie of its own
        r = b.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": tok})
        assert r.status_code == 403 and "CSRF" in r.get_data(as_text=True)
        fresh = app.test_client()  # and no cookie at all
        r = fresh.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": tok})
        assert r.status_code == 403
        r = a.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": tok + "x"})
        assert r.status_code == 403
    finally:
        rt.close()


# --------------------------------------------------------------------------- lockout

@pytest.fixture
def full_redis(tmp_path):
    """A Redis of its own (the shared one must not fill up), full: every write
    is refused with OOM, as under Ansible's maxmemory + noeviction."""
    import redis

    from appliance.runtime import services
    d = tmp_path / "full-redis"
    url = services.embedded_redis(d)
    r = redis.Redis.from_url(url)

    def fill():
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", str(used + 200_000))
        try:
            for i in range(10_000):
                r.set(f"filler:{i}", "x" * 1000)
        except redis.exceptions.OutOfMemoryError:
            return
        raise AssertionError("Redis did not fill up")

    yield url, fill
    r.close()
    services.stop_embedded_redis(d)


@pytest.mark.parametrize("kind", ["bearer", "login"])
def test_the_lockout_holds_when_redis_refuses_writes(config_factory, full_redis, kind):
    url, fill = full_redis
    app, rt = app_for(config_factory(redis={"url": url},
                                     server=secured(auth_max_failures=3, read_token=READ_TOKEN)))
    try:
        c = app.test_client()
        fill()

        def attempt(token):
            if kind == "bearer":
                return c.get("/api/v1/symbols", headers={"Authorization": f"Bearer {token}"})
            tok = csrf_of(c.get("/login").get_data(as_text=True))
            return c.post("/login", data={"token": token, "csrf_token": tok})

        for _ in range(3):
            assert attempt("wrong-" + "w" * 40).status_code in (401, 403)
        r = attempt(ADMIN_TOKEN)  # the right token, from a locked-out address
        assert r.status_code == 429, r.get_data(as_text=True)
        assert int(r.headers["Retry-After"]) > 0
    finally:
        rt.close()


# --------------------------------------------------------------------------- /health

def test_a_flood_of_health_checks_is_answered_from_one_probe_per_second(served):
    """32 clients at once, as in the report: every answer is the last probe's
    (200, never 'earlier probes are still hanging'), and the probes run at most
    once a second in each of the two workers."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    base, _ = served()

    def client(_):
        out = []
        with requests.Session() as http:
            for _ in range(20):
                r = http.get(base + "/health", timeout=30)
                out.append((r.status_code, r.json()))
        return out

    t0 = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        answers = [a for batch in pool.map(client, range(32)) for a in batch]
    elapsed = time.monotonic() - t0
    assert len(answers) == 640
    bad = [(code, body.get("reasons")) for code, body in answers if code != 200]
    assert not bad, bad[:5]
    probes = {body["timestamp"] for _, body in answers}
    assert len(probes) <= 2 * (elapsed + 1), (len(probes), elapsed)
