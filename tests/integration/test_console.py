"""The HTMX console through Flask's test client, on real PostgreSQL and Redis:
pages and partials, escaping, login, CSRF, and what the panels show."""
from __future__ import annotations

import json
import re
import time

import pytest

from appliance import store

HX = {"HX-Request": "true"}


def csrf_of(client) -> str:
    """The session's CSRF token, as the page renders it."""
    html = client.get("/login").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, token="test-admin-token-0123456789") -> str:
    tok = csrf_of(client)
    r = client.post("/login", data={"token": token, "csrf_token": tok, "next": "/dashboard"})
    assert r.status_code == 303, r.get_data(as_text=True)
    return csrf_of(client)  # a login starts a new session with a new token


@pytest.fixture
def backfilled(runtime, config_factory):
    """AAPL (bad ticks), MSFT and NVDA (a 10-for-1 split on 2024-06-10), from the demo provider."""
    from appliance.ingest.backfill import run_backfill
    from appliance.jobs import runs
    from appliance.jobs.reload import reload_config
    config_factory(symbols=["AAPL", "MSFT", "NVDA"])
    assert reload_config(runtime, source="cli")["ok"]
    res = runs.execute(runtime, "backfill", runs.manual_slot(), run_backfill, params={})
    assert res["status"] == "ok", res  # the demo provider is deterministic: nothing fails
    return runtime


# --------------------------------------------------------------------------- pages

@pytest.mark.parametrize("path", ["/", "/dashboard", "/symbols", "/jobs", "/backups", "/config",
                                  "/gaps", "/events", "/login"])
def test_every_page_renders_as_a_full_html_page(client, path):
    r = client.get(path)
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert html.startswith("<!doctype html>")
    assert '<meta name="viewport"' in html
    assert "/static/vendor/htmx/htmx.min.js" in html
    assert not re.search(r'(src|href|action)="(https?:)?//', html)  # nothing loaded off-site


def test_dashboard_shows_cards_badge_and_demo_banner(client, backfilled):
    html = client.get("/dashboard").get_data(as_text=True)
    for card in ("card-symbols", "card-records", "card-validation", "card-latest", "card-gaps",
                 "card-scheduler", "card-backup", "card-restore"):
        assert f'id="{card}"' in html
    assert "Demo data" in html
    # no scheduler runs in this test: the badge says so, in red, with text
    assert 'class="badge big unhealthy"' in html
    assert "scheduler not running" in html
    with backfilled.conn() as conn:
        total = store.summary(conn)["total_records"]
    assert f"{total:,}" in html
    assert "Pending (they open" not in html
    # a rule firing but waiting for its `for` duration is shown as such
    with backfilled.conn() as conn:
        conn.execute("""INSERT INTO alerts (key, severity, status, message, details)
                        VALUES ('worker_down', 'critical', 'pending', 'no worker', '{}')""")
    html = client.get("/dashboard").get_data(as_text=True)
    assert re.search(r"Pending \(they open .*<strong>worker_down</strong> since", html), html


