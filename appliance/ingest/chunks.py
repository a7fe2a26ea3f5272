"""One backfill, many workers: a backfill of several symbols fanned out into
chunks that every worker takes.

The backfill run (the parent, one ``job_runs`` row) plans as before, then
writes one chunk per symbol for daily bars and one per symbol-month for
minute bars (``intraday.plan``'s windows), keyed ``(symbol, timeframe, start,
end)``, and enqueues one RQ job per chunk (``jobs.entry.run_chunk``). Every worker that picks one up claims chunks
in PostgreSQL (``store.chunks``) until none is left; the parent claims chunks
too, so a single worker does the whole backfill by itself, as before.

A claim carries ``hostname:pid`` and a heartbeat refreshed while the chunk
runs. A chunk whose worker died is taken over: at once when RQ reports its
work horse killed (``release``), else once its heartbeat is older than
``backfill.chunk_stale_seconds``; after ``backfill.chunk_attempts`` tries it
counts as failed. A chunk's result is recorded only by the process that still
holds it, so no chunk is counted twice (and the writes are idempotent upserts).

The parent reports progress (chunks, symbols, bars, ``eta_s``) while it
waits; the finishing step (failure events, the run's result) runs once,
after the last chunk, whoever ends it (``store.chunks.take_finish``).
"""  # noqa: E501
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from zoneinfo import ZoneInfo

from rq import get_current_job
from rq.job import Job

from appliance import store
from appliance.core import calendar as tcal
from appliance.core.errors import HandedOver, ProviderAuthError, ProviderError
from appliance.ingest import flatfiles as flat
from appliance.ingest import minutes as intraday
from appliance.ingest.daily import SymbolPlan, backfill_symbol, refresh_stats
from appliance.jobs import runs
from appliance.jobs.queue import FAILURE_TTL, RESULT_TTL, queue
from appliance.providers import make_provider
from appliance.providers.flatfiles import OutsidePlan
from appliance.providers.http import MemoryStats
from appliance.store import chunks as chunk_store
from appliance.store import flatfiles as fstore

log = logging.getLogger("appliance.chunks")

#: what RQ runs for a chunk
CHUNK_FUNC = "appliance.jobs.entry.run_chunk"
DAILY = "1d"
MINUTE = "1m"
WAIT_S = 0.5
#: Set in a work horse when its worker is asked to stop (``jobs.worker``):
#: the chunk being fetched is finished, no other is claimed. A chunk's own
#: job still does its first chunk, so that every chunk left has a job queued.
STOPPING = threading.Event()
#: Set in a work horse once its job is in ``work``, which honours STOPPING:
#: the worker then lets it end on its own instead of interrupting it
#: (``jobs.worker``).
STOP_AWARE = threading.Event()


