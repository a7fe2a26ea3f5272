"""Reads need a credential as soon as the appliance can be reached from the
network (bound beyond loopback, or behind the TLS front), unless the operator
opts out with server.anonymous_reads (issue 24, 9)."""
from __future__ import annotations

import pytest

from .helpers import ADMIN_TOKEN, READ_TOKEN, app_for, secured

READS = ["/api/v1/symbols", "/api/v1/config", "/api/v1/jobs", "/api/v1/alerts", "/metrics"]


def _codes(config_factory, **server) -> dict[str, int]:
    app, rt = app_for(config_factory(server=secured(**server)))
    try:
        c = app.test_client()
        out = {p: c.get(p).status_code for p in READS}
        out["/symbols"] = c.get("/symbols").status_code
        out["/health"] = c.get("/health").status_code
        return out
    finally:
        rt.close()


@pytest.mark.parametrize("server", [
    {"bind": "0.0.0.0:8000"},
    {"bind": "10.1.2.3:8000"},
    {"bind": "appliance.example:8000"},
    {"bind": "127.0.0.1:8000", "trusted_proxy_hops": 1},  # the TLS front
])
def test_reachable_from_the_network_reads_need_a_credential(config_factory, server):
    codes = _codes(config_factory, **server)
    assert {p: codes[p] for p in READS} == {p: 401 for p in READS}, codes
    assert codes["/symbols"] == 302  # the console sends to the login
    assert codes["/health"] in (200, 503)  # /health stays open


def test_a_credential_reads_and_the_operator_can_open_reads_explicitly(config_factory):
    app, rt = app_for(config_factory(server=secured(bind="0.0.0.0:8000",
                                                    read_token=READ_TOKEN)))
    try:
        c = app.test_client()
        for tok in (READ_TOKEN, ADMIN_TOKEN):
            assert c.get("/api/v1/symbols",
                         headers={"Authorization": f"Bearer {tok}"}).status_code == 200
    finally:
        rt.close()
    codes = _codes(config_factory, bind="0.0.0.0:8000", anonymous_reads=True)
    assert {p: codes[p] for p in READS} == {p: 200 for p in READS}, codes


def test_on_loopback_reads_stay_open_by_default(config_factory):
    codes = _codes(config_factory, bind="127.0.0.1:8000")
    assert {p: codes[p] for p in READS} == {p: 200 for p in READS}, codes
