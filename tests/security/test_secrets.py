"""Finding 3 (secrets never leave through text) and the Redis half of finding 9
(no secrets in clear in Redis)."""
from __future__ import annotations

import io
import logging

import psycopg
import pytest
import redis

from appliance.alerts import notify
from appliance.config.redaction import mask_url, redact
from appliance.jobs import runs
from appliance.runtime.logs import RedactingFilter
from appliance.runtime.runtime import Runtime

from .helpers import ADMIN_TOKEN, READ_TOKEN, app_for, csrf_of, secured

HOOK_PATH = "/services/T0SECRET/B0SECRET/xyzzyHOOKSECRET"
HOOK = "http://127.0.0.1:9" + HOOK_PATH  # the discard port: nothing answers


@pytest.mark.parametrize("url, secret", [
    ("postgresql://app:s3cr%40t@db:5432/market", "s3cr%40t"),
    ("postgresql://app:p@ss@word@db/market", "p@ss@word"),
    ("postgresql://app@db/market?password=hunter22&sslmode=require", "hunter22"),
    ("postgresql://db/market?sslmode=require&password=hunter22", "hunter22"),
    ("redis://:r3dis-pw@cache:6379/0", "r3dis-pw"),
])
def test_database_and_redis_urls_are_masked(url, secret):
    masked = mask_url(url)
    assert secret not in masked and "********" in masked
    assert "db" in masked or "cache" in masked


def test_webhook_url_is_masked_in_the_api_and_the_console(config_factory):
    app, rt = app_for(config_factory(server=secured(), alerts={"webhook": {"url": HOOK}}))
    try:
        c = app.test_client()
        body = c.get("/api/v1/config").get_data(as_text=True)
        assert "xyzzyHOOKSECRET" not in body and "T0SECRET" not in body
        assert c.get("/api/v1/config").get_json()["config"]["alerts"]["webhook"]["url"] == \
            "http://127.0.0.1:9/********"
        page = c.get("/config").get_data(as_text=True)
        assert "xyzzyHOOKSECRET" not in page and ADMIN_TOKEN not in page
    finally:
        rt.close()


def test_a_failed_notification_writes_no_url_into_the_events(config_factory, database_url):
    cfg = config_factory(server=secured(), alerts={"webhook": {"url": HOOK}})
    rt = Runtime.from_path(cfg)
    try:
        rt.open()
        notify.send(rt, "open", {"key": "k", "severity": "warning", "status": "open",
                                    "message": "m", "details": {}})
        with psycopg.connect(database_url) as conn:
            rows = [r[0] for r in conn.execute("SELECT message || details::text FROM events")]
        assert any("webhook notification failed" in r for r in rows), rows
        assert not any("HOOKSECRET" in r or "T0SECRET" in r for r in rows), rows
    finally:
        rt.close()


def test_a_refused_reload_never_quotes_a_secret(config_factory, database_url):
    app, rt = app_for(config_factory(server=secured()))
    try:
        config_factory(server=secured(read_token=987654321987654321))  # a number, not a string
        c = app.test_client()
        r = c.post("/api/v1/config/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 422
        body = r.get_data(as_text=True)
        assert "$.server.read_token" in body and "987654321987654321" not in body
        with psycopg.connect(database_url) as conn:
            stored = " ".join(str(x) for row in conn.execute(
                "SELECT error FROM config_reloads UNION ALL SELECT message || details::text "
                "FROM events") for x in row)
        assert "987654321987654321" not in stored and "read_token" in stored
        tok = csrf_of(c.get("/login").get_data(as_text=True))
        c.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": tok})
        assert "987654321987654321" not in c.get("/config").get_data(as_text=True)
    finally:
        rt.close()


def test_job_errors_events_and_logs_are_redacted(config_factory, database_url):
    cfg = config_factory(server=secured(read_token=READ_TOKEN),
                         alerts={"webhook": {"url": HOOK}})
    rt = Runtime.from_path(cfg)
    try:
        rt.open()

        def leaky(rt_, run_id, report):
            raise RuntimeError(f"could not reach {HOOK} with token {READ_TOKEN} "
                               f"(postgresql://u:dbpw-123456@h/db)")

        with pytest.raises(RuntimeError):
            runs.execute(rt, "spot_check", runs.manual_slot(), leaky, params={})
        with psycopg.connect(database_url) as conn:
            text = " ".join(str(x) for row in conn.execute(
                "SELECT coalesce(error, '') || result::text FROM job_runs "
                "UNION ALL SELECT message || details::text FROM events") for x in row)
        assert "could not reach" in text
        for secret in (READ_TOKEN, "HOOKSECRET", "dbpw-123456"):
            assert secret not in text, secret
        out = io.StringIO()
        h = logging.StreamHandler(out)
        h.addFilter(RedactingFilter())
        logger = logging.getLogger("appliance.test-redaction")
        logger.addHandler(h)
        try:
            logger.error("token %s in %s", ADMIN_TOKEN, HOOK)
        finally:
            logger.removeHandler(h)
        assert ADMIN_TOKEN not in out.getvalue() and "HOOKSECRET" not in out.getvalue()
        assert redact(f"Authorization: Bearer {READ_TOKEN}") == "Authorization: Bearer ********"
    finally:
        rt.close()


def test_the_running_config_is_not_in_clear_in_redis(config_factory, redis_url):
    cfg = config_factory(server=secured(read_token=READ_TOKEN))
    rt = Runtime.from_path(cfg)
    try:
        rt.publish_config(rt.config)
        r = redis.Redis.from_url(redis_url)
        dump = b" ".join((r.get(k) or b"") for k in r.keys("appliance:config:*")
                         if r.type(k) == b"string")
        assert ADMIN_TOKEN.encode() not in dump and READ_TOKEN.encode() not in dump
        assert SECRET_KEY_BYTES not in dump
        # another process (same data_dir) still adopts it
        other = Runtime.from_path(cfg)
        try:
            assert other.config_version() >= 1
            assert other.config["server"]["read_token"] == READ_TOKEN
        finally:
            other.close()
    finally:
        rt.close()


SECRET_KEY_BYTES = b"secret-key-sss"
