"""A real PostgreSQL primary with a streaming hot standby, for the replica tests.

The primary is a fresh ``initdb`` (wal_level=replica, a physical replication
slot, trust for replication from 127.0.0.1); the standby is a
``pg_basebackup -R -S slot`` of it, started as a hot standby on its own port.
Both live in a short folder under /tmp and listen on 127.0.0.1 only. As root,
the servers run as the ``postgres`` user (PostgreSQL refuses to run as root).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support import free_port

PG_BIN = Path(os.environ.get("APPLIANCE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SLOT = "appliance_test"
DBNAME = "market_data"


def available() -> bool:
    return all((PG_BIN / tool).exists() for tool in ("initdb", "pg_ctl", "pg_basebackup"))


class Pair:
    """A primary and its streaming replica; ``stop_replica``/``start_replica``
    take the standby down and bring it back (it resumes from its slot)."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="apr-", dir="/tmp"))
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user)
        self.pdata, self.rdata = self.root / "p", self.root / "r"
        self.pport, self.rport = free_port(), free_port()

    # ------------------------------------------------------------------ urls
    def url(self, port: int, dbname: str = DBNAME) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{dbname}"

    @property
    def primary_url(self) -> str:
        return self.url(self.pport)

    @property
    def replica_url(self) -> str:
        return self.url(self.rport)

    # ------------------------------------------------------------------ control
    def _run(self, *args: str, timeout: float = 60) -> None:
        res = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                             timeout=timeout, user=self.user, cwd=self.root)
        if res.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
                               f"\n{self._logs()}")

    def _logs(self) -> str:
        out = []
        for name in ("p.log", "r.log"):
            p = self.root / name
            if p.exists():
                out.append(f"--- {name}\n" + "\n".join(p.read_text().splitlines()[-20:]))
        return "\n".join(out)

    def _pg_ctl(self, data: Path, action: str) -> None:
        log = self.root / ("p.log" if data == self.pdata else "r.log")
        self._run(PG_BIN / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-m", "fast",
                  action)

    def start(self) -> Pair:
        import psycopg
        self._run(PG_BIN / "initdb", "-D", self.pdata, "-U", "postgres", "--auth=trust", "-N",
                  "-E", "UTF8", "--locale=C")
        conf = (f"\nlisten_addresses = '127.0.0.1'\nport = {self.pport}\n"
                f"unix_socket_directories = '{self.root}'\nwal_level = replica\n"
                f"max_wal_senders = 5\nmax_replication_slots = 5\nhot_standby = on\n"
                f"fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                f"wal_receiver_status_interval = 1s\nshared_buffers = 32MB\n")
        with open(self.pdata / "postgresql.conf", "a") as f:
            f.write(conf)
        with open(self.pdata / "pg_hba.conf", "a") as f:
            f.write("host replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n")
        self._pg_ctl(self.pdata, "start")
        with psycopg.connect(self.url(self.pport, "postgres"), autocommit=True) as c:
            c.execute("SELECT pg_create_physical_replication_slot(%s)", (SLOT,))
            c.execute(f'CREATE DATABASE "{DBNAME}"')
        self._run(PG_BIN / "pg_basebackup", "-h", "127.0.0.1", "-p", self.pport, "-U",
                  "postgres", "-D", self.rdata, "-R", "-S", SLOT, "-X", "stream",
                  "-c", "fast", timeout=120)
        with open(self.rdata / "postgresql.conf", "a") as f:
            f.write(f"\nport = {self.rport}\n")
        self.start_replica()
        return self

    def stop_replica(self) -> None:
        self._pg_ctl(self.rdata, "stop")

    def start_replica(self) -> None:
        self._pg_ctl(self.rdata, "start")

    def close(self) -> None:
        for data in (self.rdata, self.pdata):
            if (data / "postmaster.pid").exists():
                try:
                    self._pg_ctl(data, "stop")
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ checks
    def replayed_everything(self) -> bool:
        """The replica has replayed all the primary has written so far."""
        import psycopg
        with psycopg.connect(self.url(self.pport, "postgres"), autocommit=True) as c:
            target = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        try:
            with psycopg.connect(self.url(self.rport, "postgres"), autocommit=True,
                                 connect_timeout=2) as c:
                return bool(c.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                      (str(target),)).fetchone()[0])
        except psycopg.OperationalError:
            return False
