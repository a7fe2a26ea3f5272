"""Three throwaway Debian 12 hosts on a private bridge, for the multi-host journey.

Each host is a ``host.Host`` (systemd-nspawn, systemd as PID 1) attached to
the bridge ``mdabr0`` with ``--network-bridge``, with a fixed address in
10.77.0.0/24; the machine is 10.77.0.1 on the bridge, where the test's fake
vendor listens. The bridge exists only while the test runs.

The hosts have no route out of the bridge, so what a deploy would download
is put into their root filesystem beforehand: ``cluster_rootfs`` is the
cached Debian root filesystem of ``host.rootfs_tarball`` plus the Debian
packages the roles install, the appliance's locked Python dependencies
installed (hash-checked) in the role's virtualenv, and a wheelhouse with the
package's build backend (``WHEELHOUSE``; the deploy installs with ``pip
--no-index --find-links``). It is built once, with the machine's network, and cached
next to the base tarball, keyed on the package lists and pyproject.toml.

Each host's nspawn runs in a cgroup of its own (``mda-cluster/<name>``):
started from one cgroup, the hosts' systemds would share one cgroup tree and
fail each other's units now and then (status 219/CGROUP).

Everything is torn down by ``Cluster.destroy`` (machines, their tmpfs roots,
the bridge), also when a test fails.
"""
from __future__ import annotations

import fcntl
import hashlib
import shlex
import subprocess
import time
import tomllib
from pathlib import Path

import yaml

from tests.deploy import host as hostmod

BRIDGE = "mdabr0"
SUBNET = "10.77.0"
GATEWAY = f"{SUBNET}.1"
PREFIX_LEN = 24
WHEELHOUSE = "/var/cache/appliance-wheels"
VENV = "/opt/appliance/venv"  # the role's appliance_venv_dir
REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "ansible" / "roles"
# services the packages enable on install; the roles enable them where they run
DISABLED_SERVICES = ("postgresql.service", "redis-server.service")


def _role_packages() -> list[str]:
    """The Debian packages the host, postgresql and redis roles install (their defaults)."""
    pkgs: list[str] = []
    for role, var in (("host", "host_packages"), ("postgresql", "postgresql_packages"),
                      ("redis", "redis_packages")):
        pkgs += yaml.safe_load((ROLES_DIR / role / "defaults" / "main.yml").read_text())[var]
    # what Ansible's apt module installs on first use when it is missing
    pkgs.append("python3-apt")
    return sorted(set(pkgs))


