"""Connections, pools and the migration runner.

Nothing here connects at import time. Migrations are the numbered SQL files in
``appliance/store/migrations``; each is applied once, inside a transaction, and
recorded in ``schema_migrations``. An advisory lock keeps two processes from
migrating at the same time.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import select
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import psycopg
from psycopg import Connection, sql
from psycopg_pool import ConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

from appliance.core.errors import ServiceError

# A pool that lost its server tries to connect again after 1 s, then 2, 4,
# 8, 16 s...: a database back after a 10 s outage was reached only at the
# 15 s attempt, reads refused for 5 s more (and after a minute's outage, up to
# a minute more). psycopg_pool has no setting for it; its attempts' delays are
# these class constants: one attempt a second (a refused connection costs the
# server nothing; ``reconnect_timeout`` still ends a pool's attempt).
AttemptWithBackoff.DELAY_BACKOFF = 1.0

log = logging.getLogger("appliance.db")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_LOCK = 7_345_001
_PARTITION_LOCK = 7_345_002
#: The tables range-partitioned by year, each with the lower bound of a year's
#: partition: market_data by its bar start (UTC year boundaries), minute_bars
#: by its session date. A year's partition is ``<table>_y<year>``.
PARTITIONED = {"market_data": "{:04d}-01-01 00:00:00+00", "minute_bars": "{:04d}-01-01"}


def one_row(cur: psycopg.Cursor[Any]) -> Any:
    """The row of a query that always returns one (an aggregate, ``SHOW``,
    ``INSERT … RETURNING``): ``fetchone()`` without the None its type allows."""
    row = cur.fetchone()
    if row is None:  # the query broke its promise: a bug, not a state to handle
        raise LookupError("the query returned no row")
    return row


def connect(url: str, *, autocommit: bool = False, connect_timeout: float = 5,
            statement_timeout_s: float | None = None) -> psycopg.Connection:
    opts = f"-c statement_timeout={int(statement_timeout_s * 1000)}" if statement_timeout_s else None
    kwargs: dict[str, Any] = {"options": opts} if opts else {}
    return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, int(connect_timeout)),
                           **kwargs)


def make_pool(url: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 5.0,
              connect_timeout: float = 3, statement_timeout_s: float | None = 60,
              name: str = "appliance", application_name: str | None = None) -> ConnectionPool:
    """A pool that is not opened yet: call ``pool.open()`` (and ``wait()``) in the factory."""
    kwargs: dict[str, Any] = {"connect_timeout": max(1, int(connect_timeout))}
    if application_name:
        kwargs["application_name"] = application_name
    if statement_timeout_s:
        kwargs["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
    return ConnectionPool(url, min_size=min_size, max_size=max_size, timeout=timeout, open=False,
                          kwargs=kwargs, name=name, check=_check_if_idle, reset=_reset,
                          reconnect_timeout=30)


#: While the primary is known unreachable (``Outage``), one read waits for a
#: connection this long after the last such wait ended (at most
#: ``PROBE_WAIT_S``); the others are refused at once.
PROBE_S = 2.0
#: How long that read (the probe) waits: enough for the pool to connect once
#: the server is back, short enough that a client whose reads keep landing
#: on the probe (each web worker process probes on its own) is not held up
#: for the pool's whole acquire timeout each time.
PROBE_WAIT_S = 1.0


class Outage:
    """Whether a pool's server is known unreachable, so that reads answer at
    once (PoolTimeout, a 503) instead of each waiting out the pool's acquire
    timeout during an outage, holding a web thread for it.

    Known unreachable: a wait for a connection ran out while the pool's own
    connection attempts were failing (its ``connections_errors`` grew since
    the last connection it gave). A busy pool whose server answers is never
    taken for one. While known, one caller at a time, ``probe_s`` after the
    last such wait ended, waits up to ``PROBE_WAIT_S`` (the probe: a waiting
    request makes the pool try to connect again, also after its own retries
    gave up); the
    others are refused at once. A connection given, or one idle in the pool
    (the pool's retries reached the server), ends it."""

    def __init__(self, probe_s: float = PROBE_S):
        self.probe_s = probe_s
        self._lock = threading.Lock()
        self.since: float | None = None  # time.monotonic() when it became known
        self._probing = False
        self._probe_at = 0.0
        self._errors = 0  # the pool's connections_errors at the last connection given

    def admit(self, pool: ConnectionPool) -> bool:
        """Whether this caller may wait for a connection: False when nothing
        is known wrong, True for the probe; raises PoolTimeout otherwise."""
        with self._lock:
            if self.since is None:
                return False
            now = time.monotonic()
            if pool.get_stats().get("pool_available", 0) > 0:
                self.since = None  # the pool's retries reached the server
                return False
            if not self._probing and now - self._probe_at >= self.probe_s:
                self._probing = True
                return True
            down = now - self.since
        raise PoolTimeout(f"the database has been unreachable for {down:.0f} s "
                          f"(not waiting for a connection; it is tried every {self.probe_s:g} s)")

    def given(self, pool: ConnectionPool, probe: bool) -> None:
        """A connection was given: the server answers."""
        errors = pool.get_stats().get("connections_errors", 0)
        if self.since is None and not probe:  # the rule: no lock taken
            self._errors = errors
            return
        with self._lock:
            self.since = None
            self._probing = self._probing and not probe
            self._errors = errors

    def failed(self, pool: ConnectionPool, probe: bool, exc: BaseException) -> None:
        """No connection was given (``exc``: why)."""
        with self._lock:
            if probe:  # the next one probe_s after this one ended
                self._probing, self._probe_at = False, time.monotonic()
            if not isinstance(exc, PoolTimeout):
                return
            errors = pool.get_stats().get("connections_errors", 0)
            if errors != self._errors and self.since is None:
                self.since = self._probe_at = time.monotonic()
                log.warning("database unreachable: reads are refused at once, one tried "
                            "every %g s", self.probe_s)


IDLE_CHECK_S = 30.0
#: when each pooled connection last came back (kept here, not on the connection)
_returned_at: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()


def _reset(conn: Connection[Any]) -> None:
    """A connection goes back to the pool as it came out: transactional."""
    if conn.autocommit:
        conn.autocommit = False
    _returned_at[conn] = time.monotonic()


def _check_if_idle(conn: Connection[Any]) -> None:
    """Check a connection before handing it out without a round trip when it
    can be helped: an idle connection has nothing to read, so a readable
    socket means the server said something (terminated the session,
    restarted) and the connection gets a real check (and is replaced when
    broken). Connections idle for a while are pinged anyway."""
    if conn.closed or conn.broken:
        ConnectionPool.check_connection(conn)
        return
    if time.monotonic() - _returned_at.get(conn, 0.0) >= IDLE_CHECK_S:
        ConnectionPool.check_connection(conn)
        return
    try:
        readable = bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError):
        readable = True
    if readable:
        ConnectionPool.check_connection(conn)


