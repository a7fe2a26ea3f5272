"""Names, constants and small helpers every part of the backups uses, and
the progress model (``Steps``) that the console shows step by step."""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = logging.getLogger("appliance.backups")


BACKUP_LOCK = 7_345_200           # one backup at a time (pg advisory lock, live database)
SUSPEND_KEY = "appliance:jobs:suspended"
SUSPEND_TTL_S = 6 * 3600
ALERT_KEY = "backup_failed"
MANIFEST_FORMAT = 1

NAME_RE = re.compile(r"^market_data_(\d{8}_\d{6})\.dump$")
MANIFEST_RE = re.compile(r"^market_data_(\d{8}_\d{6})\.json$")
PARTIAL_RE = re.compile(r"^\.market_data_.*\.partial$")
_MAX_IDENT = 63


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def db_name(url: str) -> str:
    """The database a URL points at (libpq rules: dbname, else the user name)."""
    p = conninfo_to_dict(url)
    return p.get("dbname") or p.get("user") or os.environ.get("PGDATABASE") or "postgres"


def url_for(url: str, dbname: str) -> str:
    """The same server and credentials, another database (a conninfo string)."""
    p = conninfo_to_dict(url)
    p["dbname"] = dbname
    return make_conninfo(**p)


def tool_target(url: str, dbname: str | None = None) -> tuple[str, dict]:
    """``--dbname`` value and environment for pg_dump/pg_restore: the password
    goes into PGPASSWORD, never on a command line (``ps`` shows those)."""
    p = conninfo_to_dict(url)
    pw = p.pop("password", None)
    if dbname:
        p["dbname"] = dbname
    env = os.environ.copy()
    if pw:
        env["PGPASSWORD"] = pw
    return make_conninfo(**p), env


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _emit(report, data: dict) -> None:
    if report is None:
        return
    try:
        report(data, True)
    except TypeError:
        report(data)


class Steps:
    """Progress as a list of named steps (pending → running → ok|failed|skipped)
    plus the current ``phase``, pushed through ``report`` on every change."""

    def __init__(self, report, names: list[tuple[str, str]], **extra):
        self.report = report
        self.items = [{"name": n, "status": "pending", "detail": ""} for n, _ in names]
        self.phases = dict(names)
        self.phase = "starting"
        self.extra = extra
        self.current: str | None = None

    def _item(self, name: str) -> dict:
        for it in self.items:
            if it["name"] == name:
                return it
        it = {"name": name, "status": "pending", "detail": ""}
        self.items.append(it)
        return it

    def push(self) -> None:
        _emit(self.report, {"phase": self.phase, "steps": [dict(i) for i in self.items],
                            **self.extra})

    def start(self, name: str, detail: str = "") -> None:
        self.current = name
        it = self._item(name)
        it["status"], it["detail"] = "running", detail
        self.phase = self.phases.get(name, name)
        self.push()

    def ok(self, name: str, detail: str = "") -> None:
        it = self._item(name)
        it["status"], it["detail"] = "ok", detail
        self.push()

    def fail(self, name: str | None, detail: str) -> None:
        name = name or self.current or "error"
        it = self._item(name)
        it["status"], it["detail"] = "failed", detail
        for other in self.items:
            if other["status"] == "pending":
                other["status"] = "skipped"
        self.phase = "failed"
        self.push()

    def done(self, phase: str = "done") -> None:
        self.phase = phase
        self.push()
