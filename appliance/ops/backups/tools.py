"""PostgreSQL's client tools (pg_dump, pg_restore) matched to the server, and
the server-side steps around them: the maintenance connection, scratch
databases."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from appliance import store
from appliance.core.errors import BackupError
from appliance.ops.backups.common import _MAX_IDENT, url_for
from appliance.runtime import services
from appliance.runtime.children import die_with_parent

log = logging.getLogger("appliance.backups")


@dataclass(frozen=True)
class Tools:
    bin: Path
    major: int
    version: str

    def __call__(self, name: str) -> str:
        return str(self.bin / name)


def _tool_version(bindir: Path, name: str = "pg_dump") -> tuple[int, str] | None:
    exe = bindir / name
    if not exe.exists():
        return None
    try:
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if not m:
        return None
    return int(m.group(1)), out.strip()


def server_major(conn) -> int:
    return store.databases.server_version_num(conn) // 10000


def find_tools(rt, major: int) -> Tools:
    """pg_dump/pg_restore at least as new as the server (``major``).

    Candidates: ``services.pg_tools`` (embedded: pgserver's binaries; external:
    APPLIANCE_PG_BIN_DIR, /usr/lib/postgresql/N/bin, PATH), then, for an
    external server and no explicit APPLIANCE_PG_BIN_DIR, pgserver's binaries.
    Raises BackupError (permanent) when all are older than the server."""
    ep = rt.endpoints
    cands = [services.pg_tools(ep.database_url, ep.embedded_pg)]
    if not ep.embedded_pg and not os.environ.get("APPLIANCE_PG_BIN_DIR"):
        try:
            cands.append(services.pg_bin_dir_embedded())
        except Exception:  # noqa: BLE001 - pgserver not installed
            pass
    seen = []
    for c in cands:
        v = _tool_version(Path(c))
        if v is None or not (Path(c) / "pg_restore").exists():
            continue
        seen.append((c, v[0]))
        if v[0] >= major:
            return Tools(Path(c), v[0], v[1])
    found = ", ".join(f"pg_dump {m} in {c}" for c, m in seen) or "no pg_dump at all"
    raise BackupError(
        f"client/server version mismatch: the PostgreSQL server is version {major} but the "
        f"client tools found are older ({found}); pg_dump must be at least as new as the "
        f"server. Install the PostgreSQL {major} client tools (e.g. "
        f"/usr/lib/postgresql/{major}/bin) or set APPLIANCE_PG_BIN_DIR to their folder.",
        permanent=True)


def _run_tool(args: list[str], env: dict, timeout: float | None = None) -> tuple[int, str, str]:
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout,
                       preexec_fn=die_with_parent)
    return p.returncode, p.stdout, p.stderr


def _first_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()]
    return (errs or lines or ["(no message)"])[0][:500]


def list_archive(tools: Tools, archive: Path) -> int:
    """``pg_restore --list``: the number of TOC entries. Raises BackupError."""
    rc, out, err = _run_tool([tools("pg_restore"), "--list", str(archive)], os.environ.copy())
    entries = sum(1 for ln in out.splitlines() if ln and not ln.startswith(";"))
    if rc != 0 or entries == 0:
        why = _first_error(err) if rc else "empty table of contents"
        raise BackupError(f"pg_restore --list failed: {why}")
    return entries


def read_archive(tools: Tools, archive: Path) -> None:
    """Read every block of the archive (``pg_restore --file=/dev/null``):
    ``--list`` reads only the table of contents, which a truncated custom-format
    archive still has intact."""
    rc, _, err = _run_tool([tools("pg_restore"), "--file", os.devnull, str(archive)],
                           os.environ.copy())
    if rc != 0:
        raise BackupError(f"pg_restore could not read the whole archive: {_first_error(err)}")


def scratch_name(live: str, kind: str = "rtest") -> str:
    suffix = f"_{kind}_{int(time.time())}_{uuid.uuid4().hex[:6]}"
    return (live[:_MAX_IDENT - len(suffix)] + suffix).lower()


def drop_stale_scratch(mconn, live: str, older_than_s: float) -> list[str]:
    """Drop scratch databases of this live database left by a restore test
    that was killed (their name carries their creation time)."""
    probe = scratch_name(live)
    prefix = probe[:probe.index("_rtest_") + len("_rtest_")]
    dropped = []
    for name in store.databases.names_starting_with(mconn, prefix):
        m = re.match(r"^(\d+)_[0-9a-f]{6}$", name[len(prefix):])
        if m and time.time() - int(m.group(1)) > older_than_s and name != live:
            drop_db(mconn, name, live)
            dropped.append(name)
    return dropped


def _maintenance_conn(url: str) -> psycopg.Connection:
    """An autocommit connection to a database that is neither the live one nor
    a scratch one ('postgres', else 'template1')."""
    last = None
    for name in ("postgres", "template1"):
        try:
            return psycopg.connect(url_for(url, name), autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as e:
            last = e
    raise BackupError(f"cannot connect to the server's maintenance database: {last}")


def _create_db(mconn, name: str, live: str) -> None:
    if name == live:
        raise BackupError(f"refusing to use {name!r}: it is the live database")
    store.databases.create(mconn, name, template="template0")


def drop_db(mconn, name: str, live: str) -> None:
    if name == live:
        raise BackupError(f"refusing to drop {name!r}: it is the live database")
    store.databases.drop(mconn, name)


def _try_catalogue_conn(url: str):
    try:
        return psycopg.connect(url, connect_timeout=5)
    except psycopg.OperationalError:
        return None