def migrations() -> list[tuple[int, str, Path]]:
    out = []
    for p in sorted(MIGRATIONS_DIR.glob("*.sql")):
        m = re.match(r"^(\d+)_(.+)\.sql$", p.name)
        if m:
            out.append((int(m.group(1)), m.group(2), p))
    return out


def latest_version() -> int:
    return max(v for v, _, _ in migrations())


def migrate(url: str) -> list[int]:
    """Apply pending migrations; return the versions applied."""
    applied_now = []
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY, name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())""")
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            if done and max(done) > latest_version():  # a rollback without its restore
                raise ServiceError(
                    f"the database's schema is version {max(done)}, newer than this "
                    f"appliance's {latest_version()}: a newer version of the appliance "
                    f"migrated it. Run that version, or restore the backup made before the "
                    f"update (OPERATIONS.md, Software update); nothing was changed")
            for version, name, path in migrations():
                if version in done:
                    continue
                script = path.read_text(encoding="utf-8")
                with conn.transaction():
                    conn.execute(script)
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                 (version, name))
                log.info("applied migration %04d_%s", version, name)
                applied_now.append(version)
            year = dt.date.today().year
            for table in PARTITIONED:
                ensure_partitions(conn, year - 1, year + 1, table)
            toast_compression(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied_now


def schema_version(conn: Connection[Any]) -> int:
    row = one_row(conn.execute("SELECT max(version) FROM schema_migrations"))
    return int(row[0] or 0)


def partition_name(table: str, year: int) -> str:
    """The name of ``table``'s partition of ``year``, e.g. market_data_y2024."""
    return f"{table}_y{year:04d}"


