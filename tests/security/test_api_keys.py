"""Per-client API keys: ``appliance api-key new NAME`` prints a key once and
the YAML lines; only the hash is in appliance.yaml; scopes read and admin;
requests_per_minute; a reload revokes a removed key with no restart; use is
shown in the console and /metrics by key name, never by key."""
from __future__ import annotations

import re
import time

import requests
import yaml
from click.testing import CliRunner

from appliance.cli.main import main

from .helpers import ADMIN_TOKEN, READ_TOKEN, app_for, csrf_of, secured


def new_key(name: str, *args: str) -> tuple[str, dict]:
    """(the key, the api_keys entry the command printed)."""
    res = CliRunner().invoke(main, ["api-key", "new", name, *args])
    assert res.exit_code == 0, res.output
    key = re.search(r"^\s+(mda_\S+)$", res.output, re.M).group(1)
    snippet = res.output[res.output.index("  api_keys:"):].split("\n\n")[0]
    # pasted as printed under the file's server: line
    entry = yaml.safe_load("server:\n  bind: 127.0.0.1:8000\n" + snippet)["server"]["api_keys"][0]
    assert key not in snippet  # only the hash goes into the file
    return key, entry


def test_api_key_new_prints_a_key_once_and_the_lines_to_paste():
    k1, e1 = new_key("research-notebook")
    k2, e2 = new_key("nightly-export", "--requests-per-minute", "120")
    assert k1 != k2 and len(k1) > 40
    assert e1["name"] == "research-notebook" and e1["scopes"] == ["read"]
    assert e2["requests_per_minute"] == 120 and re.fullmatch(r"[0-9a-f]{64}", e2["sha256"])


def test_keys_read_by_scope_are_limited_and_counted(config_factory):
    rk, read_entry = new_key("notebook")
    ak, admin_entry = new_key("ops-script", "--scope", "admin", "--scope", "read")
    lk, limited = new_key("export", "--requests-per-minute", "3")
    cfg = config_factory(server=secured(read_token=READ_TOKEN,
                                        api_keys=[read_entry, admin_entry, limited]))
    app, rt = app_for(cfg)
    try:
        c = app.test_client()
        h = lambda k: {"Authorization": f"Bearer {k}"}  # noqa: E731
        assert c.get("/api/v1/symbols").status_code == 401
        assert c.get("/api/v1/symbols", headers=h(rk)).status_code == 200
        assert c.get("/api/v1/historical/AAPL?format=csv", headers=h(rk)).status_code == 200
        assert c.post("/api/v1/backups", headers=h(rk)).status_code == 403  # read scope only
        assert c.post("/api/v1/backups", headers=h(ak)).status_code == 202  # admin scope
        assert c.get("/api/v1/status", headers=h(ADMIN_TOKEN)).status_code in (200, 503)
        # requests_per_minute 3: of 8 requests at most 6 pass (3 per minute,
        # should the minute turn between them)
        resps = [c.get("/api/v1/symbols", headers=h(lk)) for _ in range(8)]
        codes = [r.status_code for r in resps]
        assert codes[0] == 200 and codes.count(200) <= 6 and set(codes) == {200, 429}, codes
        first = next(r for r in resps if r.status_code == 429)
        assert first.get_json()["error"]["code"] == "rate_limited"
        assert 0 < int(first.headers["Retry-After"]) <= 60
        metrics = c.get("/metrics", headers=h(rk)).get_data(as_text=True)
        assert 'appliance_api_key_requests_total{key="notebook"} 4.0' in metrics
        assert f'appliance_api_key_rate_limited_total{{key="export"}} {codes.count(429)}.0' \
            in metrics
        assert f'appliance_api_key_requests_total{{key="export"}} {codes.count(200)}.0' \
            in metrics
        assert 'appliance_api_key_last_used_timestamp_seconds{key="ops-script"}' in metrics
        for k in (rk, ak, lk, read_entry["sha256"], admin_entry["sha256"]):
            assert k not in metrics
        # the console shows the same, to an admin
        tok = csrf_of(c.get("/login").get_data(as_text=True))
        c.post("/login", data={"token": ADMIN_TOKEN, "csrf_token": tok})
        page = c.get("/config").get_data(as_text=True)
        table = page[page.index('id="api-keys"'):]
        assert "notebook" in table and "export" in table and "never" not in table
        assert rk not in page and read_entry["sha256"] not in page
    finally:
        rt.close()


def test_removing_a_key_and_reloading_revokes_it_without_a_restart(served):
    key, entry = new_key("colleague")
    base, cfg = served(server={"read_token": READ_TOKEN, "api_keys": [entry]})
    h = {"Authorization": f"Bearer {key}"}
    for _ in range(4):  # either worker
        assert requests.get(base + "/api/v1/symbols", headers=h, timeout=10).status_code == 200
    data = yaml.safe_load(cfg.read_text())
    data["server"]["api_keys"] = []
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    r = requests.post(base + "/api/v1/config/reload",
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    assert r.status_code == 200, r.text
    # each worker adopts the reloaded config at its next request after the
    # version check (at most once a second); then the key is refused by both
    deadline = time.monotonic() + 20
    refused_in_a_row = 0
    while refused_in_a_row < 6 and time.monotonic() < deadline:
        code = requests.get(base + "/api/v1/symbols", headers=h, timeout=10).status_code
        refused_in_a_row = refused_in_a_row + 1 if code == 401 else 0
        time.sleep(0.2)
    assert refused_in_a_row >= 6
