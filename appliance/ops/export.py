"""``appliance export``: the stored bars as a Hive-partitioned Parquet
dataset that DuckDB, polars and pandas read as it is::

    DIR/timeframe=1m/year=2024/month=6/bars.parquet
    DIR/manifest.json

One file per timeframe and month (zstd; rows sorted by symbol then time;
columns as in the API's Parquet answer, see ``arrowbars``: raw stored
prices, every stored bar with its ``validated`` flag). The months that hold
``start``..``end`` are written whole.

Incremental: each month's file is written only when its fingerprint changed
(the stored resolution's symbols, bar count and latest ingestion time in that
month, see ``store.columnar.month_fingerprints``); the manifest records, per
file, the fingerprint, rows, symbols, first and last bar and bytes. A second
run over unchanged data writes nothing; a session stored again rewrites the
one file of its month. A month that lost all its bars loses its file. Files
are written to a temporary name and renamed, the manifest last, so that an
interrupted run leaves the previous dataset readable.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa

from appliance.core import calendar as tcal
from appliance.core.errors import ExportError
from appliance.core.timeframes import base_of
from appliance.core.units import disk_usage, human_bytes
from appliance.jobs.registry import JobResult
from appliance.ops import arrowbars, arrowfiles, readahead
from appliance.store import columnar as cstore

MANIFEST = "manifest.json"
FILE = "bars.parquet"
#: Rows fetched per round trip (and per Arrow batch).
CHUNK = 50_000
#: Rows per Parquet row group (each written by a second thread while the
#: next is read).
ROW_GROUP = 200_000
#: Months written at once, each on a connection of its own: one month's
#: reading, decoding and Parquet encoding leave the two cores of a small box
#: idle part of the time (a month of a few symbols is a single row group,
#: read whole before it is written). Three keep them busier than two
#: (bench/README.md, issue 27's eighth run: 4-7 % more bars a second).
WORKERS = 3
#: The manifest is saved after a written month at most this often, and when
#: the run ends or stops: a long run keeps what it has done, a short one
#: does not spend a rename per month.
SAVE_EVERY_S = 2.0


def _months(start: dt.date, end: dt.date) -> list[dt.date]:
    out, m = [], start.replace(day=1)
    while m <= end:
        out.append(m)
        m = (m + dt.timedelta(days=32)).replace(day=1)
    return out


def _month_end(m: dt.date) -> dt.date:
    return (m + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)


def partition(timeframe: str, month: dt.date) -> str:
    return f"timeframe={timeframe}/year={month.year}/month={month.month}"


def fingerprint(symbols: list[str], bars: int, latest) -> str:
    text = json.dumps([symbols, bars, latest.isoformat() if latest else None])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load_manifest(out: Path) -> dict:
    p = out / MANIFEST
    if not p.exists():
        return {"format": 1, "partitions": {}}
    try:
        data = json.loads(p.read_text())
        if not isinstance(data.get("partitions"), dict):
            raise ValueError("no partitions")
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{p} is not an export manifest ({e}); move it away or choose "
                         f"another --out") from None
    return data


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:  # no half-written file is left behind
        tmp.unlink(missing_ok=True)
        raise


def _month_batches(conn, sch: pa.Schema, timeframe: str, month: dt.date, symbols: list[str],
                   tz: str):
    """The month's bars of every symbol in turn (a weekly bar belongs to the
    month of its Sunday and holds its whole week)."""
    batches = arrowbars.Batches(sch, symbols)
    weekly = timeframe == "1w"
    end = _month_end(month) + dt.timedelta(days=6 if weekly else 0)
    after = month - dt.timedelta(days=1) if weekly else None
    # a week whose Sunday is in the next month is that month's
    nxt = _month_end(month) + dt.timedelta(days=1)
    stop = dt.datetime(nxt.year, nxt.month, 1, tzinfo=ZoneInfo(tz))
    stop_ms = int(stop.timestamp() * 1000)
    params = {"tf": "1d", "start": month, "end": end, "after": after, "limit": None, "tz": tz}
    return readahead.read_ahead(conn, batches, symbols, timeframe, adjust="none",
                                include_invalid=True, params=params, chunk=CHUNK,
                                keep=lambda ms: ms < stop_ms)


class Stopped(Exception):
    """A month's writing given up: another month failed or the run was stopped."""


