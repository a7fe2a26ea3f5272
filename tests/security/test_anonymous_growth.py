"""No anonymous way to grow memory or disk (issue 24): metrics label values
come from closed sets, an anonymous visitor stores no session, /health probes
once per interval."""
from __future__ import annotations

import random
import socket
import string
from urllib.parse import urlsplit

import requests
from prometheus_client.parser import text_string_to_metric_families

from .helpers import ADMIN_TOKEN

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
