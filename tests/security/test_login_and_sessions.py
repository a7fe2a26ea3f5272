"""Findings 4, 5 and 6: no open redirect after the login; sessions are
server-side, end at logout and after idle and absolute timeouts, carry no
unkeyed token fingerprint; guessing is locked out per address, whichever web
worker answers, and recorded."""
from __future__ import annotations

import hashlib
import json

import psycopg
import pytest
import redis
import requests
from click.testing import CliRunner

from appliance.cli.main import main
from appliance.web.sessions import PREFIX

from .helpers import ADMIN_TOKEN, READ_TOKEN, app_for, csrf_of, login, secured

# --------------------------------------------------------------------------- 4: open redirect

@pytest.mark.parametrize("target", ["/\t/evil.example", "/\n/evil.example", "//evil.example",
                                    "/\\evil.example", "https://evil.example/",
                                    "/ /evil.example", "/\r\n/evil.example", "\t//evil.example"])
def test_login_never_redirects_to_another_host(config_factory, target):
    app, rt = app_for(config_factory(server=secured()))
    try:
        c = app.test_client()
        tok = csrf_of(c.get("/login").get_data(as_text=True))
        r = c.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": tok, "next": target})
        assert r.status_code == 303
        loc = r.headers["Location"]
        assert loc == "/dashboard", loc
        page = c.get("/login", query_string={"next": target}).get_data(as_text=True)
        assert 'name="next" value="/dashboard"' in page
    finally:
        rt.close()


def test_a_local_next_is_kept(config_factory):
    app, rt = app_for(config_factory(server=secured()))
    try:
        c = app.test_client()
        tok = csrf_of(c.get("/login").get_data(as_text=True))
        r = c.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": tok,
                                   "next": "/symbols?q=AA"})
        assert r.headers["Location"] == "/symbols?q=AA"
    finally:
        rt.close()


# --------------------------------------------------------------------------- 5: sessions

def _backups_queued(database_url) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM job_runs WHERE job = 'backup'").fetchone()[0]


def test_a_cookie_saved_before_logout_is_refused_after_it(served, database_url):
    base, _cfg = served()
    http = requests.Session()
    assert login(http, base).status_code == 303
    saved = dict(http.cookies)
    csrf = csrf_of(http.get(base + "/backups").text)
    # the saved cookie works while logged in
    r = requests.post(base + "/backups", cookies=saved, data={"csrf_token": csrf},
                      allow_redirects=False, timeout=10)
    assert r.status_code == 303 and _backups_queued(database_url) == 1
    r = http.post(base + "/logout", data={"csrf_token": csrf}, allow_redirects=False)
    assert r.status_code == 303
    # replayed after the logout (whichever worker answers): refused, nothing queued
    for _ in range(4):
        r = requests.post(base + "/backups", cookies=saved, data={"csrf_token": csrf},
                          allow_redirects=False, timeout=10)
        assert r.status_code == 403, r.status_code
    assert _backups_queued(database_url) == 1


def test_sessions_live_in_redis_shared_by_every_worker(config_factory, redis_url):
    cfg = config_factory(server=secured())
    (a, rt_a), (b, rt_b) = app_for(cfg), app_for(cfg)
    try:
        ca, cb = a.test_client(), b.test_client()
        tok = csrf_of(ca.get("/login").get_data(as_text=True))
        assert ca.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": tok}).status_code == 303
        cookie = ca.get_cookie("session")
        cb.set_cookie("session", cookie.value)
        assert "Log out" in cb.get("/dashboard").get_data(as_text=True)  # worker B knows it
        csrf = csrf_of(cb.get("/backups").get_data(as_text=True))
        assert cb.post("/logout", data={"csrf_token": csrf}).status_code == 303
        assert "Log out" not in ca.get("/dashboard").get_data(as_text=True)  # A too
    finally:
        rt_a.close()
        rt_b.close()


