"""Browser end-to-end tests: the real app served over HTTP on 127.0.0.1, a
real RQ worker in a subprocess, headless Chromium driven by Playwright.

Chromium comes from the distribution (``apt-get install chromium`` ->
/usr/bin/chromium); Playwright's own browser downloads are never used.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "JPM", "SPY"]
TOKEN = "test-admin-token-0123456789"


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing: apt-get install -y chromium"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed in this environment: pip install playwright"
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.e2e)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def config_path(config_factory):
    """The e2e config: panels refresh every second, six demo symbols."""
    return config_factory(dashboard={"refresh_seconds": 1}, symbols=SYMBOLS)


@pytest.fixture
def backfilled(runtime):
    from appliance.ingest.backfill import run_backfill
    from appliance.jobs import runs
    res = runs.execute(runtime, "backfill", runs.manual_slot(), run_backfill, params={})
    assert res["status"] == "ok", res  # the demo provider is deterministic: nothing fails
    return runtime


@pytest.fixture
def server(app, backfilled):
    """The app on http://127.0.0.1:<free port>, in a thread of this process."""
    from werkzeug.serving import make_server
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, name="e2e-http", daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    t.join(10)


@pytest.fixture
def worker(config_path, tmp_path):
    """``appliance worker`` in a subprocess (the same as production runs it)."""
    env = {**os.environ, "APPLIANCE_CONFIG": str(config_path), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "worker.log", "wb")
    p = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(config_path),
                          "worker"], cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT)
    yield p
    p.terminate()
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
    log.close()


class PageWatch:
    """Console errors, failed requests and every host a page talked to."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.hosts: set[str] = set()
        self.failed: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.hosts.add(urlparse(r.url).hostname or r.url))
        page.on("requestfailed", lambda r: self.failed.append(r.url))

    def offsite(self) -> set[str]:
        return {h for h in self.hosts if h not in ("127.0.0.1", "localhost")}


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(15000)
    pg.watch = PageWatch(pg)
    yield pg
    ctx.close()


def _do_login(page, base: str, next_path: str = "/dashboard") -> None:
    page.goto(f"{base}/login?next={next_path}")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]:has-text('Log in')")
    page.wait_for_url(re.compile(re.escape(base + next_path) + r"(\?.*)?$"))


@pytest.fixture
def do_login():
    """``do_login(page, base_url, next_path)``: log in through the form."""
    return _do_login
