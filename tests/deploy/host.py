"""A throwaway Debian 12 host with systemd as PID 1, for the deployment journey.

``Host`` is a systemd-nspawn container booted from a cached mmdebstrap root
filesystem. It shares the machine's network (so loopback fakes on the
machine are reachable from it and its services must use free ports), and it
gets the machine's apt and pip configuration, so that apt-get and pip inside
reach the same package mirrors the machine uses. Ansible reaches it with the
``community.docker.nsenter`` connection; commands run inside with nsenter.

``BackupDrive`` is an ext4 image on a loop device, passed into the container
as a block device, so the backup_drive role mounts a real filesystem by UUID.

Everything here needs root (nspawn, loop devices, mounts); ``unavailable``
says why it cannot run instead of failing.
"""
from __future__ import annotations

import configparser
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
VARIANT = "minbase"
INCLUDE = ("systemd", "systemd-sysv", "dbus", "python3", "sudo", "iproute2")
CACHE_DIR = Path(os.environ.get("APPLIANCE_TEST_CACHE", "/var/cache/market-data-appliance-test"))
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
# Debian packages that provide the tools, installed on demand when running as root.
TOOL_PACKAGES = {"mmdebstrap": "mmdebstrap", "systemd-nspawn": "systemd-container"}
NSPAWN_RUN_DIR = Path("/run/systemd/nspawn")
ROOT_TMPFS_SIZE = "4g"  # a deployed host uses about 1.5 GB
# The machine's trust anchors beyond Debian's bundle (a TLS-inspecting proxy's CA,
# for instance): without them pip inside the host cannot verify the index.
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")


class HostError(RuntimeError):
    pass


def _run(argv, *, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise HostError(f"{shlex.join(str(a) for a in argv)} exited {p.returncode}:\n"
                        f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


# --------------------------------------------------------------------------- availability

def unavailable() -> str | None:
    """Why a host cannot be started here (None: it can). Installs mmdebstrap
    and systemd-container with apt-get when they are missing and we are root."""
    if os.geteuid() != 0:
        return "the host journey needs root (systemd-nspawn, loop devices, mounts)"
    if not Path("/proc/self/ns/pid").exists():
        return "no Linux namespaces here"
    missing = [pkg for tool, pkg in TOOL_PACKAGES.items() if shutil.which(tool) is None]
    if missing and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env,
                       capture_output=True, timeout=900)
        missing = [pkg for tool, pkg in TOOL_PACKAGES.items() if shutil.which(tool) is None]
    if missing:
        return f"missing tools and could not install them: apt-get install {' '.join(missing)}"
    if not APT_SOURCES.exists():
        return f"{APT_SOURCES} not found: no apt mirror to build a Debian root filesystem from"
    return None


def free_port() -> int:
    """A TCP port nothing on this machine listens on (the host shares its network)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_nspawn_run_dir() -> bool:
    """Mount a tmpfs on /run/systemd/nspawn unless something is mounted
    there (True: mounted now). nspawn keeps per-machine state there; on a
    machine without systemd as PID 1 nothing else mounts it."""
    NSPAWN_RUN_DIR.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mountpoint", "-q", str(NSPAWN_RUN_DIR)]).returncode != 0:
        _run(["mount", "-t", "tmpfs", "tmpfs", NSPAWN_RUN_DIR])
        return True
    return False


# --------------------------------------------------------------------------- root filesystem

def _apt_opt_files() -> list[Path]:
    """apt configuration files of this machine that switch off the Release
    date checks (a mirror snapshot's Release files are older than their
    Valid-Until): mmdebstrap needs them too."""
    out = []
    for f in sorted(Path("/etc/apt/apt.conf.d").glob("*")):
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        if "Check-Valid-Until" in text or "Check-Date" in text:
            out.append(f)
    return out


def rootfs_tarball(log=print, include: tuple[str, ...] = INCLUDE, name: str = "debian") -> Path:
    """The cached root filesystem tarball, built with mmdebstrap on first use.
    Keyed on everything that decides its content, so a change rebuilds it.
    ``include``: the packages beyond the variant's (the container journey
    asks for a slim Python base instead of a systemd host)."""
    opts = _apt_opt_files()
    key = hashlib.sha256(json.dumps({
        "suite": SUITE, "variant": VARIANT, "include": sorted(include),
        "sources": APT_SOURCES.read_text(), "aptopt": [f.read_text() for f in opts],
    }, sort_keys=True).encode()).hexdigest()[:16]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tarball = CACHE_DIR / f"{name}-{SUITE}-{VARIANT}-{key}.tar"
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same tarball
        if tarball.exists():
            return tarball
        partial = tarball.with_suffix(".tar.partial")
        t0 = time.monotonic()
        argv = ["mmdebstrap", f"--variant={VARIANT}", f"--include={','.join(include)}",
                *[f"--aptopt={f}" for f in opts], SUITE, "--format=tar", "-",
                APT_SOURCES]
        with open(partial, "wb") as out:
            p = subprocess.run([str(a) for a in argv], stdout=out, stderr=subprocess.PIPE,
                               text=False, timeout=900)
        if p.returncode != 0:
            partial.unlink(missing_ok=True)
            raise HostError(f"mmdebstrap failed:\n{p.stderr.decode(errors='replace')[-3000:]}")
        partial.rename(tarball)
        log(f"built {tarball.name} in {time.monotonic() - t0:.0f} s")
        return tarball


def _pip_local_paths() -> list[Path]:
    """Local folders named by the machine's pip configuration (find-links,
    file:// indexes): bound read-only into the host so its pip.conf works there."""
    paths = []
    for cp, section in _pip_sections():
        for key in ("find-links", "extra-index-url", "index-url"):
            for item in cp.get(section, key, fallback="").split():
                item = item.removeprefix("file://")
                if item.startswith("/") and Path(item).is_dir():
                    # an index URL ends in /simple: bind the folder above it
                    p = Path(item)
                    paths.append(p.parent if p.name == "simple" else p)
    return sorted(set(paths))