def test_the_cookie_holds_no_token_fingerprint_and_redis_no_usable_id(config_factory, redis_url):
    app, rt = app_for(config_factory(server=secured()))
    try:
        c = app.test_client()
        tok = csrf_of(c.get("/login").get_data(as_text=True))
        c.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": tok})
        value = c.get_cookie("session").value
        unkeyed = hashlib.sha256(("session:" + ADMIN_TOKEN).encode()).hexdigest()
        assert unkeyed[:16] not in value and "." not in value  # a bare random id
        r = redis.Redis.from_url(redis_url)
        keys = [k.decode() for k in r.keys(PREFIX + "*")]
        assert len(keys) == 1 and value not in keys[0]  # stored under a keyed digest
        data = json.loads(r.get(keys[0]))
        assert unkeyed[:16] not in json.dumps(data) and ADMIN_TOKEN not in json.dumps(data)
    finally:
        rt.close()


def test_idle_and_absolute_timeouts(config_factory, redis_url):
    app, rt = app_for(config_factory(server=secured(session_idle_minutes=7,
                                                    session_max_hours=2)))
    try:
        c = app.test_client()
        tok = csrf_of(c.get("/login").get_data(as_text=True))
        c.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": tok})
        r = redis.Redis.from_url(redis_url)
        (key,) = r.keys(PREFIX + "*")
        assert 0 < r.ttl(key) <= 7 * 60  # the idle timeout is the key's expiry
        r.expire(key, 5)
        assert "Log out" in c.get("/dashboard").get_data(as_text=True)
        assert r.ttl(key) > 5  # a request renews it
        data = json.loads(r.get(key))
        data["_created"] -= 2 * 3600 + 1  # logged in more than session_max_hours ago
        r.set(key, json.dumps(data), ex=60)
        assert "Log out" not in c.get("/dashboard").get_data(as_text=True)
        assert not r.exists(key)
    finally:
        rt.close()


def test_a_read_token_login_reads_but_cannot_act(config_factory, database_url):
    app, rt = app_for(config_factory(server=secured(read_token=READ_TOKEN)))
    try:
        c = app.test_client()
        assert c.get("/symbols").status_code == 302
        tok = csrf_of(c.get("/login").get_data(as_text=True))
        assert c.post("/login", data={"token": READ_TOKEN, "csrf_token": tok}).status_code == 303
        assert c.get("/symbols").status_code == 200
        csrf = csrf_of(c.get("/login").get_data(as_text=True))
        assert c.post("/backups", data={"csrf_token": csrf}).status_code == 403
        assert _backups_queued(database_url) == 0
    finally:
        rt.close()


# --------------------------------------------------------------------------- 6: guessing

def _events(database_url, kind="auth") -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [r[0] for r in conn.execute("SELECT message FROM events WHERE kind = %s", (kind,))]


def test_the_21st_wrong_login_within_a_minute_is_locked_out_whichever_worker(served,
                                                                             database_url):
    base, _cfg = served()
    for i in range(20):
        http = requests.Session()  # a new connection each time: either worker may answer
        tok = csrf_of(http.get(base + "/login").text)
        r = http.post(base + "/login", data={"token": f"wrong-{i}", "csrf_token": tok},
                      allow_redirects=False)
        assert r.status_code == 403, (i, r.status_code)
    http = requests.Session()
    # the 21st, even with the right token: locked out
    r = login(http, base)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    events = _events(database_url)
    assert sum("console login refused" in e for e in events) == 20
    assert any("locked out" in e for e in events)
    metrics = requests.get(base + "/metrics", timeout=10).text
    assert 'appliance_auth_failures_total{kind="login"} 20.0' in metrics
    assert "appliance_auth_lockouts_total 1.0" in metrics