def _cannot_write(what: Path, e: OSError, out: Path) -> ExportError:
    """The error of a file of the dataset that could not be written, naming
    it and why (a full disk: how much is free)."""
    why = os.strerror(e.errno) if e.errno else str(e)
    if e.errno == errno.ENOSPC:
        with contextlib.suppress(OSError):
            why += f" ({human_bytes(disk_usage(out).free)} free)"
    return ExportError(f"cannot write {what}: {why}")


def _prune(d: Path, out: Path) -> None:
    """Remove ``d`` and its parents up to ``out`` while they are empty (the
    directories of a month that could not be written)."""
    while d != out and out in d.parents:
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent


def _write_month(conn, out: Path, timeframe: str, month: dt.date, symbols: list[str],
                 tz: str, stop: threading.Event) -> dict:
    sch = arrowbars.schema(timeframe, tz=tz)
    path = out / partition(timeframe, month) / FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_write(path.parent, e, out) from e
    stats = {"rows": 0, "first": None, "last": None}

    def write(tmp: Path) -> None:
        with arrowfiles.parquet_writer(tmp, sch, arrowfiles.DATASET_COMPRESSION) as w, \
                arrowfiles.RowGroups(w, ROW_GROUP) as groups:
            for b in _month_batches(conn, sch, timeframe, month, symbols, tz):
                if stop.is_set():
                    raise Stopped(month)
                groups.add(b)
                stats["rows"] += b.num_rows
                times = b.column("time")
                lo, hi = pa.compute.min(times).as_py(), pa.compute.max(times).as_py()
                stats["first"] = min(filter(None, (stats["first"], lo)))
                stats["last"] = max(filter(None, (stats["last"], hi)))
            groups.flush()

    try:
        _write_atomic(path, write)
    except OSError as e:
        _prune(path.parent, out)
        raise _cannot_write(path, e, out) from e
    except BaseException:
        _prune(path.parent, out)
        raise
    return {"file": str(path.relative_to(out)), "rows": stats["rows"], "symbols": symbols,
            "first": stats["first"].isoformat() if stats["first"] else None,
            "last": stats["last"].isoformat() if stats["last"] else None,
            "bytes": path.stat().st_size}


def _todo(out: Path, parts: dict, timeframe: str, months: list[dt.date], fps: dict,
          result: dict) -> list[tuple]:
    """The months to write (key, month, symbols, fingerprint): those whose
    fingerprint changed or whose file is gone; a month without bars loses its
    file (``result``: removed, unchanged)."""
    todo = []
    for month in months:
        key = partition(timeframe, month)
        have = parts.get(key)
        if month not in fps:
            if have is not None:
                (out / have["file"]).unlink(missing_ok=True)
                del parts[key]
                result["removed"].append(key)
            continue
        symbols, bars, latest = fps[month]
        fp = fingerprint(symbols, bars, latest)
        if have is not None and have.get("fingerprint") == fp and (out / have["file"]).exists():
            result["unchanged"] += 1
            continue
        todo.append((key, month, symbols, fp))
    return todo


