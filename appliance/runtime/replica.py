"""Reads from a streaming replica (``database.read_url``).

API and console reads go to the replica while it answers and its replay lag
is at most ``database.max_replica_lag_seconds``; otherwise they go to the
primary, without an error to the client. Writes and jobs always use the
primary (``Runtime.conn``).

The replica's state is measured by a short probe on a connection of its own
(not the pool), at most once every ``CHECK_S`` seconds per process; a read
that fails on the replica marks it down at once until the next probe. Lag:
0 when everything received has been replayed (an idle primary sends nothing,
so the replay timestamp would grow old without any real lag), otherwise the
age of the last replayed transaction.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from prometheus_client import Counter
from psycopg_pool import PoolTimeout

from appliance.store import databases
from appliance.store import pool as db

log = logging.getLogger("appliance.replica")

#: seconds a measured state is reused before the next probe
CHECK_S = 3.0
#: seconds a read waits for a replica connection before it goes to the primary
ACQUIRE_TIMEOUT_S = 1.0
PROBE_TIMEOUT_S = 1.0
#: how the read connections show in the replica's pg_stat_activity
APPLICATION_NAME = "appliance-reads"

READS = Counter("appliance_db_reads", "API and console reads by the database that served them",
                ["target"])
for _t in ("primary", "replica"):
    READS.labels(_t)  # both series exist from the start



@dataclass(frozen=True)
class ReplicaState:
    """What /health, /metrics, ``appliance status`` and the replica_lag rule report."""
    configured: bool
    state: str                 # ok | lagging | down | refused | off
    lag_seconds: float | None
    serving_reads: bool
    error: str | None = None
    checked_at: float = 0.0    # time.monotonic() of the probe

    def body(self) -> dict:
        out = {"configured": self.configured, "state": self.state,
               "lag_seconds": self.lag_seconds, "serving_reads": self.serving_reads}
        if self.state in ("down", "refused") and self.error:
            out["reason"] = self.error
        return out


OFF = ReplicaState(False, "off", None, False)
#: a read failing with one of these on the replica marks it down and is asked
#: of the primary; the Undefined* ones: the replica lacks what the primary has
READ_ERRORS = (psycopg.OperationalError, PoolTimeout, psycopg.errors.UndefinedTable,
               psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedFunction,
               psycopg.errors.UndefinedObject)

_failed_read = threading.local()


def note_failed_read(e: BaseException) -> None:
    """Remember (per thread) that ``e`` ended a read on the replica, so that
    the web can answer the request again from the primary."""
    _failed_read.error = e


def failed_on_replica(e: BaseException) -> bool:
    """Whether ``e`` is the read failure last noted on this thread (forgotten
    once asked)."""
    if getattr(_failed_read, "error", None) is e:
        _failed_read.error = None
        return True
    return False



def refusal(facts: dict, primary_sysid: int | None) -> str | None:
    """Why a database with ``facts`` (``store.databases.standby_facts``) may
    not serve this primary's reads, or None when it may."""
    if not facts["in_recovery"]:
        return ("not a standby: pg_is_in_recovery() is false there (a primary or a standalone "
                "database, not a replica of this one)")
    rid = facts["system_identifier"]
    if rid is not None and primary_sysid is not None and rid != primary_sysid:
        return (f"a standby of another primary: system identifier {rid}, this primary's "
                f"{primary_sysid}")
    want = db.latest_version()
    if facts["migration"] is None or facts["migration"] < want:
        return (f"the appliance's migrations are missing there (schema_migrations: "
                f"{facts['migration'] or 'none'}, needed: {want})")
    return None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__)[:300]


def primary_identifier(primary_url: str, timeout: float = PROBE_TIMEOUT_S) -> int | None:
    """The primary's system identifier (None: unreadable; the check is skipped)."""
    try:
        with db.connect(primary_url, autocommit=True, connect_timeout=timeout,
                        statement_timeout_s=timeout) as conn:
            return databases.system_identifier(conn)
    except Exception:  # noqa: BLE001
        return None


def verify(url: str, primary_url: str | None, timeout: float = 5.0) -> str | None:
    """Whether ``url`` may serve the reads of the primary at ``primary_url``:
    None when it is a standby of it with the migrations present, else the
    reason it is refused (also when it does not answer). For the config
    reload and ``check-config``, which should refuse such a ``read_url``."""
    sysid = primary_identifier(primary_url, timeout) if primary_url else None
    try:
        with db.connect(url, autocommit=True, connect_timeout=timeout,
                        statement_timeout_s=timeout) as conn:
            return refusal(databases.standby_facts(conn), sysid)
    except Exception as e:  # noqa: BLE001
        return f"it does not answer: {_first_line(e)}"


