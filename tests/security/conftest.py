"""The security suite: each finding of issue 14 shown on a running appliance
(real PostgreSQL and Redis from tests/conftest.py; gunicorn with two workers
where it matters which worker answers)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from .helpers import ROOT, free_port, secured


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/security" in str(item.fspath):
            item.add_marker(pytest.mark.security)


@pytest.fixture
def served(config_factory, tmp_path):
    """``start(**config_overrides) -> (base_url, config_path)``: ``appliance serve``
    (gunicorn, two gevent workers) on a free port; stopped at the end."""
    started: list[subprocess.Popen] = []

    def start(**overrides):
        port = free_port()
        server = {**secured(), "workers": 2, **overrides.pop("server", {}),
                  "bind": f"127.0.0.1:{port}"}
        cfg = config_factory(server=server, **overrides)
        log = open(tmp_path / f"serve-{port}.log", "wb")
        p = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(cfg),
                              "serve"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        started.append(p)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise AssertionError((tmp_path / f"serve-{port}.log").read_text())
            try:
                requests.get(base + "/health", timeout=10)
                return base, cfg
            except requests.RequestException:  # not listening yet, or still starting
                time.sleep(0.2)
        raise AssertionError("appliance serve did not answer")

    yield start
    for p in started:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