def _pip_sections():
    """(parser, section) of every section of the machine's pip configuration."""
    for conf in (Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf")):
        if not conf.exists():
            continue
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read(conf)
        except configparser.Error:
            continue
        for section in cp.sections():
            yield cp, section


def _ca_files() -> list[Path]:
    """CA bundles the machine's pip configuration names."""
    out = []
    for cp, section in _pip_sections():
        cert = cp.get(section, "cert", fallback="").strip()
        if cert and Path(cert).is_file():
            out.append(Path(cert))
    return out


# --------------------------------------------------------------------------- cgroups

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_hierarchies() -> list[Path]:
    """Where systemd keeps its tree: the unified hierarchy (cgroup v2, or
    "unified" beside v1 controllers) and the named v1 "systemd" hierarchy."""
    if (CGROUP_ROOT / "cgroup.procs").exists():
        return [CGROUP_ROOT]
    return [p for p in (CGROUP_ROOT / "systemd", CGROUP_ROOT / "unified")
            if (p / "cgroup.procs").exists()]


def _make_cgroup(rel: str) -> list[Path]:
    dirs = []
    for h in _cgroup_hierarchies():
        d = h / rel
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        dirs.append(d)
    return dirs


def _enter_cgroup(dirs: list[Path]) -> None:
    """In the forked child, before nspawn runs: into its own cgroups."""
    for d in dirs:
        try:
            (d / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            pass


def _remove_cgroup(rel: str) -> None:
    """The cgroup and what the container's systemd left below it, innermost first."""
    for h in _cgroup_hierarchies():
        top = h / rel
        if not top.is_dir():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()),
                        key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass
        for d in (top, *top.relative_to(h).parents):  # and its parents, when empty
            if d == Path("."):
                break
            try:
                (h / d).rmdir()
            except OSError:
                break


# --------------------------------------------------------------------------- backup drive

class BackupDrive:
    """An ext4 filesystem image attached to a loop device."""

    def __init__(self, image: Path, size_mb: int = 256):
        self.image = image
        _run(["truncate", "-s", f"{size_mb}M", image])
        _run(["mkfs.ext4", "-q", "-L", "mda-backup", image])
        self.device = _run(["losetup", "--find", "--show", image]).stdout.strip()
        self.uuid = _run(["blkid", "-s", "UUID", "-o", "value", self.device]).stdout.strip()

    def detach(self) -> None:
        if self.device:
            _run(["losetup", "-d", self.device], check=False)
            self.device = ""
        self.image.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the host

class Host:
    """A booted Debian 12 container. ``pid`` is its PID 1 as seen from here."""

    def __init__(self, workdir: Path, name: str, drive: BackupDrive | None = None,
                 nspawn_args: tuple[str, ...] = (), cgroup: str | None = None):
        self.workdir = workdir
        self.name = name
        self.nspawn_args = tuple(nspawn_args)  # e.g. --network-bridge=... (tests/deploy/cluster.py)
        # With --keep-unit the container's systemd takes nspawn's own cgroup as its
        # root; containers started from one cgroup would share one tree (two hosts'
        # system.slice/postgresql.service) and their systemds trip over each other
        # (units fail with status 219/CGROUP). ``cgroup``: a cgroup of its own.
        self.cgroup = cgroup
        self.root = workdir / "root"
        self.drive = drive
        self.proc: subprocess.Popen | None = None
        self.pid = 0
        self.boots = 0
        self._console = None
        self._mounted_run_dir = False

    # -- provisioning ----------------------------------------------------------
    def prepare(self, tarball: Path, source: Path, source_dest: str, ignore) -> None:
        """Unpack the root filesystem and give it what a real host would have:
        the machine's apt/pip configuration, the source tree, and a
        policy-rc.d that keeps package installs from starting services (the
        roles start them once their settings are written)."""
        self.root.mkdir(parents=True)
        # In memory: the machine's disk is shared, and package installs,
        # pip and PostgreSQL's initdb are most of a first deploy. It is a
        # filesystem of its own, so power cycles keep it and teardown is a
        # single umount.
        _run(["mount", "-t", "tmpfs", "-o", f"size={ROOT_TMPFS_SIZE},mode=0755", "tmpfs",
              self.root])
        _run(["tar", "-C", self.root, "-xf", tarball])
        etc = self.root / "etc"
        # The machine's apt configuration replaces the one mmdebstrap wrote
        # (same mirror; two source files would list every index twice).
        for f in (etc / "apt" / "sources.list.d").glob("*"):
            f.unlink()
        shutil.copytree("/etc/apt", etc / "apt", dirs_exist_ok=True, symlinks=True)
        if Path("/etc/pip.conf").exists():
            shutil.copy2("/etc/pip.conf", etc / "pip.conf")
        if Path("/etc/xdg/pip").is_dir():
            shutil.copytree("/etc/xdg/pip", etc / "xdg" / "pip", dirs_exist_ok=True)
        for ca in _ca_files():
            dest = self.root / str(ca).lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ca, dest)
        if LOCAL_CA_DIR.is_dir():
            shutil.copytree(LOCAL_CA_DIR, self.root / str(LOCAL_CA_DIR).lstrip("/"),
                            dirs_exist_ok=True)
        # dpkg without fsync, when this machine runs it so: a throwaway host
        # loses nothing by it, and package installs are most of a first deploy.
        for f in Path("/etc/dpkg/dpkg.cfg.d").glob("*"):
            if f.is_file() and "force-unsafe-io" in f.read_text(errors="replace"):
                shutil.copy2(f, etc / "dpkg" / "dpkg.cfg.d" / f.name)
        policy = self.root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\n# test host: package installs start no service\nexit 101\n")
        policy.chmod(0o755)
        (etc / "hostname").write_text(f"{self.name}\n")
        # As Debian's installer writes it: sudo (Ansible's become) resolves the
        # host name on every call and waits for DNS when it is not here.
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{self.name}\n"
                                   "::1\tlocalhost ip6-localhost ip6-loopback\n")
        shutil.copytree(source, self.root / source_dest.lstrip("/"), ignore=ignore, symlinks=True)

    def boot(self, timeout: float = 90) -> None:
        self._mounted_run_dir = ensure_nspawn_run_dir() or self._mounted_run_dir
        argv = ["systemd-nspawn", "-D", self.root, "-b", "-M", self.name, "--register=no",
                "--keep-unit", "--console=passive"]
        for p in _pip_local_paths():
            argv.append(f"--bind-ro={p}")
        argv += self.nspawn_args
        if self.drive is not None and self.drive.device:
            argv += [f"--bind={self.drive.device}",
                     f"--property=DeviceAllow={self.drive.device} rwm"]
        self.boots += 1
        self._console = open(self.workdir / f"console-{self.boots}.log", "w")
        dirs = _make_cgroup(self.cgroup) if self.cgroup else []
        self.proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                                     stdout=self._console, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     preexec_fn=(lambda: _enter_cgroup(dirs)) if dirs else None)
        deadline = time.monotonic() + timeout
        self.pid = 0
        while not self.pid:
            if self.proc.poll() is not None:
                raise HostError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.console()}")
            if time.monotonic() > deadline:
                raise HostError(f"no systemd in the container after {timeout:.0f} s:\n"
                                f"{self.console()}")
            self.pid = self._init_pid()
            time.sleep(0.1)
        while True:
            state = self.sh("systemctl is-system-running --wait", check=False,
                            timeout=max(5, deadline - time.monotonic())).stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise HostError(f"systemd is {state!r} after {timeout:.0f} s")
            time.sleep(0.5)

    def _init_pid(self) -> int:
        """The container's PID 1: the child of systemd-nspawn that runs systemd."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return 0
        for pid in children.split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            except OSError:
                continue
        return 0

    def console(self, lines: int = 40) -> str:
        try:
            text = (self.workdir / f"console-{self.boots}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poweroff(self, timeout: float = 90) -> None:
        """SIGTERM to nspawn: systemd in the container shuts down in order."""
        if not self.running:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        finally:
            if self._console:
                self._console.close()
                self._console = None
            self.pid = 0

    def destroy(self) -> None:
        """Gone without a shutdown: killing the container's PID 1 ends every
        process in its PID namespace at once, and nspawn exits with it."""
        if self.running:
            pid = self.pid or self._init_pid()
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.poweroff(timeout=30)
        if self.root.exists():
            # Innermost first; anything still mounted below the root would
            # otherwise be deleted through the mount.
            for line in reversed(Path("/proc/mounts").read_text().splitlines()):
                target = line.split()[1]
                if target == str(self.root) or target.startswith(str(self.root) + "/"):
                    _run(["umount", "-l", target], check=False)
            shutil.rmtree(self.root, ignore_errors=True)
        if self.cgroup:
            _remove_cgroup(self.cgroup)
        # Left mounted while another container (a concurrent run) may use it.
        if self._mounted_run_dir and _run(["pgrep", "-x", "systemd-nspawn"],
                                          check=False).returncode != 0:
            _run(["umount", NSPAWN_RUN_DIR], check=False)
            self._mounted_run_dir = False

    # -- running commands inside -----------------------------------------------
    def sh(self, command: str, *, check: bool = True, timeout: float = 300,
           input: str | None = None) -> subprocess.CompletedProcess:
        """``sh -c command`` as root inside the host, with a clean environment
        (the machine's own variables are not the host's)."""
        if not self.pid:
            raise HostError("the host is not running")
        argv = ["nsenter", "-t", str(self.pid), "-a", "--", "/usr/bin/env", "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8", "HOME=/root", "/bin/sh", "-c", command]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise HostError(f"on {self.name}: {command}\nexit {p.returncode}\n"
                            f"{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
        return p

    def systemctl_show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {shlex.quote(unit)} "
                      + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