def test_wrong_bearer_tokens_are_limited_recorded_and_counted(config_factory, database_url):
    cfg = config_factory(server=secured(read_token=READ_TOKEN))
    (a, rt_a), (b, rt_b) = app_for(cfg), app_for(cfg)
    try:
        clients = [a.test_client(), b.test_client()]
        for i in range(20):
            r = clients[i % 2].get("/api/v1/symbols", headers={"Authorization": f"Bearer x{i}"})
            assert r.status_code == 401
        r = clients[0].get("/api/v1/symbols", headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert r.status_code == 429 and r.get_json()["error"]["code"] == "locked_out"
        assert sum("wrong Bearer token refused" in e for e in _events(database_url)) == 20
        m = clients[1].get("/metrics", headers={"Authorization": "Bearer x"})
        assert m.status_code == 429  # still locked, from this address
    finally:
        rt_a.close()
        rt_b.close()


def test_check_config_refuses_short_tokens_and_names_the_key(config_factory):
    cfg = config_factory(server={"admin_token": "short-admin-token", "read_token": "x" * 30,
                                 "metrics_token": "tiny"})
    res = CliRunner().invoke(main, ["check-config", str(cfg)])
    assert res.exit_code == 1
    assert "$.server.admin_token" in res.output and "$.server.metrics_token" in res.output
    assert "$.server.read_token" not in res.output
    assert "short-admin-token" not in res.output and "tiny" not in res.output
    ok = config_factory(server=secured(read_token=READ_TOKEN))
    assert CliRunner().invoke(main, ["check-config", str(ok)]).exit_code == 0


# --------------------------------------------------------------------------- 10: cookies

def test_secure_cookies_mark_the_cookie_secure_and_send_hsts_over_tls(config_factory):
    app, rt = app_for(config_factory(server=secured(secure_cookies=True,
                                                    trusted_proxy_hops=1)))
    try:
        c = app.test_client()
        https = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
        r = c.get("/login", headers=https)
        assert "max-age=" in r.headers.get("Strict-Transport-Security", "")
        cookie = r.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Strict-Transport-Security" not in c.get("/login").headers  # plain HTTP
    finally:
        rt.close()
    app, rt = app_for(config_factory(server=secured()))
    try:
        r = app.test_client().get("/login")
        assert "Secure" not in r.headers["Set-Cookie"]
        assert "Strict-Transport-Security" not in r.headers
    finally:
        rt.close()


def test_behind_a_proxy_the_lockout_is_per_client_not_per_proxy(config_factory):
    app, rt = app_for(config_factory(server=secured(trusted_proxy_hops=1,
                                                    auth_max_failures=3)))
    try:
        c = app.test_client()
        bad = {"Authorization": "Bearer wrong-token-wrong-token"}
        for _ in range(3):
            c.get("/api/v1/symbols", headers={**bad, "X-Forwarded-For": "203.0.113.7"})
        r = c.get("/api/v1/symbols", headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                              "X-Forwarded-For": "203.0.113.7"})
        assert r.status_code == 429
        r = c.get("/api/v1/symbols", headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                              "X-Forwarded-For": "198.51.100.9"})
        assert r.status_code == 200
    finally:
        rt.close()


def test_an_unreachable_redis_costs_logins_not_service(config_factory):
    """Sessions and limits live in Redis; without it reads still answer."""
    app, rt = app_for(config_factory(server=secured(read_token=READ_TOKEN)))
    try:
        c = app.test_client()
        rt._redis = redis.Redis(unix_socket_path="/nonexistent/redis.sock",
                                socket_connect_timeout=0.2, socket_timeout=0.2)
        h = {"Authorization": f"Bearer {READ_TOKEN}"}
        assert c.get("/api/v1/symbols", headers=h).status_code == 200
        assert c.get("/api/v1/symbols", headers={"Authorization": "Bearer wrong-wrong"}) \
            .status_code == 401
        assert c.get("/symbols").status_code == 302  # no session store: not logged in
    finally:
        rt.close()


def test_a_reload_that_lowers_the_idle_limit_ends_the_sessions_idle_for_longer(config_factory,
                                                                               redis_url):
    from appliance.jobs import reload as reload_mod
    app, rt = app_for(config_factory(server=secured(session_idle_minutes=60)))
    try:
        r = redis.Redis.from_url(redis_url)
        clients, keys = [], []
        for _ in range(2):
            c = app.test_client()
            before = set(r.keys(PREFIX + "*"))
            tok = csrf_of(c.get("/login").get_data(as_text=True))
            c.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": tok})
            (key,) = set(r.keys(PREFIX + "*")) - before
            clients.append(c)
            keys.append(key)
        idle, busy = clients
        r.expire(keys[0], 3600 - 120)  # last request two minutes ago
        config_factory(server=secured(session_idle_minutes=1))
        assert reload_mod.reload_config(rt, source="cli", actor="test")["ok"]
        assert "Log out" not in idle.get("/dashboard").get_data(as_text=True)
        assert "Log out" in busy.get("/dashboard").get_data(as_text=True)
        assert 0 < r.ttl(keys[1]) <= 60  # renewed under the new limit
        assert json.loads(r.get(keys[1]))["_idle"] == 60
    finally:
        rt.close()