def me() -> str:
    """This process, as a claim names it: ``hostname:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def wanted(cfg, plan, windows=()) -> bool:
    """Fan out: enabled, several chunks, and per-symbol requests (a grouped
    daily plan is a few requests for every symbol at once: it runs here, and
    its minute months after it)."""
    return bool(cfg["backfill"]["fan_out"]) and plan.method == "aggregates" \
        and len(plan.symbols) + len(windows) > 1


def _limits(cfg) -> dict:
    b = cfg["backfill"]
    return {"stale_s": float(b["chunk_stale_seconds"]), "max_attempts": int(b["chunk_attempts"])}


# --------------------------------------------------------------------------- the parent

def run_parent(rt, cfg, plan, run_id: int, report, windows=(), files=(),
               enqueue: bool = True) -> dict:
    """Fan ``plan`` (and the minute ``windows``, and the flat ``files``: one
    chunk per file) out, work chunks here too, wait for the others, return
    the run's result (computed once by the finishing step). Without
    ``enqueue`` this process does every chunk."""
    chunks = [(p.symbol, DAILY, p.start, p.end, p.full) for p in plan.symbols]
    chunks += [(w.symbol, MINUTE, w.start, w.end, False) for w in windows]
    chunks += [(flat.FILE_CHUNK, f.timeframe, f.day, f.day, False) for f in files]
    with rt.conn() as conn:
        total = chunk_store.create_fanout(conn, run_id, me(), chunks)
        pending = chunk_store.chunk_ids(conn, run_id)
    queued = _enqueue(rt, cfg, run_id, pending) if enqueue else []
    log.info("backfill run %s: %d chunk(s), %d queued for the other workers", run_id, total,
             len(queued))
    t0 = time.monotonic()
    lim = _limits(cfg)
    while True:
        did = work(rt, cfg, run_id, limits=lim, report=lambda: _progress(rt, run_id, report, t0))
        with rt.conn() as conn:
            chunk_store.give_up(conn, run_id, **lim)
            c = chunk_store.counts(conn, run_id)
        _progress(rt, run_id, report, t0, c)
        if c["done"] + c["failed"] >= c["total"]:
            res = finish(rt, run_id)
            if res is not None:
                _unqueue(rt, run_id, queued)
                return res
        elif STOPPING.is_set() and queued:
            # the worker is stopping: the chunks left go to their queued jobs
            # (the last one ends the run, ``_close_orphan_run``) instead of
            # holding the worker until ``appliance up`` kills it mid-chunk
            _progress(rt, run_id, lambda d, _final: report({**d, "handed_over": True}, True),
                      t0, c)
            raise HandedOver(f"backfill run {run_id}: its worker is stopping; the "
                             f"{c['total'] - c['done'] - c['failed']} chunk(s) left are queued "
                             f"and go on with the next worker, the last one ends the run")
        if not did:
            time.sleep(WAIT_S)


def handed_over_progress(rt, run_id: int):
    """For a chunk's job: a report keeping the run's progress (and its
    heartbeat) current after its parent handed it over, since no parent
    reports it any more; None while a parent does."""
    with rt.conn() as conn:
        r = runs.get(conn, run_id)
    if not ((r or {}).get("progress") or {}).get("handed_over"):
        return None

    def write(d: dict, _final: bool) -> None:
        with rt.conn() as conn:
            runs.progress(conn, run_id, {**d, "eta_s": None, "handed_over": True})
    return lambda: _progress(rt, run_id, write, time.monotonic())


def _unqueue(rt, run_id: int, job_ids: list[str]) -> None:
    """The run's chunk jobs no worker took (this process did their chunks)
    out of the queue: each would only find its chunk done, and the jobs
    queued behind them (the alerts every minute) would wait for them all."""
    if not job_ids:
        return
    try:
        q = queue(rt)
        pipe = rt.redis.pipeline()
        for jid in job_ids:
            q.remove(jid, pipeline=pipe)
            pipe.delete(Job.key_for(jid))
        pipe.execute()
    except Exception as e:  # noqa: BLE001 - they run as no-ops then
        log.warning("backfill run %s: its leftover chunk jobs stay queued (%s)", run_id, e)


def _enqueue(rt, cfg, run_id: int, chunk_ids: list[int]) -> list[str]:
    """One RQ job per chunk, for the other workers (their ids); Redis away:
    this process does them all."""
    ids: list[str] = []
    try:
        q = queue(rt)
        for cid in chunk_ids:
            job = q.enqueue(CHUNK_FUNC, run_id, cid, job_id=chunk_job_id(run_id, cid),
                            job_timeout=cfg["jobs"]["timeout_seconds"],
                            result_ttl=RESULT_TTL // 24, failure_ttl=FAILURE_TTL,
                            description=f"backfill run {run_id} chunk {cid}")
            ids.append(job.id)
    except Exception as e:  # noqa: BLE001
        log.warning("backfill run %s: chunks not queued for other workers (%s); this worker "
                    "does them", run_id, e)
    return ids


def chunk_job_id(run_id: int, chunk_id: int) -> str:
    """A chunk's RQ job id: known from the chunk alone, so that whoever ends
    a handed-over run can take its leftover jobs out of the queue."""
    return f"appliance-backfill-{run_id}-chunk-{chunk_id}"


def _progress(rt, run_id: int, report, t0: float, c: dict | None = None) -> None:
    """The parent's report: chunks, symbols, bars and the ETA (the last one,
    every chunk ended, is always written)."""
    if c is None:
        with rt.conn() as conn:
            c = chunk_store.counts(conn, run_id)
    finished = c["done"] + c["failed"]
    elapsed = time.monotonic() - t0
    eta = round(elapsed / finished * (c["total"] - finished), 1) if finished else None
    rows = int(c["inserted"]) + int(c["updated"])
    report({"phase": "chunks", "chunks_total": c["total"], "chunks_done": c["done"],
            "chunks_failed": c["failed"], "chunks_running": c["running"],
            "symbols_total": c["symbols"], "symbols_done": c["symbols_done"], "bars": rows,
            "rows": rows, "inserted": int(c["inserted"]), "updated": int(c["updated"]),
            "rejected": int(c["rejected"]), "requests": int(c["requests"]),
            "retries": int(c["retries"]), "hosts": c["hosts"],
            "minute_months_total": int(c["months_total"]),
            "minute_months_done": int(c["months_done"]),
            "minute_bars": int(c["minute_bars"]),
            "files_total": int(c["files_total"]), "files_done": int(c["files_done"]),
            "files_failed": int(c["files_failed"]), "file_bytes": int(c["file_bytes"]),
            "file_rows": int(c["file_rows"]), "file_bars": int(c["file_bars"]),
            "eta_s": eta, "plan": f"fanned out: {c['total']} chunk(s)"},
           finished >= c["total"])


# --------------------------------------------------------------------------- any worker

def work(rt, cfg, run_id: int, *, first: int | None = None, limits: dict | None = None,
         report=None) -> int:
    """Claim and do chunks of ``run_id`` (``first`` before any other) until
    none is claimable here; returns how many this process did."""
    STOP_AWARE.set()
    lim = limits or _limits(cfg)
    who = me()
    n = 0
    want = first
    while True:
        if STOPPING.is_set() and (n or first is None):  # a chunk's job does its own first
            return n
        with rt.conn() as conn:
            chunk = chunk_store.claim(conn, run_id, who, chunk_id=want, **lim)
            if chunk is None and want is not None:
                chunk = chunk_store.claim(conn, run_id, who, **lim)
        want = None
        if chunk is None:
            return n
        _do(rt, cfg, chunk, who, lim["stale_s"])
        n += 1
        if report is not None:
            report()


def _do(rt, cfg, chunk: dict, who: str, stale_s: float) -> None:
    """One chunk: fetch, validate, store (``daily.backfill_symbol``); its
    heartbeat beats meanwhile."""
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(rt, chunk["id"], who, stop, stale_s / 4),
                            daemon=True, name="chunk-heartbeat")
    beat.start()
    stats = MemoryStats()
    status, error, result = "done", None, {}
    try:
        if chunk["symbol"] == flat.FILE_CHUNK:
            res = _do_file(rt, cfg, chunk)
        elif chunk["timeframe"] == MINUTE:
            provider = make_provider(cfg["provider"], stats=stats, redis=rt.redis)
            w = intraday.Window(chunk["symbol"], chunk["start_date"], chunk["end_date"])
            res = intraday.fetch_window(rt, cfg, provider, w, chunk["run_id"])
        else:
            provider = make_provider(cfg["provider"], stats=stats, redis=rt.redis)
            p = SymbolPlan(chunk["symbol"], chunk["start_date"], chunk["end_date"],
                           full=chunk["full_history"])
            today = dt.datetime.now(ZoneInfo(tcal.exchange_tz(cfg["calendar"]))).date()
            res = backfill_symbol(rt, cfg, provider, p, run_id=chunk["run_id"], today=today)
        result = {k: int(v) for k, v in res.items()}
    except OutsidePlan as e:  # this day only: the other files go on
        status, error = "failed", e.message
        with rt.conn() as conn:
            store.add_event(conn, "error", "flat_files", e.message,
                            {"day": chunk["start_date"].isoformat(),
                             "timeframe": chunk["timeframe"]})
    except ProviderAuthError as e:
        status, error = "failed", e.message
        with rt.conn() as conn:
            store.add_event(conn, "error", "vendor", e.message,
                            {"provider": cfg["provider"]["name"], "status": e.status})
            chunk_store.fail_pending(conn, chunk["run_id"], "not attempted: " + e.message)
    except ProviderError as e:
        status, error = "failed", e.message
        if chunk["symbol"] == flat.FILE_CHUNK:  # a bad file: said in events, the rest goes on
            with rt.conn() as conn:
                store.add_event(conn, "error", "flat_files", e.message,
                                {"day": chunk["start_date"].isoformat(),
                                 "timeframe": chunk["timeframe"]})
    except Exception as e:  # one chunk's failure must not stop the others
        log.exception("backfill chunk %s (%s) failed", chunk["id"], chunk["symbol"])
        status, error = "failed", f"{e.__class__.__name__}: {e}"
    finally:
        stop.set()
        beat.join(timeout=5)
    result.update(requests=stats.total("request"), retries=stats.total("retry"))
    with rt.conn() as conn:
        store.add_vendor_counts(conn, stats.drain())
        if not chunk_store.complete(conn, chunk["id"], who, status, result, error):
            log.warning("backfill chunk %s (%s) was taken over while it ran; its result is "
                        "not counted here", chunk["id"], chunk["symbol"])


def _do_file(rt, cfg, chunk: dict) -> dict:
    """One flat file's chunk: its current version (a late file is not there
    yet: nothing to do, the next run takes it), ingested in one transaction."""
    files = flat.client(cfg)
    info = files.head(chunk["timeframe"], chunk["start_date"])
    if info is None:
        return {"files": 0, "late": 1}
    return dict(flat.ingest(rt.conn, cfg, files, info, run_id=chunk["run_id"]))


def _beat(rt, chunk_id: int, who: str, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            with rt.conn() as conn:
                if not chunk_store.beat(conn, chunk_id, who):
                    return
        except Exception as e:  # noqa: BLE001 - a missed beat is retried
            log.warning("chunk %s heartbeat failed: %s", chunk_id, e)


def release_dead(rt, who: str) -> int:
    """Chunks held by ``who`` (a work horse RQ saw die) go back to pending."""
    with rt.conn() as conn:
        return chunk_store.release(conn, who)


# --------------------------------------------------------------------------- the end

def finish(rt, run_id: int) -> dict | None:
    """The run's result, once every chunk is done or failed: the process that
    takes the guard writes the failure events and the result; the others
    read it. None while chunks are still open or the result is being written."""
    with rt.conn() as conn:
        if chunk_store.take_finish(conn, run_id, me()):
            failures = chunk_store.failures(conn, run_id)
            minute_syms = chunk_store.minute_symbols(conn, run_id)
            # a symbol whose months all succeeded holds no demo session any more
            intraday.drop_demo_leftovers(conn, rt.config["provider"]["name"], minute_syms,
                                         {k.split(" ")[0] for k in failures})
            for sym in minute_syms:
                intraday.refresh_stats(conn, rt.config, sym)
            _refresh_file_symbols(conn, rt.config, chunk_store.file_days(conn, run_id),
                                  done=set(minute_syms))
            res = _result(conn, run_id)
            for sym, msg in failures.items():
                store.add_event(conn, "error", "backfill", f"{sym}: {msg}", {"symbol": sym})
            store.add_event(conn, "info", "backfill",
                            f"backfill run {run_id}: {res['symbols_ok']} of {res['symbols']} "
                            f"symbol(s) done in {res['chunks']} chunk(s) by "
                            f"{', '.join(f'{h} ({n})' for h, n in res['hosts'].items()) or '-'}",
                            {"run_id": run_id, "hosts": res["hosts"]})
            chunk_store.store_result(conn, run_id, res)
            handed = _close_orphan_run(conn, run_id, res, _limits(rt.config)["stale_s"])
            left = [chunk_job_id(run_id, c) for st in ("done", "failed")
                    for c in chunk_store.chunk_ids(conn, run_id, st)] if handed else []
        else:
            f = chunk_store.fanout(conn, run_id)
            return f["result"] if f and f.get("result") else None
    # a handed-over run has no parent to take its leftover chunk jobs out of the
    # queue: each would only find nothing to do, ahead of the jobs queued after
    # (the job running this, if any, is RQ's to finish)
    current = get_current_job()
    _unqueue(rt, run_id, [j for j in left if current is None or j != current.id])
    return res


def _refresh_file_symbols(conn, cfg, days: dict[str, list], done=()) -> None:
    """The stats of every symbol the run's flat files wrote (each once)."""
    tz = tcal.exchange_tz(cfg["calendar"])
    for sym in fstore.symbols_on(conn, "1d", days.get("1d") or [], tz=tz):
        refresh_stats(conn, cfg, sym)
    for sym in fstore.symbols_on(conn, "1m", days.get("1m") or [], tz=tz):
        if sym not in done:
            intraday.refresh_stats(conn, cfg, sym)


