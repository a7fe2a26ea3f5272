"""Finding 1: with server.read_token (or login_for_read) every read surface
needs a credential: API, CSV, console pages and partials, chart data, OpenAPI,
metrics; HEAD like GET. /metrics may take its own server.metrics_token."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from .helpers import ADMIN_TOKEN, METRICS_TOKEN, READ_TOKEN, app_for, secured

ROOT = Path(__file__).resolve().parents[2]
#: reachable by anyone: liveness, the login itself, CSS and JS
OPEN = {"api.health", "static", "console.auth.login", "console.auth.logout"}
SAMPLE = {"int": "1", "default": "AAPL", "path": "AAPL"}


def _urls(app) -> list[tuple[str, str, set[str]]]:
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in OPEN:
            continue
        args = {}
        for name, conv in rule._converters.items():  # the converter kinds
            kind = type(conv).__name__.replace("Converter", "").lower()
            args[name] = SAMPLE.get("int" if kind in ("integer", "int") else kind, "AAPL")
        url = rule.rule
        for name, value in args.items():
            url = re.sub(r"<[^>]*\b" + name + ">", value, url)
        out.append((rule.endpoint, url, set(rule.methods) - {"OPTIONS"}))
    return out


def _partial_targets() -> set[str]:
    src = "".join(p.read_text() for p in (ROOT / "appliance/web/console").glob("*.py"))
    from appliance.web.console import PANELS
    return set(re.findall(r'page\("[^"]+", "[^"]+", "([^"]+)"', src)) | set(PANELS) | \
        {"config-running", "job-row", "restore-progress"}


def _refused(r) -> bool:
    if r.status_code == 401:
        return True
    if r.status_code in (301, 302, 303) and "/login" in r.headers.get("Location", ""):
        return True
    return r.status_code == 204 and r.headers.get("HX-Redirect", "").startswith("/login")


@pytest.mark.parametrize("server", [{"read_token": READ_TOKEN}, {"login_for_read": True}],
                         ids=["read_token", "login_for_read"])
def test_every_route_and_partial_needs_a_credential(config_factory, server):
    app, rt = app_for(config_factory(server=secured(**server)))
    try:
        c = app.test_client()
        urls = _urls(app)
        assert any(u == "/console/api/chart/AAPL" for _, u, _m in urls)
        assert any(u == "/metrics" for _, u, _m in urls)
        checked = 0
        for endpoint, url, methods in urls:  # noqa: B007
            for method in sorted(methods):
                r = c.open(url, method=method)
                assert _refused(r), (method, url, r.status_code, r.get_data(as_text=True)[:200])
                checked += 1
            if "GET" in methods:
                for target in _partial_targets():
                    r = c.get(url, headers={"HX-Request": "true", "HX-Target": target})
                    assert _refused(r), (url, target, r.status_code)
                r = c.get(url, query_string={"format": "csv"})
                assert _refused(r), (url, "csv", r.status_code)
        assert checked > 30
    finally:
        rt.close()


def test_head_is_gated_like_get(config_factory):
    app, rt = app_for(config_factory(server=secured(login_for_read=True)))
    try:
        c = app.test_client()
        for url in ("/symbols/AAPL", "/symbols", "/console/api/chart/AAPL",
                    "/api/v1/historical/AAPL", "/api/v1/symbols"):
            assert _refused(c.head(url)), url
    finally:
        rt.close()


def test_read_credentials_open_what_the_token_guards(config_factory):
    app, rt = app_for(config_factory(server=secured(read_token=READ_TOKEN)))
    try:
        c = app.test_client()
        for tok in (READ_TOKEN, ADMIN_TOKEN):
            h = {"Authorization": f"Bearer {tok}"}
            for url in ("/api/v1/symbols", "/api/v1/openapi.json", "/metrics",
                        "/api/v1/historical/AAPL?format=csv", "/symbols"):
                assert c.get(url, headers=h).status_code == 200, (tok[:5], url)
        # the read token opens reading, never an admin action
        r = c.post("/api/v1/backups", headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert r.status_code == 403  # known, but no admin scope
        assert c.get("/health").status_code in (200, 503)  # liveness stays open
    finally:
        rt.close()


def test_metrics_token_opens_metrics_only(config_factory):
    app, rt = app_for(config_factory(server=secured(metrics_token=METRICS_TOKEN)))
    try:
        c = app.test_client()
        assert c.get("/metrics").status_code == 401  # reads are open, metrics are not
        h = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        r = c.get("/metrics", headers=h)
        assert r.status_code == 200 and b"appliance_up" in r.data
        assert c.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code \
            == 200
    finally:
        rt.close()
    app, rt = app_for(config_factory(server=secured(metrics_token=METRICS_TOKEN,
                                                    read_token=READ_TOKEN)))
    try:
        c = app.test_client()
        h = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        assert c.get("/metrics", headers=h).status_code == 200
        assert c.get("/api/v1/symbols", headers=h).status_code == 401  # metrics only
    finally:
        rt.close()


def test_a_running_appliance_answers_401_to_anonymous_reads(served):
    base, _cfg = served(server={"read_token": READ_TOKEN})
    for url in ("/api/v1/symbols", "/api/v1/openapi.json", "/metrics",
                "/console/api/chart/AAPL", "/api/v1/historical/AAPL?format=csv"):
        r = requests.get(base + url, allow_redirects=False, timeout=10)
        assert _refused(r), (url, r.status_code)
        r = requests.head(base + url, allow_redirects=False, timeout=10)
        assert _refused(r), ("HEAD", url, r.status_code)
    r = requests.get(base + "/symbols", allow_redirects=False, timeout=10)
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    r = requests.get(base + "/api/v1/symbols", headers={"Authorization": f"Bearer {READ_TOKEN}"},
                     timeout=10)
    assert r.status_code == 200
