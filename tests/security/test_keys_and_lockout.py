"""Keys and lockout: a revoked or unknown key is refused even while reads are
open; a correct credential is never counted as a failure; a read-scoped key
on an admin endpoint gets 403; ``appliance unlock ADDRESS`` ends a lockout and
its failure count; the events name the address."""
from __future__ import annotations

import subprocess
import sys

import psycopg

from .helpers import ADMIN_TOKEN, app_for, secured
from .test_api_keys import new_key


def _h(k: str) -> dict:
    return {"Authorization": f"Bearer {k}"}


def test_a_revoked_key_is_refused_while_reads_are_open(config_factory):
    key, entry = new_key("revoked-notebook")
    app, rt = app_for(config_factory(server=secured()))  # reads open, the key not listed
    try:
        c = app.test_client()
        assert c.get("/api/v1/symbols").status_code == 200  # open reads, no credential
        r = c.get("/api/v1/symbols", headers=_h(key))
        assert r.status_code == 401, r.status_code
        assert r.get_json()["error"]["code"] == "unauthorized"
    finally:
        rt.close()


def test_a_read_key_on_an_admin_endpoint_is_forbidden_not_unauthorized(config_factory):
    key, entry = new_key("reader")
    app, rt = app_for(config_factory(server=secured(api_keys=[entry])))
    try:
        r = app.test_client().post("/api/v1/jobs/disk_check/run", headers=_h(key))
        assert r.status_code == 403, (r.status_code, r.get_data(as_text=True))
        assert r.get_json()["error"]["code"] == "forbidden"
    finally:
        rt.close()


def test_correct_credentials_never_count_and_unlock_clears_the_lock_and_the_count(
        config_factory, database_url):
    key, entry = new_key("good-notebook")
    cfg = config_factory(server=secured(api_keys=[entry], auth_max_failures=3))
    app, rt = app_for(cfg)
    try:
        c = app.test_client()
        for _ in range(10):
            assert c.get("/api/v1/symbols", headers=_h(key)).status_code == 200
            assert c.get("/api/v1/symbols", headers=_h(ADMIN_TOKEN)).status_code == 200
        for i in range(3):
            assert c.get("/api/v1/symbols", headers=_h(f"wrong-{i}")).status_code == 401
        assert c.get("/api/v1/symbols", headers=_h(ADMIN_TOKEN)).status_code == 429
        # a process of its own, as the operator runs it
        res = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(cfg),
                              "unlock", "127.0.0.1"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "127.0.0.1: lockout ended; 3 failed attempt(s) cleared" in res.stdout
        # a mistyped address is said to be one, not "was not locked out"
        res = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(cfg),
                              "unlock", "127.0.0.l"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "'127.0.0.l' is not an IP address" in res.stderr
        assert c.get("/api/v1/symbols", headers=_h(ADMIN_TOKEN)).status_code == 200
        # the failure count went with the lock: one more wrong token does not re-lock
        assert c.get("/api/v1/symbols", headers=_h("wrong-again")).status_code == 401
        assert c.get("/api/v1/symbols", headers=_h(key)).status_code == 200
        with psycopg.connect(database_url) as conn:
            msgs = [r[0] for r in conn.execute(
                "SELECT message FROM events WHERE kind = 'auth' ORDER BY id")]
        assert any("locked out" in m and "127.0.0.1" in m for m in msgs), msgs
        assert any("unlocked" in m and "127.0.0.1" in m for m in msgs), msgs
    finally:
        rt.close()


def test_a_console_login_while_admin_is_off_says_so(config_factory):
    """server.admin_token empty (its variable misspelt in appliance.env) and a
    read token set: the former admin token got only "Wrong token." while the
    API said admin_disabled and how to enable it."""
    from .helpers import csrf_of
    cfg = config_factory(server=secured(admin_token="", read_token="r" * 32))
    app, rt = app_for(cfg)
    try:
        c = app.test_client()
        tok = csrf_of(c.get("/login").get_data(as_text=True))
        r = c.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": tok})
        assert r.status_code == 403
        page = r.get_data(as_text=True)
        assert "Admin logins are off (server.admin_token is empty)" in page, page
        assert "APPLIANCE_ADMIN_TOKEN" in page
        r = c.post("/login", data={"token": "r" * 32, "csrf_token": tok})
        assert r.status_code == 303  # the read token still logs in
    finally:
        rt.close()