def probe(url: str, max_lag: float, timeout: float = PROBE_TIMEOUT_S, *,
          primary_sysid: int | None = None) -> ReplicaState:
    """Connect to the replica, verify it (``refusal``) and measure its replay lag."""
    now = time.monotonic()
    try:
        with db.connect(url, autocommit=True, connect_timeout=timeout,
                        statement_timeout_s=timeout) as conn:
            why = refusal(databases.standby_facts(conn), primary_sysid)
            if why is not None:
                return ReplicaState(True, "refused", None, False, why, now)
            lag = databases.replay_lag(conn)
    except Exception as e:  # noqa: BLE001 - any failure is "down"
        return ReplicaState(True, "down", None, False, _first_line(e), now)
    lag = None if lag is None else max(0.0, round(float(lag), 3))
    ok = lag is not None and lag <= max_lag
    return ReplicaState(True, "ok" if ok else "lagging", lag, ok, None, now)


class Replica:
    """The replica of one process: a pool (opened without waiting, so a
    replica that is down at start delays nothing) and the cached state."""

    def __init__(self, url: str, max_lag: float, *, pool_size: int, connect_timeout: float,
                 statement_timeout_s: float | None, primary_url: str | None = None):
        self.url = url
        self.primary_url = primary_url
        self._primary_sysid: int | None = None
        self.max_lag = max_lag
        self.pool = db.make_pool(url, min_size=1, max_size=pool_size, timeout=ACQUIRE_TIMEOUT_S,
                                 connect_timeout=connect_timeout,
                                 statement_timeout_s=statement_timeout_s,
                                 name="appliance-replica", application_name=APPLICATION_NAME)
        self._state: ReplicaState | None = None
        self._lock = threading.Lock()
        self._opened = False

    def open(self) -> None:
        if not self._opened:
            self.pool.open(wait=False)
            self._opened = True

    def close(self) -> None:
        if self._opened:
            self.pool.close()
            self._opened = False

    def state(self, *, fresh: bool = False) -> ReplicaState:
        """The cached state, measured again when older than ``CHECK_S``. One
        thread probes; the others use the previous state meanwhile."""
        st = self._state
        if not fresh and st is not None and time.monotonic() - st.checked_at < CHECK_S:
            return st
        if not self._lock.acquire(blocking=st is None or fresh):
            return st
        try:
            st = self._state
            if fresh or st is None or time.monotonic() - st.checked_at >= CHECK_S:
                was = st.state if st else None
                if self._primary_sysid is None and self.primary_url:
                    self._primary_sysid = primary_identifier(self.primary_url)
                st = self._state = probe(self.url, self.max_lag,
                                         primary_sysid=self._primary_sysid)
                if was is not None and was != st.state:
                    log.warning("replica is %s (lag %s s%s)", st.state, st.lag_seconds,
                                f"; {st.error}" if st.error else "")
            return st
        finally:
            self._lock.release()

    def mark_down(self, e: Exception) -> None:
        msg = _first_line(e)
        log.warning("replica read failed, reading from the primary: %s", msg)
        self._state = ReplicaState(True, "down", None, False, msg, time.monotonic())

    @contextmanager
    def connection(self):
        """A pooled replica connection in autocommit (reads only)."""
        self.open()
        with self.pool.connection(timeout=ACQUIRE_TIMEOUT_S) as c:
            c.autocommit = True
            yield c


def lag_alert(r: dict, limit: float) -> tuple[bool, str, dict]:
    """The ``replica_lag`` rule over /health's ``replica`` object: firing while
    a configured replica is down or lags more than ``limit``."""
    if not r.get("configured"):
        return False, "", {}
    details = {"state": r.get("state"), "lag_seconds": r.get("lag_seconds"),
               "max_replica_lag_seconds": limit}
    if r.get("state") == "down":
        return True, "the read replica (database.read_url) does not answer: reads are " \
                     "served by the primary", details
    if r.get("state") == "refused":
        return True, f"the read replica (database.read_url) is refused: {r.get('reason')}; " \
                     f"reads are served by the primary", details
    return (r.get("state") == "lagging",
            f"the read replica lags {r.get('lag_seconds')} s behind the primary (allowed: "
            f"{limit} s): reads are served by the primary", details)
