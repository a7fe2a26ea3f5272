"""Building a Runtime, or the web app, starts and connects nothing: with the
embedded PostgreSQL and Redis configured, no server process and no socket
appear until the runtime is opened (here: by the app's first request)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psutil
import pytest

from appliance.config.loader import load_config
from appliance.runtime import services
from appliance.runtime.runtime import Runtime
from appliance.web import create_app
from tests.conftest import write_config


@pytest.fixture
def embedded_cfg():
    d = Path(tempfile.mkdtemp(prefix="appl-r-", dir="/tmp"))  # short: unix socket paths
    path = write_config(d / "appliance.yaml", "", "")
    yield load_config(path)
    services.stop_embedded_redis(d / "var")
    services.stop_embedded_postgres(d / "var")
    shutil.rmtree(d, ignore_errors=True)


def _servers_of(data_dir: Path) -> list[str]:
    """Processes whose command line names ``data_dir`` (postgres, redis-server)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(data_dir) in cmd:
            out.append(cmd)
    return out


def _sockets_in(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.rglob("*") if p.is_socket()] if data_dir.exists() else []


def test_a_runtime_and_an_app_start_no_server_until_opened(embedded_cfg):
    data_dir = Path(embedded_cfg["data_dir"])
    rt = Runtime(embedded_cfg)
    app = create_app(embedded_cfg)
    assert _servers_of(data_dir) == []
    assert _sockets_in(data_dir) == []
    assert not (data_dir / "pg" / "postmaster.pid").exists()
    assert not (data_dir / "redis" / "redis.pid").exists()
    rt.close()  # closing an unopened runtime starts nothing either
    assert _servers_of(data_dir) == []

    # the first request resolves the services: the embedded servers start then
    r = app.test_client().get("/health")
    assert r.status_code in (200, 503), r.get_data(as_text=True)[:300]
    assert (data_dir / "pg" / "postmaster.pid").exists()
    assert (data_dir / "redis" / "redis.pid").exists()
    assert _servers_of(data_dir)
    app.config["RUNTIME"].close()
