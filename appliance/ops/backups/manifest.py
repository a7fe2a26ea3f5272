"""Manifests: the commit marker of a backup and its record of what the
archive holds (row counts per table and symbol, taken in the dump's snapshot)
and of the restore tests that proved it."""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

from appliance import store
from appliance.core.errors import BackupError
from appliance.ops.backups.common import MANIFEST_RE, NAME_RE, _fsync_dir, utcnow
from appliance.store import pool as db

log = logging.getLogger("appliance.backups")


def snapshot_counts(conn) -> dict:
    """Row counts per table and per symbol plus the candle validation summary,
    in whatever snapshot ``conn``'s transaction has. market_data is scanned once."""
    counts, symbols, val = store.table_and_symbol_counts(conn)
    schema = None
    if "schema_migrations" in counts:
        schema = db.schema_version(conn)
    return {"tables": counts, "symbols": symbols, "validation": val, "schema_version": schema}


def compare_with_manifest(manifest: dict, got: dict) -> tuple[list[dict], list[str]]:
    """Each comparison (check, manifest, restored, ok) and the messages of the
    mismatches, worded to say exactly what differed."""
    comps: list[dict] = []
    bad: list[str] = []

    def check(name: str, want, have, msg: str) -> None:
        ok = want == have
        comps.append({"check": name, "manifest": want, "restored": have, "ok": ok})
        if not ok:
            bad.append(msg)

    want_v, have_v = manifest.get("schema_version"), got.get("schema_version")
    check("schema version", want_v, have_v,
          f"schema version: manifest {want_v}, restored {have_v}")
    mt = manifest.get("row_counts", {}).get("tables", {})
    gt = got["tables"]
    for t in sorted(set(mt) | set(gt)):
        w, h = mt.get(t), gt.get(t)
        if w is None:
            check(f"rows {t}", None, h, f"table {t}: not in the manifest, restored with {h} rows")
        elif h is None:
            check(f"rows {t}", w, None, f"table {t}: manifest {w} rows, missing from the restored "
                                        f"database")
        else:
            check(f"rows {t}", w, h, f"row count {t}: manifest {w}, restored {h}")
    ms = manifest.get("row_counts", {}).get("symbols", {})
    gs = got["symbols"]
    sym_bad = []
    for s in sorted(set(ms) | set(gs)):
        w, h = ms.get(s, 0), gs.get(s, 0)
        if w != h:
            sym_bad.append({"symbol": s, "manifest": w, "restored": h})
            bad.append(f"rows for symbol {s}: manifest {w}, restored {h}")
    comps.append({"check": "rows per symbol", "manifest": len(ms), "restored": len(gs),
                  "ok": not sym_bad, "symbols_compared": len(set(ms) | set(gs)),
                  "mismatches": sym_bad[:50]})
    mv = manifest.get("validation") or {}
    gv = got["validation"]
    for k in ("validated", "invalid", "gaps"):
        if k in mv:
            check(f"candles {k}", mv[k], gv[k], f"{k} candles: manifest {mv[k]}, restored {gv[k]}")
    return comps, bad


def _jsonable(v):
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    return v


def manifest_summary(m: dict) -> dict:
    rc = m.get("row_counts") or {}
    return {"schema_version": m.get("schema_version"),
            "appliance_version": m.get("appliance_version"),
            "postgres_version": (m.get("postgres") or {}).get("server_version"),
            "candles": (rc.get("tables") or {}).get("market_data"),
            "symbols": len(rc.get("symbols") or {}),
            "tables": len(rc.get("tables") or {}),
            "duration_seconds": m.get("duration_seconds"),
            "config_sha256": m.get("config_sha256")}


MANIFEST_RESTORE_TESTS = 20


def note_restore_test(manifest_path: Path, *, passed: bool, seconds: float,
                      error: str | None, run_id: int | None = None) -> None:
    """Add a restore-test result to the manifest on the drive, so that a host
    that only has the drive knows which archives were proven. Written to a
    temporary file and renamed: a crash leaves the old manifest whole."""
    try:
        m = read_manifest(manifest_path)
        tests = list(m.get("restore_tests") or [])
        tests.append({"at": utcnow().isoformat(), "passed": passed, "seconds": seconds,
                      "error": error, "job_run_id": run_id})
        m["restore_tests"] = tests[-MANIFEST_RESTORE_TESTS:]
        tmp = manifest_path.with_name(f".{manifest_path.name}.partial")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(m, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.rename(tmp, manifest_path)
        _fsync_dir(manifest_path.parent)
    except (OSError, BackupError) as e:
        # the catalogue row still records it; a read-only drive must not fail the test
        log.warning("could not record the restore test in %s: %s", manifest_path, e)


def latest_restore_test(m: dict) -> dict | None:
    tests = m.get("restore_tests") or []
    return tests[-1] if tests else None


def manifest_path_for(archive: Path) -> Path:
    return archive.with_suffix(".json")


def read_manifest(path: Path) -> dict:
    try:
        m = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"no manifest at {path}: the backup cannot be verified") from None
    except (OSError, ValueError) as e:
        raise BackupError(f"manifest {path} is unreadable: {e}") from None
    if not isinstance(m, dict) or "archive" not in m:
        raise BackupError(f"{path} is not a backup manifest")
    return m


def manifest_archive(mpath: Path, m: dict) -> Path:
    """The archive a manifest describes: its ``filename`` must be a name of the
    appliance's own pattern (``market_data_YYYYMMDD_HHMMSS.dump``), in the
    manifest's folder. Anything else (a path, ``..``, another name) could make
    retention or a restore touch a file outside backup.path: BackupError."""
    fn = m.get("filename", mpath.with_suffix(".dump").name)
    if not isinstance(fn, str) or not NAME_RE.fullmatch(fn):
        raise BackupError(f"manifest {mpath.name} names the archive {str(fn)[:80]!r}, which is "
                          f"not a backup archive name (market_data_YYYYMMDD_HHMMSS.dump in "
                          f"the manifest's folder); ignored")
    return mpath.parent / fn


def disk_manifests(bdir: Path) -> list[tuple[Path, Path, dict]]:
    """(archive, manifest path, manifest) for every readable manifest, newest first."""
    out = []
    if not bdir.is_dir():
        return out
    for p in sorted(bdir.iterdir(), reverse=True):
        if MANIFEST_RE.match(p.name):
            try:
                m = read_manifest(p)
                archive = manifest_archive(p, m)
            except BackupError as e:
                log.warning("%s", e)
                continue
            out.append((archive, p, m))
    return out
