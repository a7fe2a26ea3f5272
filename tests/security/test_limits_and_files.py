"""Findings 7 (a chunked body over server.max_request_bytes gets 413), 8 (a
manifest cannot point outside backup.path) and 9 (file modes whatever the
umask)."""
from __future__ import annotations

import http.client
import json
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from appliance.core.errors import BackupError
from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.ops import backups
from appliance.ops.backups import run_backup
from appliance.runtime import services
from appliance.runtime.runtime import Runtime

from .helpers import ADMIN_TOKEN, secured


def _chunked_post(base: str, path: str, body: bytes, chunk: int = 512) -> int:
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Authorization", f"Bearer {ADMIN_TOKEN}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for i in range(0, len(body), chunk):
            part = body[i:i + chunk]
            conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        conn.send(b"0\r\n\r\n")
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_chunked_body_over_the_limit_gets_413(served, database_url):
    base, _cfg = served(server={"max_request_bytes": 1024})
    pad = " " * 4000
    big = ('{"symbols": ["AAPL"]' + pad + '}').encode()
    assert _chunked_post(base, "/api/v1/backfill", big) == 413
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM job_runs").fetchone()[0] == 0
    small = b'{"symbols": ["AAPL"]}'
    assert _chunked_post(base, "/api/v1/backfill", small) == 202  # under the limit: read whole


# --------------------------------------------------------------------------- 8: manifests

def _write_manifest(bdir: Path, name: str, filename) -> Path:
    bdir.mkdir(parents=True, exist_ok=True)
    p = bdir / name
    p.write_text(json.dumps({"format": 1, "filename": filename, "created_at": "2024-01-02",
                             "archive": {"sha256": "0" * 64, "size_bytes": 6}}))
    return p


@pytest.mark.parametrize("filename", ["../victim.dump", "/tmp/x/victim.dump", "victim.dump",
                                      "sub/market_data_20240101_000000.dump"])
def test_a_manifest_cannot_name_a_file_outside_the_backup_path(runtime, tmp_path, filename):
    cfg = runtime.config
    bdir = Path(cfg["backup"]["path"])
    victim = tmp_path / "victim.dump"
    victim.write_text("victim")
    mp = _write_manifest(bdir, "market_data_20240101_000000.json", filename)
    with runtime.conn() as conn:
        res = backups.rescan(conn, cfg)
        assert res["manifests"] == 0  # refused, not catalogued
        assert conn.execute("SELECT count(*) FROM backups").fetchone()[0] == 0
    with pytest.raises(BackupError, match="not a backup archive name"):
        backups.resolve_backup(cfg, str(mp))
    assert victim.exists()


def test_retention_unlinks_only_archives_in_the_backup_path(config_factory, tmp_path):
    rt = Runtime.from_path(config_factory(server=secured(), retention={"backups_keep": 1}))
    try:
        rt.open()
        victim = tmp_path / "victim.dump"
        victim.write_text("victim")
        victim.with_suffix(".json").write_text("{}")
        with rt.conn() as conn:
            for i, path in enumerate([str(victim), str(victim)]):
                conn.execute("""INSERT INTO backups (filename, path, created_at, size_bytes,
                                sha256, status) VALUES (%s, %s, now() - %s * interval '1 day',
                                6, 'x', 'ok')""", (f"market_data_2024010{i}_000000.dump", path, i))
            deleted = backups.apply_retention(conn, rt.config)
        assert deleted  # the catalogue row goes...
        assert victim.exists() and victim.with_suffix(".json").exists()  # ...the files stay
    finally:
        rt.close()


# --------------------------------------------------------------------------- 9: modes

def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def open_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_backups_and_manifests_are_private_whatever_the_umask(runtime, open_umask):
    res = runs.execute(runtime, "backfill", runs.manual_slot(), run_backfill,
                       params={"symbols": ["AAPL"]})
    assert res["status"] == "ok"
    res = runs.execute(runtime, "backup", runs.manual_slot(), run_backup, params={})
    assert res["status"] == "ok", res
    archive = Path(res["path"])
    assert _mode(archive.parent) == 0o700
    assert _mode(archive) == 0o600
    assert _mode(backups.manifest_path_for(archive)) == 0o600


def test_data_dir_and_embedded_redis_are_private_whatever_the_umask(tmp_path, open_umask):
    data = tmp_path / "var"
    url = services.embedded_redis(data)
    try:
        import redis
        r = redis.Redis.from_url(url)
        r.set("k", "v")
        r.save()
        r.close()
        assert _mode(data / "redis") == 0o700
        files = [p for p in (data / "redis").iterdir() if p.is_file() and p.suffix != ".pid"]
        assert files and all(_mode(p) & 0o077 == 0 for p in files), \
            [(p.name, oct(_mode(p))) for p in files]
    finally:
        services.stop_embedded_redis(data)


def test_resolve_makes_data_dir_private(config_factory, open_umask, tmp_path):
    cfg_path = config_factory(server=secured())
    rt = Runtime.from_path(cfg_path)
    try:
        d = Path(rt.config["data_dir"])
        assert _mode(d) == 0o700
        rt.publish_config(rt.config)  # makes the sealing key
        assert _mode(d / "config.key") == 0o600
    finally:
        rt.close()


def test_embedded_postgres_folder_is_private(services_dir, pg_server_url):
    if os.environ.get("APPLIANCE_TEST_DATABASE_URL"):
        pytest.skip("an external PostgreSQL: no embedded folder")
    assert _mode(services_dir / "pg") == 0o700