def existing_partitions(conn: Connection[Any], table: str = "market_data") -> set[int]:
    """The years ``table`` (one of ``PARTITIONED``) has a partition of."""
    rows = conn.execute("""SELECT c.relname FROM pg_inherits i
                           JOIN pg_class c ON c.oid = i.inhrelid
                           JOIN pg_class p ON p.oid = i.inhparent
                           WHERE p.relname = %s
                             AND p.relnamespace = current_schema()::regnamespace""",
                        (table,)).fetchall()
    pattern = re.compile(rf"^{re.escape(table)}_y(\d{{4}})$")
    return {int(m.group(1)) for (name,) in rows if (m := pattern.match(name))}


def ensure_partitions(conn: Connection[Any], first_year: int, last_year: int,
                      table: str = "market_data") -> list[int]:
    """Create the yearly partitions of ``table`` (one of ``PARTITIONED``) that
    are missing from ``first_year`` to ``last_year``; returns the years created.

    Inside the caller's transaction (a real one on an autocommit connection).
    Writers that find the same partition missing take turns on an advisory
    lock held to the end of the transaction that creates it, and look again
    once they hold it, so that the second sees the first one's partition
    instead of failing on it. Creating a partition locks the parent table
    until that transaction ends: callers ensure the partitions a write needs
    before they read or write the table in that transaction."""
    bound = PARTITIONED[table]
    if not set(range(first_year, last_year + 1)) - existing_partitions(conn, table):
        return []
    created = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_PARTITION_LOCK, table))
        have = existing_partitions(conn, table)
        for year in range(first_year, last_year + 1):
            if year in have:
                continue
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} "
                                 "FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(partition_name(table, year)), sql.Identifier(table),
                sql.Literal(bound.format(year)), sql.Literal(bound.format(year + 1))))
            created.append(year)
    if created:
        log.info("created %s partitions for %s", table, created)
    return created


#: The array columns stored with LZ4 rather than pglz where the server has
#: LZ4 (a build option: Debian's PostgreSQL has it, the embedded one from
#: PyPI does not). pglz is slowest on these (int8 volumes with random low
#: bytes, int4 trade counts, the rollups' integers): measured on a generated
#: whole-market day (bench/README.md, issue 26), the server stores a day's
#: minute sessions several times faster with them LZ4, for a little more
#: disk. A column's method only applies to values written after it is set:
#: rows stored before keep theirs, and both read alike.
LZ4_COLUMNS = {
    "minute_bars": ("minutes", "open", "high", "low", "close", "volume", "vwap", "raw", "trades",
                    "invalid", "body", "upper_wick", "lower_wick", "packed"),
    "rollup_bars": ("starts", "open", "high", "low", "close", "volume", "vwap", "trades",
                    "open_scaled", "volume_scaled", "body", "upper_wick", "lower_wick"),
}


def lz4_available(conn: Connection[Any]) -> bool:
    """Whether the server was built with LZ4 (``default_toast_compression``
    accepts it only then)."""
    with conn.transaction():
        try:
            with conn.transaction():
                conn.execute("SET LOCAL default_toast_compression = lz4")
        except (psycopg.errors.InvalidParameterValue, psycopg.errors.FeatureNotSupported):
            return False
    return True


def toast_compression(conn: Connection[Any]) -> list[str]:
    """Set ``LZ4_COLUMNS`` to LZ4 on their tables and every partition where
    the server has LZ4 and they are not yet (at each migration: a database
    restored from a server without LZ4, or onto one, gets what its server
    can do); returns the columns changed, as ``table.column``."""
    if not lz4_available(conn):
        return []
    rows = conn.execute("""
        SELECT c.oid::regclass::text, a.attname
        FROM pg_class c
        JOIN pg_attribute a ON a.attrelid = c.oid
        JOIN LATERAL unnest(%s::text[], %s::text[]) k(tab, col)
          ON a.attname = k.col
             AND (c.oid = k.tab::regclass  -- a plain table has no partition tree
                  OR c.oid IN (SELECT relid FROM pg_partition_tree(k.tab::regclass)))
        WHERE NOT a.attisdropped AND a.attcompression IS DISTINCT FROM 'l'
        ORDER BY 1, 2""",
        [[t for t, cols in LZ4_COLUMNS.items() for _ in cols],
         [c for cols in LZ4_COLUMNS.values() for c in cols]]).fetchall()
    with conn.transaction():
        for table, column in rows:
            conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET COMPRESSION lz4").format(
                sql.SQL(table), sql.Identifier(column)))
    if rows:
        log.info("LZ4 compression set on %d column(s)", len(rows))
    return [f"{t}.{c}" for t, c in rows]