def _build_requires() -> list[str]:
    """pyproject.toml's build backend requirements."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]


def _pip_version() -> str:
    """The pip the appliance role installs first (its default)."""
    return yaml.safe_load((ROLES_DIR / "appliance" / "defaults" / "main.yml").read_text()
                          )["appliance_pip_version"]


def _build_script(packages: list[str]) -> str:
    """What runs in the builder (the cache is keyed on it)."""
    backend = " ".join(shlex.quote(r) for r in _build_requires())
    return " && ".join([
        "apt-get update -qq",
        f"apt-get install -y -qq {' '.join(packages)}",
        # Installed is not deployed: a host runs PostgreSQL or Redis only when
        # its role starts them (a worker host has neither), as on a host that
        # installs the packages at deploy time.
        f"systemctl disable -q {' '.join(DISABLED_SERVICES)}",
        # The builder shares the machine's network, where 5432 may be taken, so
        # the package's new cluster may have got another port; a host's own is 5432.
        "sed -i 's/^port = [0-9]*/port = 5432/' /etc/postgresql/*/main/postgresql.conf",
        "python3 -m venv /tmp/wheel-build",
        # The role installs requirements.lock with --require-hashes: a wheel
        # built here from an sdist would not match its hash, so the locked
        # packages are installed (hash-checked, with the network) into the
        # virtualenv the role uses, where the role finds them satisfied;
        # the wheelhouse holds the package itself and its build backend.
        f"python3 -m venv {VENV} && {VENV}/bin/pip install -q --require-hashes"
        " -r /opt/appliance/src/requirements.lock",
        f"/tmp/wheel-build/bin/pip wheel -q --no-deps --wheel-dir {WHEELHOUSE} /opt/appliance/src",
        # the build backend, for `pip install --no-index` of the source tree,
        # and the pip the role installs first
        f"/tmp/wheel-build/bin/pip download -q --dest {WHEELHOUSE} {backend} "
        f"pip=={_pip_version()}",
        "rm -rf /tmp/wheel-build /opt/appliance/src /var/lib/apt/lists/partial",
    ])


def cluster_rootfs(source: Path, source_ignore, log=print) -> Path:
    """The cached root filesystem with the roles' packages and the wheelhouse."""
    base = hostmod.rootfs_tarball(log=log)
    packages = _role_packages()
    script = _build_script(packages)
    key = hashlib.sha256("\n".join([base.name, script,
                                    (source / "pyproject.toml").read_text(),
                                    (source / "requirements.lock").read_text()]).encode()
                         ).hexdigest()[:16]
    tarball = hostmod.CACHE_DIR / f"cluster-{key}.tar"
    with open(hostmod.CACHE_DIR / ".lock-cluster", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        t0 = time.monotonic()
        work = Path(subprocess.run(["mktemp", "-d", "/tmp/mda-rootfs-XXXXXX"], check=True,
                                   capture_output=True, text=True).stdout.strip())
        builder = hostmod.Host(work, "mda-rootfs-build")
        try:
            builder.prepare(base, source, "/opt/appliance/src", source_ignore)
            builder._mounted_run_dir = hostmod.ensure_nspawn_run_dir()
            argv = ["systemd-nspawn", "-q", "-D", str(builder.root), "-M", builder.name,
                    "--register=no", "--keep-unit", "--pipe",
                    "--setenv=DEBIAN_FRONTEND=noninteractive",
                    *[f"--bind-ro={p}" for p in hostmod._pip_local_paths()],
                    "/bin/sh", "-c", script]
            hostmod._run(argv, timeout=1800)
            partial = tarball.with_suffix(".tar.partial")
            hostmod._run(["tar", "-C", builder.root, "-cf", partial, "."], timeout=600)
            partial.rename(tarball)
        finally:
            builder.destroy()
            subprocess.run(["rm", "-rf", str(work)], check=False)
        log(f"built {tarball.name} in {time.monotonic() - t0:.0f} s")
        return tarball


class Bridge:
    """A Linux bridge with the machine's address on it; gone after ``delete``."""

    def __init__(self, name: str = BRIDGE, address: str = f"{GATEWAY}/{PREFIX_LEN}"):
        self.name = name
        if hostmod._run(["ip", "link", "show", name], check=False).returncode == 0:
            # left over by a run that was killed: nothing else uses this name
            hostmod._run(["ip", "link", "del", name], check=False)
        hostmod._run(["ip", "link", "add", name, "type", "bridge"])
        self.up = True
        hostmod._run(["ip", "addr", "add", address, "dev", name])
        hostmod._run(["ip", "link", "set", name, "up"])

    def delete(self) -> None:
        if self.up:
            hostmod._run(["ip", "link", "del", self.name], check=False)
            self.up = False


class Cluster:
    """``hosts[i]`` is 10.77.0.(11 + i). ``start`` prepares and boots them."""

    def __init__(self, workdir: Path, names: list[str]):
        self.workdir = workdir
        self.bridge: Bridge | None = None
        self.hosts: list[hostmod.Host] = []
        self.addresses = [f"{SUBNET}.{11 + i}" for i in range(len(names))]
        self.names = names

    def start(self, tarball: Path, source: Path, source_dest: str, ignore, log=print) -> None:
        self.bridge = Bridge()
        for name in self.names:
            d = self.workdir / name
            d.mkdir()
            h = hostmod.Host(d, name, nspawn_args=(f"--network-bridge={self.bridge.name}",),
                             cgroup=f"mda-cluster/{name}")
            self.hosts.append(h)
            h.prepare(tarball, source, source_dest, ignore)
        for h in self.hosts:
            self.boot(h)
            log(f"{h.name} booted at {self.address(h)} (PID 1 is {h.pid})")

    def address(self, h: hostmod.Host) -> str:
        return self.addresses[self.hosts.index(h)]

    def boot(self, h: hostmod.Host) -> None:
        """Boot (or boot again) and give the host its fixed address on the bridge."""
        h.boot()
        h.sh(f"ip link set host0 up && ip addr replace {self.address(h)}/{PREFIX_LEN} dev host0"
             f" && ip route replace default via {GATEWAY}")
        deadline = time.monotonic() + 30
        while h.sh(f"ping -c1 -W1 {GATEWAY} >/dev/null 2>&1 || "
                   f"python3 -c 'import socket; socket.create_connection((\"{GATEWAY}\", 9), 1)'"
                   " 2>&1 | grep -q refused", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise hostmod.HostError(f"{h.name}: no link to {GATEWAY} on the bridge")
            time.sleep(0.5)

    def destroy(self) -> None:
        for h in self.hosts:
            try:
                h.destroy()
            except Exception:  # noqa: BLE001 - tear down the rest regardless
                pass
        if self.bridge is not None:
            self.bridge.delete()


def sql(h: hostmod.Host, query: str, db: str = "market_data", check: bool = True) -> str:
    """psql as the postgres OS user on host ``h`` (unaligned, tuples only)."""
    return h.sh(f"runuser -u postgres -- psql -d {db} -XAtqc {shlex.quote(query)}",
                check=check).stdout.strip()