def test_dashboard_polls_at_the_configured_interval_and_a_reload_changes_it(
        client, runtime, config_factory):
    html = client.get("/dashboard").get_data(as_text=True)
    assert 'hx-trigger="every 10s"' in html and "Panels refresh every 10 s" in html
    poll = re.search(r'id="dash-poll"[^>]*hx-get="([^"]+)"', html).group(1).replace("&amp;", "&")
    config_factory(dashboard={"refresh_seconds": 3})
    from appliance.jobs.reload import reload_config
    assert reload_config(runtime, source="cli")["ok"]
    # an open dashboard's next poll switches its poller and its header
    upd = client.get(poll, headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'hx-trigger="every 3s"' in upd
    assert re.search(r'id="dash-refresh" hx-swap-oob="true">Panels refresh every 3 s', upd), upd
    html = client.get("/dashboard").get_data(as_text=True)
    assert 'hx-trigger="every 3s"' in html and "Panels refresh every 3 s" in html


def test_jobs_page_shows_each_schedules_next_run_and_a_reload_moves_it(client, runtime,
                                                                       config_factory):
    """OPERATIONS.md, "Change the backfill schedule": the console shows the
    next run; to anyone who may read the console, the Run now buttons to admins."""
    import datetime as dt

    from appliance.jobs.reload import reload_config

    def next_runs() -> dict[str, str]:
        html = client.get("/jobs").get_data(as_text=True)
        return dict(re.findall(r'data-next-run="(\w+)">([^<]+)<', html))

    config_factory(schedules={"backfill": "30 3 * * *", "backup": "15 4 * * 0"})
    assert reload_config(runtime, source="cli")["ok"]
    today = dt.datetime.now(dt.UTC)
    shown = next_runs()
    assert set(shown) == set(runtime.config["schedules"])
    for job, cron_time in (("backfill", dt.time(3, 30)), ("backup", dt.time(4, 15))):
        when = dt.datetime.strptime(shown[job], "%Y-%m-%d %H:%M").replace(tzinfo=dt.UTC)
        assert when.time() == cron_time and today < when <= today + dt.timedelta(days=7), shown
    assert dt.datetime.strptime(shown["backup"], "%Y-%m-%d %H:%M").weekday() == 6  # Sunday
    assert "data-job=" not in client.get("/jobs").get_data(as_text=True)  # no login

    config_factory(schedules={"backfill": "45 22 * * *", "spot_check": False})
    assert reload_config(runtime, source="cli")["ok"]
    assert next_runs()["backfill"].endswith(" 22:45")
    assert next_runs()["spot_check"] == "only when asked"
    login(client)
    assert 'data-job="backfill"' in client.get("/jobs").get_data(as_text=True)


def test_dashboard_update_sends_nothing_when_nothing_changed_and_only_changed_panels_otherwise(
        client, runtime):
    html = client.get("/dashboard").get_data(as_text=True)
    poll = re.search(r'hx-get="(/dashboard/update[^"]+)"', html).group(1).replace("&amp;", "&")
    r = client.get(poll, headers=HX)
    assert r.status_code == 204
    with runtime.conn() as conn:
        conn.execute("""INSERT INTO symbol_stats (symbol, first_session, last_session, records,
                        validated, quality_score, completeness)
                        VALUES ('ZZZ', '2024-01-02', '2024-01-05', 4, 4, 1.0, 1.0)""")
    r = client.get(poll, headers=HX)
    assert r.status_code == 200
    body = r.get_data(as_text=True)
    assert 'id="card-records" hx-swap-oob="true"' in body
    assert 'id="card-symbols" hx-swap-oob="true"' in body
    assert 'id="card-scheduler"' not in body          # unchanged panels are not sent
    assert 'id="dash-poll" hidden hx-swap-oob="true"' in body
    new_poll = re.search(r'hx-get="(/dashboard/update[^"]+)"', body).group(1).replace("&amp;", "&")
    assert client.get(new_poll, headers=HX).status_code == 204


def test_a_recent_backup_does_not_make_every_dashboard_poll_send_its_card(client, runtime):
    """The backup card says how long ago the last backup was; a poll a second
    later must not send that card again (an age counted in seconds would differ
    at every poll)."""
    with runtime.conn() as conn:
        conn.execute("""INSERT INTO backups (filename, path, created_at, size_bytes, status)
                        VALUES ('market_data_poll_test.dump', '/nonexistent',
                                now() - interval '5 seconds', 1, 'ok')""")
    try:
        html = client.get("/dashboard").get_data(as_text=True)
        assert "under a minute ago" in html
        poll = re.search(r'hx-get="(/dashboard/update[^"]+)"', html).group(1).replace("&amp;", "&")
        time.sleep(1.5)  # the clock must move for the age to be rendered again
        r = client.get(poll, headers=HX)
        # Other panels may change meanwhile (the database's size grows with any
        # write elsewhere on the server); the backup card must not be among them.
        assert r.status_code in (200, 204)
        body = r.get_data(as_text=True)
        assert 'id="card-backup"' not in body, body[:500]
        if r.status_code == 200:
            assert 'id="dash-poll"' in body
    finally:
        with runtime.conn() as conn:
            conn.execute("DELETE FROM backups WHERE filename = 'market_data_poll_test.dump'")


def test_an_htmx_request_gets_the_partial_and_a_plain_one_the_page(client, backfilled):
    full = client.get("/symbols?sort=records&dir=desc").get_data(as_text=True)
    part = client.get("/symbols?sort=records&dir=desc",
                      headers={**HX, "HX-Target": "symbols-table"}).get_data(as_text=True)
    assert "<!doctype html>" in full and 'id="symbols-table"' in full
    assert "<!doctype html>" not in part and part.lstrip().startswith('<div id="symbols-table">')
    assert "<nav" not in part


def test_symbol_grid_sorts_and_filters_on_the_server(client, backfilled):
    with backfilled.conn() as conn:
        conn.execute("""INSERT INTO symbol_stats (symbol, first_session, last_session, records,
                        validated, quality_score, completeness)
                        VALUES ('LOWQ', '2024-01-02', '2024-01-05', 4, 1, 0.2, 0.5)""")
    html = client.get("/symbols?sort=quality_score&dir=asc").get_data(as_text=True)
    order = re.findall(r'href="/symbols/([A-Z]+)"', html)
    assert order[0] == "LOWQ"
    assert re.search(r'<tr class="q-red">\s*<td><a href="/symbols/LOWQ"', html)
    html = client.get("/symbols?quality=red").get_data(as_text=True)
    assert re.findall(r'href="/symbols/([A-Z]+)"', html) == ["LOWQ"]
    html = client.get("/symbols?q=MS").get_data(as_text=True)
    assert re.findall(r'href="/symbols/([A-Z]+)"', html) == ["MSFT"]


def test_symbol_page_lists_invalid_candles_with_their_rule_and_feeds_the_chart(client, backfilled):
    r = client.get("/symbols/AAPL")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert 'id="chart"' in html and "lightweight-charts.standalone.production.js" in html
    with backfilled.conn() as conn:
        invalid = store.invalid_candles(conn, "AAPL", tz="America/New_York")
    assert invalid, "the demo series has bad ticks for AAPL"
    for c in invalid:
        assert str(c["time"]) in html
        for rule in c["issues"]:
            assert f"<code>{rule}</code>" in html
    d = client.get("/console/api/chart/AAPL?adjusted=0").get_json()
    assert d["symbol"] == "AAPL" and d["adjusted"] is False
    times = [c["time"] for c in d["candles"]]
    assert times == sorted(times)
    marks = {(m["time"], m["text"].split(":")[0]) for m in d["markers"]}
    for c in invalid:
        assert (c["time"].isoformat(), "invalid") in marks
    nv = client.get("/console/api/chart/NVDA").get_json()
    marks = {(m["time"], m["text"]) for m in nv["markers"]}
    with backfilled.conn() as conn:
        gaps = store.gaps(conn, symbol="NVDA", tz="America/New_York")
    assert any(g["kind"] == "split" for g in gaps)
    for g in gaps:
        assert (g["session"].isoformat(), g["kind"]) in marks
    # split-adjusted prices before the split are a tenth of the raw ones
    raw = {c["time"]: c for c in nv["candles"] if "close" in c}
    adj = {c["time"]: c for c in client.get("/console/api/chart/NVDA?adjusted=1")
           .get_json()["candles"] if "close" in c}
    assert adj["2024-06-07"]["close"] == pytest.approx(raw["2024-06-07"]["close"] / 10)
    assert adj["2024-06-10"]["close"] == raw["2024-06-10"]["close"]
    adj = client.get("/console/api/chart/AAPL?adjusted=1").get_json()
    assert adj["adjusted"] is True and len(adj["candles"]) == len(d["candles"])


def test_unknown_symbol_is_404_and_a_malformed_one_too(client):
    assert client.get("/symbols/NOPE").status_code == 404
    assert client.get("/symbols/%3Cscript%3E").status_code == 404
    assert client.get("/console/api/chart/a%20b").status_code == 404


# --------------------------------------------------------------------------- escaping, secrets

def test_event_and_symbol_text_with_script_tags_renders_as_text(client, runtime):
    evil = "<script>alert('x')</script>"
    with runtime.conn() as conn:
        store.add_event(conn, "error", "vendor", f"vendor said {evil}", {"body": evil})
        conn.execute("INSERT INTO symbol_stats (symbol, records, validated, source) "
                     "VALUES (%s, 1, 1, %s)", (evil, evil))
        conn.execute("""INSERT INTO alerts (key, severity, status, message, opened_at)
                        VALUES ('evil', 'warning', 'open', %s, now())""", (evil,))
    for path in ("/events", "/events?q=vendor", "/symbols", "/dashboard"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>alert" not in html, path
        assert "&lt;script&gt;alert(" in html, path


def test_secrets_are_never_rendered(client, app):
    login(client)
    html = client.get("/config").get_data(as_text=True)
    assert "test-admin-token-0123456789" not in html and "test-secret" not in html
    assert "********" in html


# --------------------------------------------------------------------------- login, CSRF

def test_login_with_the_admin_token_sets_a_session_that_shows_the_actions(client):
    assert "Back up now" not in client.get("/backups").get_data(as_text=True)
    tok = csrf_of(client)
    r = client.post("/login", data={"token": "wrong", "csrf_token": tok})
    assert r.status_code == 403
    assert "Wrong admin token" in r.get_data(as_text=True)
    r = client.post("/login", data={"token": "test-admin-token-0123456789", "csrf_token": tok,
                                    "next": "/jobs"})
    assert r.status_code == 303 and r.headers["Location"].endswith("/jobs")
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Run backfill now" in client.get("/jobs").get_data(as_text=True)


def test_the_login_page_answers_head_as_get(client):
    """A probe of the login page by HEAD got 403 (taken for a form post
    without its CSRF token)."""
    got, head = client.get("/login"), client.head("/login")
    assert got.status_code == head.status_code == 200
    assert head.headers["Content-Type"] == got.headers["Content-Type"] and head.data == b""


def test_login_refuses_an_offsite_next(client):
    tok = csrf_of(client)
    r = client.post("/login", data={"token": "test-admin-token-0123456789", "csrf_token": tok,
                                    "next": "//evil.example/x"})
    assert r.status_code == 303 and r.headers["Location"].endswith("/dashboard")


def test_login_itself_needs_the_csrf_token(client):
    client.get("/login")
    r = client.post("/login", data={"token": "test-admin-token-0123456789"})
    assert r.status_code == 403
    assert "Log out" not in client.get("/dashboard").get_data(as_text=True)


ACTIONS = ["/jobs/backfill", "/backups", "/backups/1/restore-test", "/config/check",
           "/config/reload", "/symbols/AAPL/backfill", "/alerts/1/ack"]


@pytest.mark.parametrize("path", ACTIONS)
def test_a_post_without_login_is_refused(client, runtime, path):
    tok = csrf_of(client)
    r = client.post(path, data={"csrf_token": tok})
    assert r.status_code == 403
    r = client.post(path, headers={**HX, "X-CSRFToken": tok})
    assert r.status_code == 403
    with runtime.conn() as conn:
        assert conn.execute("SELECT count(*) FROM job_runs").fetchone()[0] == 0


@pytest.mark.parametrize("path", ACTIONS)
def test_a_post_without_or_with_a_wrong_csrf_token_is_refused(client, runtime, path):
    login(client)
    assert client.post(path).status_code == 403
    assert client.post(path, data={"csrf_token": "wrong"}).status_code == 403
    assert client.post(path, headers={**HX, "X-CSRFToken": "wrong"}).status_code == 403
    with runtime.conn() as conn:
        assert conn.execute("SELECT count(*) FROM job_runs").fetchone()[0] == 0


def test_the_csrf_header_htmx_sends_is_accepted(client, runtime):
    tok = login(client)
    r = client.post("/jobs/backfill", headers={**HX, "X-CSRFToken": tok})
    assert r.status_code == 200
    assert "queued as run" in r.get_data(as_text=True)
    with runtime.conn() as conn:
        row = conn.execute("SELECT job, status FROM job_runs").fetchone()
    assert row == ("backfill", "queued")


def test_the_body_carries_the_csrf_header_for_htmx(client):
    tok = login(client)
    html = client.get("/dashboard").get_data(as_text=True)
    m = re.search(r"<body hx-headers='([^']+)'", html)
    assert json.loads(m.group(1).replace("&#34;", '"')) == {"X-CSRFToken": tok}


def test_changing_the_admin_token_logs_the_console_out(client, runtime, config_factory):
    login(client)
    assert "Log out" in client.get("/dashboard").get_data(as_text=True)
    config_factory(server={"admin_token": "another-token-123-0123456789"})
    from appliance.jobs.reload import reload_config
    assert reload_config(runtime, source="cli")["ok"]
    assert "Log out" not in client.get("/dashboard").get_data(as_text=True)


def test_login_for_read_puts_the_pages_behind_the_login(runtime, config_factory):
    config_factory(server={"login_for_read": True})
    from appliance.jobs.reload import reload_config
    assert reload_config(runtime, source="cli")["ok"]
    from appliance.web import create_app
    app = create_app(runtime=runtime)
    c = app.test_client()
    r = c.get("/symbols")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert c.get("/console/api/chart/AAPL").status_code == 302
    r = c.get("/dashboard/update", headers=HX)
    assert r.headers.get("HX-Redirect", "").startswith("/login")
    login(c)
    assert c.get("/symbols").status_code == 200


# --------------------------------------------------------------------------- actions

def test_symbol_backfill_button_queues_a_backfill_of_that_symbol(client, runtime):
    tok = login(client)
    r = client.post("/symbols/MSFT/backfill", headers={**HX, "X-CSRFToken": tok})
    assert r.status_code == 200
    with runtime.conn() as conn:
        params = conn.execute("SELECT params FROM job_runs WHERE job = 'backfill'").fetchone()[0]
    assert params == {"symbols": ["MSFT"]}


def test_config_reload_refuses_a_broken_file_and_shows_its_line(client, runtime, config_path):
    tok = login(client)
    text = config_path.read_text()
    config_path.write_text(text + "schedules:\n  backup: \"61 3 * * 0\"\n")
    r = client.post("/config/check", headers={**HX, "X-CSRFToken": tok})
    body = r.get_data(as_text=True)
    lines = len(text.splitlines())
    assert f"{config_path}:{lines + 2}: at $.schedules.backup" in body
    r = client.post("/config/reload", headers={**HX, "X-CSRFToken": tok})
    body = r.get_data(as_text=True)
    assert 'data-ok="false"' in body and f"{config_path}:{lines + 2}" in body
    with runtime.conn() as conn:
        last = store.last_config_reload(conn)
    assert last["ok"] is False and last["source"] == "console"
    # without JavaScript: the same result as a page, with an error status
    r = client.post("/config/reload", data={"csrf_token": tok})
    assert r.status_code == 422 and f"{config_path}:{lines + 2}" in r.get_data(as_text=True)


def test_config_reload_shows_the_diff_it_applied(client, runtime, config_factory):
    tok = login(client)
    config_factory(quality={"gap_threshold_pct": 25})
    r = client.post("/config/reload", headers={**HX, "X-CSRFToken": tok})
    body = r.get_data(as_text=True)
    assert 'data-ok="true"' in body
    assert "quality.gap_threshold_pct: 20" in body and "quality.gap_threshold_pct: 25" in body
    assert r.headers.get("HX-Trigger") == "config-reloaded"
    assert runtime.config["quality"]["gap_threshold_pct"] == 25


def test_config_check_says_what_removing_a_symbol_and_a_resolution_keeps(
        client, runtime, config_factory):
    # the CLI said it, the console showed only the diff lines
    tok = login(client)
    config_factory(symbols=[{"symbol": "AAPL", "timeframes": ["1d"]}])
    r = client.post("/config/check", headers={**HX, "X-CSRFToken": tok})
    body = r.get_data(as_text=True)
    assert "symbols removed: MSFT: no longer fetched; their data is kept" in body, body
    config_factory(symbols=["AAPL", "MSFT"], timeframes=["1m", "1d"])
    assert client.post("/config/reload", headers={**HX, "X-CSRFToken": tok}).status_code == 200
    config_factory(symbols=["AAPL", {"symbol": "MSFT", "timeframes": ["1d"]}],
                   timeframes=["1m", "1d"])
    body = client.post("/config/reload", headers={**HX, "X-CSRFToken": tok}).get_data(
        as_text=True)
    assert "resolutions removed (MSFT: 1m): no longer fetched; the bars stored are kept" in body


def test_alert_acknowledge_records_who_and_when(client, runtime):
    with runtime.conn() as conn:
        aid = conn.execute("""INSERT INTO alerts (key, severity, status, message, opened_at)
                              VALUES ('stale', 'warning', 'open', 'data is stale', now())
                              RETURNING id""").fetchone()[0]
    tok = login(client)
    html = client.get("/dashboard").get_data(as_text=True)
    assert f"/alerts/{aid}/ack" in html
    r = client.post(f"/alerts/{aid}/ack", headers={**HX, "X-CSRFToken": tok})
    assert r.status_code == 200 and "acknowledged by console admin" in r.get_data(as_text=True)
    with runtime.conn() as conn:
        by = conn.execute("SELECT acknowledged_by FROM alerts WHERE id = %s", (aid,)).fetchone()[0]
    assert by.startswith("console admin")


def test_jobs_page_polls_a_running_run_and_stops_when_it_finished(client, runtime):
    from appliance.jobs import runs
    with runtime.conn() as conn:
        rid = runs.claim(conn, "backfill", runs.manual_slot())
        runs.start(conn, rid)
        runs.progress(conn, rid, {"symbols_total": 4, "symbols_done": 1, "current": "MSFT",
                                  "rows": 250, "requests": 3})
    html = client.get("/jobs").get_data(as_text=True)
    row = re.search(rf'<tr id="run-{rid}".*?</tr>', html, re.S).group(0)
    assert 'hx-trigger="every 1s"' in row and "25 %" in row and "MSFT" in row
    with runtime.conn() as conn:
        runs.finish(conn, rid, "ok", {"inserted": 500, "updated": 0, "requests": 4})
    part = client.get(f"/jobs/{rid}", headers=HX).get_data(as_text=True)
    assert "hx-trigger" not in part and ">ok<" in part and "500" in part


def test_a_run_page_renders_the_result_by_the_keys_its_job_declares(client, runtime):
    from appliance.jobs import registry, runs
    with runtime.conn() as conn:
        rid = runs.claim(conn, "backfill", runs.manual_slot())
        runs.start(conn, rid)
        # stored in another order than BackfillResult's, with a key it does not declare
        runs.finish(conn, rid, "partial", {"legacy_total": 7, "requests": 9, "updated": 2,
                                           "failed": {"ZZZZ": "unknown ticker"},
                                           "inserted": 40, "plan": "aggregates: 2 symbols"},
                    "1 symbol(s) failed: ZZZZ: unknown ticker")
    html = client.get(f"/jobs/{rid}").get_data(as_text=True)
    row = re.search(rf'<tr id="run-{rid}".*?</tr>', html, re.S).group(0)
    cells = re.findall(r'<td class="num">([^<]*)</td>', row)
    assert cells[-2:] == ["42", "9"]  # rows (inserted + updated), requests
    assert "ZZZZ: unknown ticker" in row
    result, other = html.split("<h2>Result</h2>", 1)[1].split("keys its job does not declare")
    shown = re.findall(r"<dt>([^<]+)</dt>", result)
    declared = [k.replace("_", " ") for k in registry.result_keys("backfill")]
    assert shown == [k for k in declared if k in shown]  # the declared order
    assert set(shown) == {"plan", "failed", "inserted", "updated", "requests"}
    assert re.findall(r"<dt>([^<]+)</dt>", other) == ["legacy total"]


def test_a_retried_run_says_its_attempt_and_that_the_error_was_the_last_attempts(
        client, runtime):
    """RQ retries a failed run under the same run (jobs.retries): while the
    second attempt runs, the error shown is the first's, said so."""
    from appliance.jobs import runs
    with runtime.conn() as conn:
        rid = runs.claim(conn, "spot_check", runs.manual_slot())
        runs.start(conn, rid)
        runs.finish(conn, rid, "failed", {}, "every request to yahoo failed")
        runs.start(conn, rid)  # RQ's retry
    row = re.search(rf'<tr id="run-{rid}".*?</tr>',
                    client.get(f"/jobs/{rid}").get_data(as_text=True), re.S).group(0)
    assert ">running</span>" in row and "attempt 2</span>" in row, row
    assert "attempt 1 failed: every request to yahoo failed" in row, row
    with runtime.conn() as conn:
        runs.finish(conn, rid, "failed", {}, "every request to yahoo failed again")
    row = re.search(rf'<tr id="run-{rid}".*?</tr>',
                    client.get(f"/jobs/{rid}").get_data(as_text=True), re.S).group(0)
    assert ">failed</span>" in row and "attempt 2</span>" in row
    assert "<div>every request to yahoo failed again</div>" in row, row


def test_restore_test_progress_shows_the_steps_then_a_green_result(client, runtime):
    from appliance.jobs import runs
    with runtime.conn() as conn:
        bid = conn.execute("""INSERT INTO backups (filename, path, size_bytes, sha256)
                              VALUES ('market_data_20250101_000000.dump', '/tmp/x.dump', 1024,
                                      'ab' || repeat('0', 62)) RETURNING id""").fetchone()[0]
        rid = runs.claim(conn, "restore_test", runs.manual_slot(), params={"backup": str(bid)})
        runs.start(conn, rid)
        runs.progress(conn, rid, {"steps": [
            {"name": "verify sha256", "status": "ok", "detail": "matches the manifest"},
            {"name": "restore into scratch database", "status": "running", "detail": None},
            {"name": "compare row counts", "status": "pending"}]})
    part = client.get(f"/restore-tests/{rid}", headers=HX).get_data(as_text=True)
    assert 'hx-trigger="every 1s"' in part
    assert 'class="step ok"' in part and 'class="step running"' in part
    assert "matches the manifest" in part
    with runtime.conn() as conn:
        runs.progress(conn, rid, {"steps": [
            {"name": "verify sha256", "status": "ok"},
            {"name": "restore into scratch database", "status": "ok"},
            {"name": "compare row counts", "status": "ok", "detail": "market_data 1000 = 1000"}]})
        runs.finish(conn, rid, "ok", {"tables": {"market_data": {"expected": 1000,
                                                                 "restored": 1000}}})
    part = client.get(f"/restore-tests/{rid}", headers=HX).get_data(as_text=True)
    assert "hx-trigger" not in part
    assert "Restore test passed" in part and "market_data" in part and "1000" in part


def test_backups_page_lists_the_catalogue_and_the_free_space(client, runtime):
    from appliance.jobs import runs
    from appliance.ops import backups
    from appliance.ops.backups import run_backup
    runs.execute(runtime, "backup", runs.manual_slot(), run_backup, params={})
    with runtime.conn() as conn:
        name = backups.list_backups(conn)[0]["filename"]
    html = client.get("/backups").get_data(as_text=True)
    assert "Backup path" in html and "free of" in html
    assert 'id="backups-table"' in html and name in html


def test_a_restore_test_of_an_unknown_backup_is_refused(client):
    tok = login(client)
    r = client.post("/backups/999/restore-test", data={"csrf_token": tok})
    assert r.status_code == 409 and "no backup 999" in r.get_data(as_text=True)


def test_gaps_page_filters_by_kind_and_shows_the_explaining_split(client, runtime, config_factory):
    config_factory(symbols=["NVDA", "AAPL"])
    from appliance.jobs.reload import reload_config
    assert reload_config(runtime, source="cli")["ok"]
    from appliance.ingest.backfill import run_backfill
    from appliance.jobs import runs
    runs.execute(runtime, "backfill", runs.manual_slot(), run_backfill, params={})
    html = client.get("/gaps?kind=split").get_data(as_text=True)
    assert "2024-06-10" in html and "10-for-1" in html and "explained by the split" in html
    assert '<span class="q-label">jump</span>' not in html
    html = client.get("/gaps?kind=jump&min_jump=10").get_data(as_text=True)
    assert "unexplained" in html
    part = client.get("/gaps?kind=missing", headers={**HX, "HX-Target": "gaps-table"})
    assert "<nav" not in part.get_data(as_text=True)
    # the dividend kind too, as the API has it: filtered, not all rows
    html = client.get("/gaps?kind=dividend").get_data(as_text=True)
    assert '<option value="dividend" selected>' in html
    assert re.search(r"0 split · \d+ dividend · 0 jump", html), html[:2000]
    assert "explained by the split" not in html
    # a dividend row says what explains it (it said "no candle for this session")
    with runtime.conn() as conn:
        conn.execute("""UPDATE market_data SET gap_detected = true, gap_kind = 'dividend',
                               gap_pct = -22.0
                        WHERE symbol = 'AAPL' AND ts = (SELECT max(ts) FROM market_data
                                                        WHERE symbol = 'AAPL')""")
    html = client.get("/gaps?kind=dividend").get_data(as_text=True)
    assert "explained by a cash dividend going ex this session" in html
    assert "no candle for this session" not in html


def test_events_page_filters_by_level_kind_and_text(client, runtime):
    with runtime.conn() as conn:
        store.add_event(conn, "info", "backup", "backup ok in 3 s")
        store.add_event(conn, "warning", "vendor", "rate limited by the vendor, retrying")
        store.add_event(conn, "error", "reload", "config reload refused")
    html = client.get("/events?level=warning").get_data(as_text=True)
    assert "rate limited" in html and "config reload refused" in html and "backup ok" not in html
    html = client.get("/events?kind=backup").get_data(as_text=True)
    assert "backup ok" in html and "rate limited" not in html
    html = client.get("/events?q=RATE").get_data(as_text=True)
    assert "rate limited" in html and "backup ok" not in html


def test_pages_send_a_strict_content_security_policy(client):
    r = client.get("/symbols/AAPL" if False else "/dashboard")
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self' 'nonce-" in csp


def test_a_minute_backfill_shows_its_bars_and_a_table_of_unlike_items_lines_up(client, runtime):
    from appliance.jobs import runs

    def job(rt, run_id, report):  # what a backfill of daily and minute bars returns
        return {"inserted": 10, "updated": 2, "requests": 3,
                "minutes": {"symbols": 2, "sessions": 4, "bars": 1560},
                "fetched": {"1d": {"symbols": 3, "start": "2024-01-02", "end": "2024-06-14"},
                            "1m": {"symbols": 2, "bars": 1560, "start": "2024-06-03",
                                   "end": "2024-06-14"}}}
    res = runs.execute(runtime, "backfill", runs.manual_slot(), job)
    page = client.get("/jobs").get_data(as_text=True)
    row = re.search(rf'<tr id="run-{res["run_id"]}".*?</tr>', page, re.S).group(0)
    assert [c.strip() for c in re.findall(r'<td class="num">(.*?)</td>', row, re.S)][2] \
        == "1,572"  # the daily bars and the minute bars stored
    page = client.get(f"/jobs/{res['run_id']}").get_data(as_text=True)
    table = page[page.index("<dt>fetched</dt>"):]
    table = table[:table.index("</table>")]
    head = re.findall(r"<th>(.*?)</th>", table)
    assert sorted(head) == ["bars", "end", "item", "start", "symbols"], head
    rows = [dict(zip(head, re.findall(r"<td>(.*?)</td>", tr), strict=True))
            for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S) if "<td>" in tr]
    assert {"item": "1d", "symbols": "3", "start": "2024-01-02", "end": "2024-06-14",
            "bars": ""} in rows, rows
    assert {"item": "1m", "symbols": "2", "start": "2024-06-03", "end": "2024-06-14",
            "bars": "1560"} in rows, rows


def test_the_alerts_panel_does_not_say_none_when_it_cannot_read_them(app):
    """With PostgreSQL stopped it said "No open alerts." (the badge was red)."""
    from flask import render_template
    with app.test_request_context("/dashboard"):
        down = render_template("partials/dash_alerts.html", alerts=[], pending=[], oob=False,
                               snap={"status": "error"}, is_admin=False)
        up = render_template("partials/dash_alerts.html", alerts=[], pending=[], oob=False,
                             snap={"status": "ok"}, is_admin=False)
    assert "No open alerts" not in down and "The alerts cannot be read" in down
    assert "No open alerts" in up