def _result(conn, run_id: int) -> dict:
    c = chunk_store.counts(conn, run_id)
    failed = chunk_store.failures(conn, run_id)
    n = int(c["symbols"])
    sym_failed = [k for k in failed if not k.startswith("flat file ")]
    units = n + int(c["files_total"])
    status = "ok" if not failed else ("failed" if len(failed) == units else "partial")
    return {"status": status, "plan": f"fanned out: {c['total']} chunk(s)", "symbols": n,
            "symbols_ok": n - len(sym_failed), "failed": failed, "chunks": int(c["total"]),
            "hosts": c["hosts"], "inserted": int(c["inserted"]), "updated": int(c["updated"]),
            "revised": int(c["revised"]), "rejected": int(c["rejected"]),
            "requests": int(c["requests"]), "retries": int(c["retries"]),
            **({"files": {"total": int(c["files_total"]), "done": int(c["files_done"]),
                          "failed": int(c["files_failed"]), "bytes": int(c["file_bytes"]),
                          "rows": int(c["file_rows"]), "bars": int(c["file_bars"])}}
               if c["files_total"] else {}),
            **({"minutes": {"requests_planned": int(c["months_total"]),
                            "months_done": int(c["months_done"]),
                            "sessions": int(c["minute_sessions"]),
                            "bars": int(c["minute_bars"])}} if c["months_total"] else {}),
            "error": (f"{len(failed)} symbol(s) failed: " +
                      "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:5]))
            if failed else None}


def _close_orphan_run(conn, run_id: int, res: dict, stale_s: float) -> bool:
    """The parent died (its run marked failed, or still 'running' with no
    heartbeat for ``stale_s``: its host went away) or handed the run over (a
    stopped worker) but every chunk ended: the run gets the chunks' outcome.
    A live parent records it itself. Whether the run was handed over."""
    r = runs.get(conn, run_id)
    beat = (r or {}).get("heartbeat_at") or (r or {}).get("started_at")
    silent = beat is None or \
        (dt.datetime.now(dt.UTC) - beat).total_seconds() > stale_s
    handed = bool(((r or {}).get("progress") or {}).get("handed_over"))
    if r is not None and (r["status"] == "failed" or (r["status"] == "running"
                                                      and (silent or handed))):
        runs.finish(conn, run_id, res["status"], {k: v for k, v in res.items() if k != "status"},
                    res.get("error"))
    return handed
