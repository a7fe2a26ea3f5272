"""Podman for the container journey (tests/deploy/test_compose_journey.py).

The machines that run the tests reach Debian's and PyPI's packages but no
container registry, so the public Python slim image cannot be pulled. The base
image is made here instead: a Debian 12 root filesystem with python3 and its
venv module (``mmdebstrap``, cached like the host journey's, see host.py)
imported with ``podman import``, plus the machine's extra CA certificates (a
TLS-inspecting proxy's: without them pip inside a build cannot verify PyPI).
Its tag is keyed on everything that decides its content, so a change rebuilds
it and an unchanged one is reused, with podman's layer cache, between runs.

Podman runs with ``runc`` and no default ulimits (crun refuses this machine's
hybrid cgroups, and raising RLIMIT_NOFILE is not permitted here), through a
containers.conf of this module's own (CONTAINERS_CONF): the machine's
configuration is left alone. Images are built in the docker format, which
keeps HEALTHCHECK (BUILDAH_FORMAT=docker).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.deploy import host as hostmod

PACKAGES = ("podman", "podman-compose", "runc", "mmdebstrap")
TOOLS = {"podman": "podman", "podman-compose": "podman-compose", "runc": "runc",
         "mmdebstrap": "mmdebstrap"}
BASE_INCLUDE = ("python3", "python3-venv", "ca-certificates")
BASE_REPO = "localhost/mda-python-base"
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
runtime = "runc"
"""
# The base image's last layer: the machine's extra CA certificates.
BASE_CONTAINERFILE = """\
FROM {imported}
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
"""


class PodmanError(RuntimeError):
    pass


def unavailable() -> str | None:
    """Why podman cannot run the stack here (None: it can). Installs the
    Debian packages when they are missing and we are root."""
    if os.geteuid() != 0:
        return "the container journey needs root (rootful podman, mmdebstrap)"
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env,
                       capture_output=True, timeout=1200)
        missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        return f"missing tools and could not install them: apt-get install {' '.join(missing)}"
    if not hostmod.APT_SOURCES.exists():
        return f"{hostmod.APT_SOURCES} not found: no apt mirror to build a Debian base from"
    return None


def env(**extra: str) -> dict[str, str]:
    """The environment podman and podman-compose run with."""
    conf = hostmod.CACHE_DIR / "podman" / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(CONTAINERS_CONF)
    out = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "APPLIANCE_"))}
    out.update(CONTAINERS_CONF=str(conf), BUILDAH_FORMAT="docker")
    out.update(extra)
    return out


def podman(*args: str, check: bool = True, timeout: float = 600,
           **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                       env=env(), **kw)
    if check and p.returncode != 0:
        raise PodmanError(f"podman {' '.join(args)} exited {p.returncode}:\n"
                          f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _local_certs() -> list[Path]:
    return sorted(hostmod.LOCAL_CA_DIR.glob("*.crt")) if hostmod.LOCAL_CA_DIR.is_dir() else []


def base_image(log=print) -> str:
    """The tag of the local Debian 12 + python3 base image, built on first use."""
    tarball = hostmod.rootfs_tarball(log=log, include=BASE_INCLUDE, name="python-base")
    certs = _local_certs()
    key = hashlib.sha256("\0".join(
        [tarball.name, BASE_CONTAINERFILE, *[c.name + c.read_text() for c in certs]]
    ).encode()).hexdigest()[:16]
    tag = f"{BASE_REPO}:{key}"
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    imported = f"{BASE_REPO}-rootfs:{tarball.stem.rsplit('-', 1)[-1]}"
    if podman("image", "exists", imported, check=False).returncode != 0:
        podman("import", str(tarball), imported, timeout=900)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "certs").mkdir()
        for c in certs:
            shutil.copy2(c, Path(d) / "certs" / c.name)
        (Path(d) / "Containerfile").write_text(BASE_CONTAINERFILE.format(imported=imported))
        podman("build", "--format", "docker", "-t", tag, d, timeout=900)
    log(f"built the base image {tag}")
    return tag


def project_containers(project: str) -> list[dict]:
    """name, service, state, pid and hostname of every container of a compose project."""
    ids = podman("ps", "-aq", "--filter", f"label=io.podman.compose.project={project}").stdout.split()
    if not ids:
        return []
    fmt = ('{{.Name}}\t{{index .Config.Labels "com.docker.compose.service"}}\t'
           '{{.State.Status}}\t{{.State.Pid}}\t{{.Config.Hostname}}\t{{.RestartCount}}')
    rows = []
    for line in podman("inspect", "-f", fmt, *ids).stdout.splitlines():
        name, service, state, pid, hostname, restarts = line.split("\t")
        rows.append({"name": name, "service": service, "state": state, "pid": int(pid),
                     "hostname": hostname, "restarts": int(restarts)})
    return rows


def remove_project(project: str) -> None:
    """Every container, volume and network of a compose project, whatever is left."""
    ids = podman("ps", "-aq", "--filter", f"label=io.podman.compose.project={project}",
                 check=False).stdout.split()
    if ids:
        podman("rm", "-f", "-t", "0", *ids, check=False, timeout=120)
    vols = podman("volume", "ls", "-q", "--filter", f"label=io.podman.compose.project={project}",
                  check=False).stdout.split()
    vols += [v for v in podman("volume", "ls", "-q", check=False).stdout.split()
             if v.startswith(f"{project}_")]
    if vols:
        podman("volume", "rm", "-f", *sorted(set(vols)), check=False)
    podman("network", "rm", "-f", f"{project}_default", check=False)
