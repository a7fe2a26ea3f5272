"""A process's view of the appliance: the running config, where the services
are, a PostgreSQL pool and a Redis client.

The running config is shared by every process through Redis: a successful
reload stores the accepted file text, sealed (encrypted with a key kept in
``data_dir``, 0600, so that the secrets it may hold are not in clear in Redis
or its dump file), under ``appliance:config:sealed`` and bumps
``appliance:config:version``. Each process compares that version with its own
at most once a second (``config`` property) and swaps in the new config when
it changed; a job that is already running keeps the config it started with.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import redis
from psycopg_pool import ConnectionPool

from appliance.config.loader import (
    Config,
    default_config_path,
    env_file_path,
    load_config,
    with_boot_values,
)
from appliance.config.salvage import salvage_connection_settings
from appliance.core.errors import ConfigError
from appliance.runtime import replica as replica_mod
from appliance.runtime import services
from appliance.runtime.fs import local_secret
from appliance.runtime.logs import setup_logging  # noqa: F401  (kept importable from here)
from appliance.store import pool as db

log = logging.getLogger("appliance.runtime")

K_CONFIG_TEXT = "appliance:config:text"  # older versions: the text in clear; removed on publish
K_CONFIG_SEALED = "appliance:config:sealed"
K_CONFIG_SHA = "appliance:config:sha"
K_CONFIG_PATH = "appliance:config:path"
K_CONFIG_VERSION = "appliance:config:version"
K_BOOT_SEALED = "appliance:config:boot"  # the config of the last cold start (restart-only keys)
K_RESTART_SINCE = "appliance:config:restart_since"
K_HEARTBEAT = "appliance:heartbeat:{}"
#: the supervised processes' state, written by ``appliance up`` (read by /health and status)
K_PROCESSES = "appliance:processes"
REDIS_DOWN_BACKOFF_S = 10.0


class Runtime:
    """Config + endpoints + pool + redis for one process. Constructing one
    starts and connects nothing: the endpoints are resolved (which may start
    the embedded PostgreSQL and Redis) by ``open()`` or the first use of
    ``endpoints``, ``pool``, ``replica`` or ``redis``."""

    def __init__(self, config: Config, *, endpoints: services.Endpoints | None = None,
                 pool_size: int | None = None, check_interval: float = 1.0,
                 start_servers: bool = True):
        self._config = config
        #: False: attach to embedded servers that run, never start one (a
        #: command that only looks, like ``status``, must see them down)
        self._start_servers = start_servers
        self._boot: Config | None = None
        self._pinned = False
        self._config_version = 0
        self._last_check = 0.0
        self._lock = threading.Lock()
        self._resolve_lock = threading.Lock()
        self.check_interval = check_interval
        self._pool_size = pool_size
        self._endpoints = endpoints
        self._pool: ConnectionPool | None = None
        self._outage = db.Outage()  # the primary's, for reads (``_pooled_read``)
        self._replica: replica_mod.Replica | None = None
        self._replica_made = False
        self._redis: redis.Redis | None = None
        self._opened = False

    @property
    def endpoints(self) -> services.Endpoints:
        """Where PostgreSQL and Redis are; resolved once, on first use (the
        embedded servers are started or attached to then)."""
        if self._endpoints is None:
            with self._resolve_lock:
                if self._endpoints is None:
                    self._endpoints = services.resolve(self._config,
                                                       start=self._start_servers)
        return self._endpoints

    @property
    def pool(self) -> ConnectionPool:
        """The primary's pool (made on first use, opened by ``open()``)."""
        if self._pool is None:
            url = self.endpoints.database_url
            with self._resolve_lock:
                if self._pool is None:
                    d = self._config["database"]
                    self._pool = db.make_pool(
                        url, max_size=self._pool_size or d["pool_size"],
                        connect_timeout=d["connect_timeout_seconds"],
                        statement_timeout_s=d["statement_timeout_seconds"])
        return self._pool

    @property
    def replica(self) -> replica_mod.Replica | None:
        """The read replica (``database.read_url``), or None."""
        if not self._replica_made:
            url = self.endpoints.database_url if self._config["database"].get("read_url") \
                else None
            with self._resolve_lock:
                if not self._replica_made:
                    self._replica = self._make_replica(self._config, self._pool_size, url)
                    self._replica_made = True
        return self._replica

    @staticmethod
    def _make_replica(config: Config, pool_size: int | None, primary_url: str | None = None):
        d = config["database"]
        if not d.get("read_url"):
            return None
        return replica_mod.Replica(d["read_url"], float(d["max_replica_lag_seconds"]),
                                   pool_size=pool_size or d["pool_size"],
                                   connect_timeout=d["connect_timeout_seconds"],
                                   statement_timeout_s=d["statement_timeout_seconds"],
                                   primary_url=primary_url)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def from_path(cls, path: str | os.PathLike | None = None, **kw) -> Runtime:
        """The running config when the appliance has one for ``path``, else the
        file (which must then validate)."""
        try:
            cfg, err = load_config(path), None
        except ConfigError as e:
            cfg, err = salvage_connection_settings(path or default_config_path()), e
        rt = cls(cfg, **kw)
        rt.adopt_running_config()
        if err is not None and rt.current_config() is cfg:  # nothing running to join
            rt.close()
            raise err
        return rt

    def open(self, wait: bool = True, timeout: float = 30.0) -> Runtime:
        if not self._opened:
            self.pool.open()
            if wait:
                self.pool.wait(timeout=timeout)
            self._opened = True
        return self

    def close(self) -> None:
        if self._opened and self._pool is not None:
            self._pool.close()
        self._opened = False
        if self._replica is not None:
            self._replica.close()
        if self._redis is not None:
            self._redis.close()

    @contextmanager
    def conn(self):
        """A pooled connection; commits on success, rolls back on error."""
        if not self._opened:
            self.open()
        with self.pool.connection() as c:
            yield c

    @contextmanager
    def primary_read_conn(self):
        """A pooled primary connection in autocommit mode, for single
        read-only statements: no BEGIN/COMMIT round trips (the pool makes it
        transactional again when it comes back)."""
        if not self._opened:
            self.open()
        with self._pooled_read() as c:
            c.autocommit = True
            replica_mod.READS.labels("primary").inc()
            yield c

    @contextmanager
    def _pooled_read(self):
        """A connection of the primary's pool for a read; refused at once
        (PoolTimeout) while the database is known unreachable (``db.Outage``)
        rather than after the pool's acquire timeout."""
        pool = self.pool
        probe = self._outage.admit(pool)
        given = False
        try:
            with pool.connection(timeout=db.PROBE_WAIT_S if probe else None) as c:
                given = True
                self._outage.given(pool, probe)
                yield c
        except BaseException as e:
            if not given:
                self._outage.failed(pool, probe, e)
            raise

    @contextmanager
    def read_conn(self):
        """A connection for API and console reads (autocommit, read only):
        the replica's when one is configured, answers and is recent enough
        (``database.max_replica_lag_seconds``), else the primary's. A replica
        that cannot give a connection is marked down and the primary answers."""
        with self._read_conn() as (c, _on_replica):
            yield c

    @contextmanager
    def _read_conn(self):
        """``read_conn``'s connection and whether the replica serves it."""
        rep = self.replica
        cm = None
        if rep is not None and rep.state().serving_reads:
            try:
                cm = rep.connection()
                c = cm.__enter__()
            except replica_mod.READ_ERRORS as e:
                rep.mark_down(e)
                cm = None
        if cm is None:
            with self.primary_read_conn() as c:
                yield c, False
            return
        replica_mod.READS.labels("replica").inc()
        try:
            yield c, True
        except BaseException as e:
            if isinstance(e, replica_mod.READ_ERRORS):
                rep.mark_down(e)
                replica_mod.note_failed_read(e)  # the web asks the primary once more
            if not cm.__exit__(*sys.exc_info()):
                raise
        else:
            cm.__exit__(None, None, None)

    def read(self, fn):
        """``fn(conn)`` on a read connection (see ``read_conn``); when the
        replica fails halfway (stopped, restarted) ``fn`` runs again on the
        primary. ``fn`` must only read."""
        on_replica = False
        try:
            with self._read_conn() as (c, on_replica):
                return fn(c)
        except replica_mod.READ_ERRORS:
            if not on_replica:
                raise
        with self.primary_read_conn() as c:
            return fn(c)

    def read_fresh(self, fn):
        """``read(fn)``, asked again on the primary when the replica has
        nothing (None): a row just written (a run queued a moment ago) may not
        have been replayed yet."""
        out = self.read(fn)
        if out is None and self.replica is not None:
            with self.primary_read_conn() as c:
                out = fn(c)
        return out

    def replica_state(self) -> replica_mod.ReplicaState:
        """The replica's state (``off`` when none is configured)."""
        return self.replica.state() if self.replica is not None else replica_mod.OFF

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis_client(self.endpoints.redis_url)
        return self._redis

    # ------------------------------------------------------------------ config
    # Which config runs, and when: see configsync (the rule, in one place).
    @property
    def config(self) -> Config:
        now = time.monotonic()
        if now - self._last_check >= self.check_interval:
            self._last_check = now
            try:
                self._maybe_swap()
            except redis.RedisError:
                # Redis down: keep the config we have, and do not pay a timeout
                # on every request while it stays down
                self._last_check = now + REDIS_DOWN_BACKOFF_S
        return self._config

    @property
    def config_path(self) -> Path:
        return self._config.path

    def current_config(self) -> Config:
        """The config in force in this process, without looking for a newer one."""
        return self._config

    def refresh_config(self) -> None:
        """Swap in a newly published running config now (the watcher's turn)."""
        self._last_check = time.monotonic()
        self._maybe_swap()

    def config_version(self) -> int:
        return self._config_version

    def adopt_running_config(self) -> None:
        """Take the running config (a process joining the running appliance):
        the one last accepted, with the restart-only keys at the values the
        appliance started with. Raises ConfigError when it does not validate
        here (an environment that lost a variable since): the process must
        not go on with the config it was made with (a broken file's
        defaults: other symbols, a relative backup path, reads without a
        token)."""
        try:
            self._maybe_swap(force=True)
        except redis.RedisError as e:
            log.warning("Redis unreachable at start-up (%s); using %s as read", e,
                        self._config.path)

    def restart_required(self) -> dict | None:
        """``{"keys", "since"}`` when a reload changed restart-only keys whose
        old value is still in force here; None otherwise."""
        keys = list(self.config.pending_restart)
        if not keys:
            return None
        try:
            since = self.redis.get(K_RESTART_SINCE)
        except redis.RedisError:
            since = None
        when = (dt.datetime.fromtimestamp(float(since), dt.UTC).isoformat()
                .replace("+00:00", "Z") if since else None)
        return {"keys": keys, "since": when}

    def running_text(self) -> tuple[int, str] | None:
        """(version, text) of the running config for this file, or None."""
        r = self.redis
        v, sealed, path = r.mget(K_CONFIG_VERSION, K_CONFIG_SEALED, K_CONFIG_PATH)
        if v is None or sealed is None or path is None or Path(path.decode()) != self.config_path:
            return None
        return int(v), self.unseal(sealed)

    def _load_boot(self) -> Config | None:
        sealed = self.redis.get(K_BOOT_SEALED)
        if sealed is None:
            return None
        try:
            return load_config(self._config.path, text=self.unseal(sealed))
        except Exception as e:  # noqa: BLE001 - no boot values: the running ones stand
            log.warning("the boot config cannot be read (%s); restart-only keys follow the "
                        "running config", e)
            return None

    def pin_config(self) -> None:
        """Keep the config this runtime has now (a one-shot command that uses
        the file, or the running config as of its start): no swap follows."""
        self._pinned = True

    def _maybe_swap(self, force: bool = False) -> None:
        if self._pinned:
            return
        r = self.redis
        v = r.get(K_CONFIG_VERSION)
        if v is None:
            return
        v = int(v)
        if v == self._config_version and not force:
            return
        try:
            got = self.running_text()
        except Exception as e:  # noqa: BLE001 - another data_dir's key: keep our config
            log.error("the running config in Redis cannot be unsealed with %s (%s); keeping "
                      "the config as read", self._config.data_dir / CONFIG_KEY_FILE,
                      e.__class__.__name__)
            self._config_version = v
            return
        if got is None:
            self._config_version = v
            return
        with self._lock:
            try:
                cfg = load_config(self._config.path, text=got[1])
            except ConfigError as e:  # every process accepted it; only a changed env gets here
                if force:  # joining: what this process has is no config of the appliance's
                    env = env_file_path(self._config.path)
                    # one line, the errors in it: each error with the whole preamble
                    # repeated it, and an alert or a log's last line named only the
                    # knock-on error (the empty setting), not the missing variable
                    raise ConfigError([f"the running config (version {v}) does not validate "
                                       f"in this process's environment (its variables, as read "
                                       f"from {env} and the environment this process was "
                                       f"started with): {'; '.join(e.errors)}; fix the "
                                       f"variable there, the running processes still use "
                                       f"their values"]) from None
                log.error("running config from Redis no longer validates here; keeping "
                          "version %d: %s", self._config_version, e)
                self._config_version = v
                return
            if self._boot is None or force:
                self._boot = self._load_boot() or self._boot
            cfg = with_boot_values(cfg, self._boot)
            if cfg.sha256 != self._config.sha256:
                # joining (a command, a process starting) takes the running config
                # rather than the file: expected, and no news on a command's terminal
                log.log(logging.DEBUG if force else logging.INFO,
                        "config %s swapped in (version %d)", cfg.sha256[:12], v)
            self._config = cfg
            self._config_version = v

    def publish_config(self, cfg: Config, *, boot: bool = False) -> int:
        """Make ``cfg`` the running config of every process; returns the new
        version. ``boot``: a cold start, so also the values of the restart-only
        keys (nothing is pending a restart any more)."""
        v = self._publish(cfg.text, cfg.sha256, boot=boot)
        with self._lock:
            if boot:
                self._boot = cfg
            self._config = with_boot_values(cfg, self._boot)
            self._config_version = v
        return v

    def publish_text(self, text: str) -> int:
        """Publish a text the running processes accepted in their own
        environment (this process may not resolve it: a CLI's shell)."""
        v = self._publish(text, hashlib.sha256(text.encode("utf-8")).hexdigest())
        try:
            with self._lock:
                self._config = with_boot_values(load_config(self.config_path, text=text),
                                                self._boot)
                self._config_version = v
        except ConfigError:
            pass
        return v

    def _publish(self, text: str, sha: str, *, boot: bool = False) -> int:
        sealed = self.seal(text)
        pipe = self.redis.pipeline()
        pipe.set(K_CONFIG_SEALED, sealed)
        pipe.delete(K_CONFIG_TEXT)
        pipe.set(K_CONFIG_SHA, sha)
        pipe.set(K_CONFIG_PATH, str(self.config_path))
        if boot:
            pipe.set(K_BOOT_SEALED, sealed)
            pipe.delete(K_RESTART_SINCE)
        pipe.incr(K_CONFIG_VERSION)
        return int(pipe.execute()[-1])

    def seal(self, text: str) -> bytes:
        return self._fernet().encrypt(text.encode("utf-8"))

    def unseal(self, sealed: bytes) -> str:
        return self._fernet().decrypt(sealed).decode("utf-8")

    def _fernet(self):
        from cryptography.fernet import Fernet
        return Fernet(local_secret(self._config.data_dir, CONFIG_KEY_FILE,
                                   lambda: Fernet.generate_key().decode()))

    # ------------------------------------------------------------------ liveness
    def heartbeat(self, role: str, ttl: int = 300, ident: str | None = None) -> None:
        key = K_HEARTBEAT.format(role if ident is None else f"{role}:{ident}")
        self.redis.set(key, str(time.time()), ex=ttl)

    def heartbeat_age(self, role: str) -> float | None:
        """Seconds since the freshest heartbeat of ``role`` (any instance)."""
        r = self.redis
        keys = [K_HEARTBEAT.format(role)] + list(r.scan_iter(K_HEARTBEAT.format(role) + ":*",
                                                             count=100))
        vals = [v for v in r.mget(keys) if v is not None] if keys else []
        if not vals:
            return None
        return max(0.0, time.time() - max(float(v) for v in vals))


CONFIG_KEY_FILE = "config.key"


def redis_client(url: str, timeout: float = 0.5) -> redis.Redis:
    """A client with short timeouts, so that a hung Redis cannot hang a request."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                health_check_interval=30)
