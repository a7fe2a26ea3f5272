"""The console in headless Chromium: login, live panels, the chart, a restore
test from one click to a green result, a refused reload, refused POSTs, and
the screenshots in docs/screenshots/."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
TOKEN = "test-admin-token-0123456789"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _csrf(page) -> str:
    return json.loads(page.get_attribute("body", "hx-headers"))["X-CSRFToken"]


def test_login_then_a_panel_refreshes_in_place_without_navigation(page, server, runtime, do_login):
    do_login(page, server)
    assert page.is_visible("text=Log out")
    records = page.locator("#card-records .value")
    before = records.inner_text()
    page.evaluate("window.__sameDocument = true")
    polls = []
    page.on("request", lambda r: polls.append(r.url) if "/dashboard/update" in r.url else None)
    with runtime.conn() as conn:
        conn.execute("""INSERT INTO symbol_stats (symbol, first_session, last_session, records,
                        validated, quality_score, completeness)
                        VALUES ('ZZZZ', '2024-01-02', '2024-01-03', 1000000, 1000000, 1, 1)""")
    expected = f"{int(before.replace(',', '')) + 1_000_000:,}"
    page.wait_for_function(
        "t => document.querySelector('#card-records .value').textContent.trim() === t",
        arg=expected, timeout=15000)
    assert page.evaluate("window.__sameDocument") is True   # no page load happened
    assert polls, "the update came from the poller"
    assert not page.watch.errors and not page.watch.offsite()


def test_a_symbol_chart_draws_with_markers_from_local_files_only(page, server):
    page.goto(f"{server}/symbols?sort=quality_score&dir=asc")
    page.click("#symbols-table a[href='/symbols/NVDA']")
    page.wait_for_url(f"{server}/symbols/NVDA")
    page.wait_for_selector("#chart canvas")
    page.wait_for_function("() => document.querySelector('#chart').dataset.loaded > 0")
    status = page.inner_text("#chart-status")
    assert "raw prices" in status and "markers" in status
    page.click("a[data-adjusted='1']")
    page.wait_for_function("() => document.querySelector('#chart').dataset.adjusted === '1'")
    assert "split-adjusted" in page.inner_text("#chart-status")
    assert page.url.endswith("/symbols/NVDA?adjusted=1")
    assert not page.watch.errors, page.watch.errors
    assert not page.watch.offsite(), page.watch.offsite()
    assert not page.watch.failed, page.watch.failed


def test_run_restore_test_shows_live_steps_then_turns_green(page, server, runtime, worker,
                                                           do_login, tmp_path):
    from appliance.jobs import runs
    from appliance.ops.backups import run_backup
    res = runs.execute(runtime, "backup", runs.manual_slot(), run_backup)
    assert res["status"] == "ok", res
    do_login(page, server, "/backups")
    page.click("#backups-table button:has-text('Run restore test')")
    page.wait_for_selector("#restore-panel .restore-run")
    page.wait_for_selector("#restore-panel .step", timeout=60000)   # live steps while it runs
    page.wait_for_selector("#restore-panel .restore-result", timeout=180000)
    result = page.locator("#restore-panel .restore-result")
    assert "passed" in (result.get_attribute("class") or ""), result.inner_text()
    assert "Restore test passed" in result.inner_text()
    assert page.locator("#restore-panel .restore-checks tr.q-green").count() > 3
    assert page.locator("#restore-panel .restore-checks tr.q-red").count() == 0
    assert page.get_attribute("#restore-panel .restore-run", "hx-get") is None  # polling stopped
    page.wait_for_selector("#backups-table tr.q-green:has-text('passed')")  # table refreshed
    page.screenshot(path=str(tmp_path / "restore-test.png"), full_page=True)
    assert not page.watch.errors, page.watch.errors


def test_a_broken_config_is_refused_on_reload_with_its_line(page, server, runtime, config_path,
                                                          do_login):
    do_login(page, server, "/config")
    sha_before = page.inner_text("#config-sha")
    text = config_path.read_text()
    config_path.write_text(text + "schedules:\n  backup: \"0 3 * * 8\"\n")
    line = len(text.splitlines()) + 2
    page.click("#reload-btn")
    page.wait_for_selector("#config-outcome[data-ok='false']")
    body = page.inner_text("#config-outcome")
    assert f"{config_path}:{line}: at $.schedules.backup" in body
    assert "Reload refused" in body
    assert page.inner_text("#config-sha") == sha_before
    assert runtime.config.sha256 == sha_before


def test_posts_without_login_or_csrf_token_are_refused(page, server, runtime, do_login):
    r = page.request.post(f"{server}/jobs/backfill")
    assert r.status == 403
    do_login(page, server, "/jobs")
    r = page.request.post(f"{server}/jobs/backfill")
    assert r.status == 403 and "CSRF" in r.text()
    r = page.request.post(f"{server}/jobs/backfill", headers={"X-CSRFToken": "forged"})
    assert r.status == 403
    with runtime.conn() as conn:
        assert conn.execute("SELECT count(*) FROM job_runs WHERE job = 'backfill'"
                            ).fetchone()[0] == 1      # only the fixture's backfill
    r = page.request.post(f"{server}/jobs/backfill",
                          headers={"X-CSRFToken": _csrf(page), "HX-Request": "true"})
    assert r.status == 200 and "queued as run" in r.text()
    # and the button itself works in the page
    page.click("button:has-text('Run backfill now')")
    page.wait_for_selector("#job-action #run-queued")


def _start_scheduler(config_path, tmp_path):
    env = {**os.environ, "APPLIANCE_CONFIG": str(config_path)}
    log = open(tmp_path / "scheduler.log", "wb")
    p = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(config_path),
                          "scheduler"], cwd=str(ROOT), env=env, stdout=log,
                         stderr=subprocess.STDOUT)
    return p, log


def test_screenshots_of_the_dashboard_and_a_symbol_page(browser, server, runtime, worker,
                                                        config_path, tmp_path):
    """A running appliance (worker, scheduler, a tested backup): the dashboard
    as the operator sees it, on a laptop and on a phone, and a symbol page."""
    from appliance.alerts import health
    from appliance.jobs import runs
    from appliance.ops.backups import run_backup, run_restore_test
    assert runs.execute(runtime, "backup", runs.manual_slot(), run_backup)["status"] == "ok"
    assert runs.execute(runtime, "restore_test", runs.manual_slot(), run_restore_test,
                        params={"backup": "latest"})["status"] == "ok"
    sched, log = _start_scheduler(config_path, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not health.compute(runtime).scheduler_running:
            assert time.monotonic() < deadline, (tmp_path / "scheduler.log").read_text()[-2000:]
            time.sleep(0.5)
        # the README's screenshots are refreshed only when asked for, so a test
        # run leaves the working tree as it found it
        shots = SCREENSHOTS if os.environ.get("APPLIANCE_UPDATE_SCREENSHOTS") else tmp_path
        shots.mkdir(parents=True, exist_ok=True)
        ctx = browser.new_context(viewport={"width": 1280, "height": 860})
        page = ctx.new_page()
        page.goto(f"{server}/login?next=/dashboard")
        page.fill("#token", TOKEN)
        page.click("button[type=submit]:has-text('Log in')")
        page.wait_for_selector("#card-scheduler:has-text('running')")
        page.wait_for_selector("#dash-badge .badge")
        page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
        badge = page.inner_text("#dash-badge .badge")

        page.goto(f"{server}/symbols/NVDA?adjusted=1")
        page.wait_for_function("() => document.querySelector('#chart').dataset.loaded > 0")
        page.wait_for_timeout(300)
        page.screenshot(path=str(shots / "symbol.png"), full_page=True)
        ctx.close()

        phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                    has_touch=True, device_scale_factor=2)
        pp = phone.new_page()
        pp.goto(f"{server}/dashboard")
        pp.wait_for_selector("#dash-badge .badge")
        pp.screenshot(path=str(tmp_path / "dashboard-390.png"), full_page=True)
        width = pp.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the dashboard is {width}px wide on a 390px phone"
        pp.goto(f"{server}/symbols/NVDA")
        pp.wait_for_function("() => document.querySelector('#chart').dataset.loaded > 0")
        assert pp.evaluate("document.documentElement.scrollWidth") <= 390
        phone.close()
    finally:
        sched.terminate()
        try:
            sched.wait(20)
        except subprocess.TimeoutExpired:
            sched.kill()
        log.close()
    assert (SCREENSHOTS / "dashboard.png").stat().st_size > 10_000
    assert (SCREENSHOTS / "symbol.png").stat().st_size > 10_000
    assert badge in ("Healthy", "Degraded", "Degraded · critical", "Unhealthy")


def test_reading_works_with_javascript_off(browser, server):
    ctx = browser.new_context(java_script_enabled=False)
    page = ctx.new_page()
    page.goto(f"{server}/symbols")
    page.click("#symbols-table th a:has-text('Records')")          # a plain link
    assert "sort=records" in page.url
    page.select_option("#f-quality", "green")
    page.click("form.filters button:has-text('Filter')")            # a GET form
    assert "quality=green" in page.url
    page.click("#symbols-table a[href='/symbols/MSFT']")
    assert page.url.endswith("/symbols/MSFT")
    assert "Candles that failed validation" in page.inner_text("main")
    page.goto(f"{server}/events")
    page.select_option("#e-level", "info")
    page.click("form.filters button:has-text('Filter')")
    assert "level=info" in page.url and "backfill" in page.inner_text("#events-table")
    ctx.close()
