"""A PostgreSQL and a Redis that speak TLS only, for the cluster-traffic tests.

The certificates come from a throwaway CA (``trustme``): a server certificate
for 127.0.0.1 and ``localhost``. PostgreSQL is a fresh ``initdb`` with
``ssl = on`` whose pg_hba admits TCP clients by ``hostssl`` only (a plain
connection is rejected); Redis is ``redis-server --port 0 --tls-port N`` (no
plain port at all). Both listen on 127.0.0.1 only, in a short folder under
/tmp. As root, PostgreSQL runs as the ``postgres`` user.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support import free_port

PG_BIN = Path(os.environ.get("APPLIANCE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
DBNAME = "market_data"


def available() -> bool:
    """initdb and pg_ctl of PostgreSQL 15 and a redis-server (Debian's is built
    with TLS; one without fails ``start`` with its log, not silently)."""
    return all((PG_BIN / t).exists() for t in ("initdb", "pg_ctl", "psql")) and \
        shutil.which("redis-server") is not None


class TlsServers:
    """``ca_file`` is what clients trust; ``other_ca_file`` a CA that signed nothing here."""

    def __init__(self):
        import trustme
        self.root = Path(tempfile.mkdtemp(prefix="atls-", dir="/tmp"))
        self.user = "postgres" if os.geteuid() == 0 else None
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = self.root / "ca.crt"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.other_ca_file = self.root / "other-ca.crt"
        trustme.CA().cert_pem.write_to_path(str(self.other_ca_file))
        self.cert_file, self.key_file = self.root / "server.crt", self.root / "server.key"
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        cert.private_key_pem.write_to_path(str(self.key_file))
        os.chmod(self.key_file, 0o600)
        self.pgdata = self.root / "pg"
        self.pg_port, self.redis_port = free_port(), free_port()
        self.redis: subprocess.Popen | None = None
        if self.user:
            for p in (self.root, self.cert_file, self.key_file, self.ca_file):
                shutil.chown(p, self.user)
            os.chmod(self.root, 0o755)

    # ------------------------------------------------------------------ urls
    def pg_url(self, dbname: str = DBNAME, ca: Path | None = None,
               sslmode: str = "verify-full") -> str:
        return (f"postgresql://postgres@127.0.0.1:{self.pg_port}/{dbname}"
                f"?sslmode={sslmode}&sslrootcert={ca or self.ca_file}")

    def redis_url(self, db: int = 0, ca: Path | None = None) -> str:
        return f"rediss://127.0.0.1:{self.redis_port}/{db}?ssl_ca_certs={ca or self.ca_file}"

    # ------------------------------------------------------------------ control
    def _run(self, *args, timeout: float = 60) -> None:
        res = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                             timeout=timeout, user=self.user, cwd=self.root)
        if res.returncode != 0:
            log = self.root / "pg.log"
            raise RuntimeError(f"{args[0]} failed ({res.returncode}):\n{res.stdout}\n"
                               f"{res.stderr}\n{log.read_text() if log.exists() else ''}")

    def start(self) -> TlsServers:
        self._run(PG_BIN / "initdb", "-D", self.pgdata, "-U", "postgres", "--auth=trust", "-N",
                  "-E", "UTF8", "--locale=C")
        with open(self.pgdata / "postgresql.conf", "a") as f:
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.pg_port}\n"
                    f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                    f"ssl = on\nssl_cert_file = '{self.cert_file}'\n"
                    f"ssl_key_file = '{self.key_file}'\n")
        # TCP only over TLS: a plain connection finds no pg_hba line
        (self.pgdata / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
        self._run(PG_BIN / "pg_ctl", "-D", self.pgdata, "-l", self.root / "pg.log", "-w",
                  "-t", "60", "start")
        self._run(PG_BIN / "psql", "-h", self.root, "-p", self.pg_port, "-U", "postgres",
                  "-d", "postgres", "-c", f"CREATE DATABASE {DBNAME}")
        self.redis = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.redis_port),
             "--bind", "127.0.0.1", "--tls-cert-file", str(self.cert_file),
             "--tls-key-file", str(self.key_file), "--tls-ca-cert-file", str(self.ca_file),
             "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
             "--dir", str(self.root)],
            stdout=open(self.root / "redis.log", "w"), stderr=subprocess.STDOUT)
        import redis
        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis.from_url(self.redis_url()).ping()
                break
            except redis.RedisError as e:
                if time.monotonic() > deadline or self.redis.poll() is not None:
                    raise RuntimeError("TLS Redis did not start:\n"
                                       + (self.root / "redis.log").read_text()) from e
                time.sleep(0.1)
        return self

    def close(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(10)
        if (self.pgdata / "postmaster.pid").exists():
            try:
                self._run(PG_BIN / "pg_ctl", "-D", self.pgdata, "-m", "immediate", "-w", "stop")
            except RuntimeError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