def export(conn_cm, timeframe: str, start: dt.date, end: dt.date, out: Path,
           progress=None, *, tz: str, workers: int = WORKERS) -> dict:
    """Bring ``out`` up to date for ``timeframe`` and the months of
    start..end; ``conn_cm()`` gives a connection (a context manager), one to
    each of ``workers`` threads writing a month each.
    Returns {"written": [partitions], "unchanged": n, "removed": [...],
    "rows": rows written}."""
    if start > end:
        raise ValueError(f"start ({start}) is after end ({end})")
    if end >= dt.date(9999, 12, 1):
        raise ValueError(f"end ({end}) must be before 9999-12-01")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_write(out, e, out) from e
    manifest = load_manifest(out)
    parts = manifest["partitions"]
    months = _months(start, end)
    with conn_cm() as conn:
        fps = cstore.month_fingerprints(conn, timeframe, months[0], _month_end(months[-1]),
                                        tz=tz)
    result = {"written": [], "unchanged": 0, "removed": [], "rows": 0}
    todo = _todo(out, parts, timeframe, months, fps, result)
    stop = threading.Event()

    def write(month: dt.date, symbols: list[str]) -> dict:
        with conn_cm() as conn:
            return _write_month(conn, out, timeframe, month, symbols, tz, stop)

    def record(key: str, month: dt.date, fp: str, entry: dict) -> None:
        entry.update(fingerprint=fp, timeframe=timeframe, month=month.isoformat()[:7],
                     written_at=dt.datetime.now(dt.UTC).isoformat())
        parts[key] = entry
        result["written"].append(key)
        result["rows"] += entry["rows"]

    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="export")
    saved = time.monotonic()
    jobs: list[tuple] = []
    try:
        jobs = [(key, month, fp, pool.submit(write, month, symbols))
                for key, month, symbols, fp in todo]
        for key, month, fp, job in jobs:  # in month order, whichever ends first
            record(key, month, fp, job.result())
            if time.monotonic() - saved >= SAVE_EVERY_S:
                _save(out, manifest)  # a long run keeps what it has done
                saved = time.monotonic()
            if progress:
                progress(key, parts[key])
    except BaseException as e:  # an error or Ctrl-C: the months being written stop
        stop.set()              # at their next batch (their files as they were)
        pool.shutdown(wait=True, cancel_futures=True)
        for key, month, fp, job in jobs:  # a later month that ended meanwhile is kept too
            if key not in result["written"] and job.done() and not job.cancelled() \
                    and job.exception() is None:
                record(key, month, fp, job.result())
        _keep_done(out, manifest, e, len(result["written"]))
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if result["written"] or result["removed"] or manifest.get("exchange_timezone") != tz \
            or not (out / MANIFEST).exists():  # a run that changed nothing leaves it as it is
        manifest["exchange_timezone"] = tz
        _save(out, manifest)
    return result


def _keep_done(out: Path, manifest: dict, e: BaseException, done: int) -> None:
    """Save the manifest of a run that stops on ``e`` (the months done are
    kept); a file that could not be written is said again with that."""
    kept = True
    try:
        _save(out, manifest)
    except ExportError:
        kept = False
    if isinstance(e, ExportError):
        raise ExportError(f"{e.message}; " + (
            f"the {done} month file(s) written are kept (manifest.json)"
            if kept else "the manifest could not be saved either") +
            ", and the next run writes only what is missing") from e


def _save(out: Path, manifest: dict) -> None:
    data = {**manifest, "partitions": dict(sorted(manifest["partitions"].items()))}
    try:
        _write_atomic(out / MANIFEST,
                      lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))
    except OSError as e:
        raise _cannot_write(out / MANIFEST, e, out) from e


class ExportResult(JobResult, total=False):
    """The ``export`` job's result."""
    #: why nothing was done (``export.out`` empty)
    skipped: str
    files_written: int
    #: bars written, every timeframe
    rows: int
    out: str
    #: timeframe -> written, rows, unchanged, removed
    timeframes: dict[str, dict[str, int]]


def export_dataset(rt, run_id, report, timeframes=None) -> ExportResult:
    """The ``export`` job (daily by default): brings the Parquet dataset in
    ``export.out`` up to date for each of ``export.timeframes``, from
    ``history.start`` (or the earliest ``since`` of a symbol, when earlier) to
    today, writing only the months whose bars changed since the last run.
    With ``export.out`` empty (the default) it does nothing."""
    cfg = rt.config
    out = cfg["export"]["out"]
    if not out:
        return {"status": "ok", "skipped": "export.out is empty: no dataset configured"}
    today = dt.datetime.now(dt.UTC).date()
    result = {"out": out, "timeframes": {}}
    written = rows = 0
    for tf in timeframes or cfg["export"]["timeframes"]:
        # a symbol's since may reach before history.start: its bars are stored
        first = min([cfg.history_start(base_of(tf)), *(s.since for s in cfg.symbols)])
        res = export(rt.read_conn, tf, first, today, Path(out),
                     tz=tcal.exchange_tz(cfg["calendar"]))
        result["timeframes"][tf] = {"written": len(res["written"]), "rows": res["rows"],
                                    "unchanged": res["unchanged"],
                                    "removed": len(res["removed"])}
        written += len(res["written"])
        rows += res["rows"]
        report({"timeframe": tf, "files_written": written, "rows": rows})
    return {"status": "ok", "files_written": written, "rows": rows, **result}
