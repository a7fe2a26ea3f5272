"""One backfill, many workers: three real RQ worker processes on one Redis
share the chunks of one backfill run. Every chunk is done once, the store
equals the vendor's truth, a worker killed mid-chunk has its chunk finished
by another one, and the finishing step runs once."""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

from appliance.config.loader import DEFAULTS
from appliance.jobs import queue as queue_mod
from appliance.jobs import runs
from appliance.runtime.runtime import Runtime
from tests.fakes.polygon_fake import PolygonFake, make_truth
from tests.support import wait_until

QUIET = {job: "0 0 1 1 *" for job in DEFAULTS["schedules"]}
SLOW = ["ZA", "ZB", "ZC"]  # their first request hangs a while: the chunks to kill
SYMS = [f"S{i:02d}" for i in range(12)] + SLOW
START, END = dt.date(2024, 1, 2), dt.date(2024, 6, 28)


def _fanned_out(config_factory, fake, symbols, stale_s: int) -> tuple[Path, Runtime]:
    """A config of ``symbols`` from the Polygon ``fake``, backfills fanned
    out, and an open runtime on it."""
    path = config_factory(
        schedules=QUIET, symbols=symbols,
        history={"start": START.isoformat(), "lookback_sessions": 5},
        provider={"name": "polygon",
                  "polygon": {"api_key": "test-key", "base_url": fake.base_url,
                              "requests_per_minute": 6000, "timeout_seconds": 30,
                              "max_retries": 3, "retry_backoff_seconds": 0.01}},
        backfill={"fan_out": True, "chunk_stale_seconds": stale_s, "chunk_attempts": 3})
    rt = Runtime.from_path(path)
    rt.open()
    return path, rt


def _worker(path, name, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(path),
                             "worker", "--name", name],
                            env={**os.environ, "APPLIANCE_LOG_LEVEL": "INFO"},
                            stdout=log, stderr=subprocess.STDOUT)


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _chunks(rt, run_id):
    with rt.conn() as conn:
        return conn.execute("""SELECT symbol, status, claimed_by, done_by, attempts
                               FROM backfill_chunks WHERE run_id = %s ORDER BY id""",
                            (run_id,)).fetchall()


def _stored(rt, symbol):
    with rt.conn() as conn:
        return conn.execute(
            """SELECT (ts AT TIME ZONE 'America/New_York')::date, open, high, low, close, volume,
                      vwap, trades FROM market_data WHERE symbol = %s ORDER BY ts""",
            (symbol,)).fetchall()


def test_three_workers_share_a_backfill_and_survive_a_killed_one(config_factory, procs,
                                                                  tmp_path):
    truth = make_truth(SYMS, START, END, seed=5)
    fake = PolygonFake(truth.bars, truth.splits, faults=["hang"] * len(SLOW),
                       fault_paths="/v2/aggs/ticker/Z", hang_seconds=6)
    with fake:
        path, rt = _fanned_out(config_factory, fake, SYMS, stale_s=5)
        try:
            logs = [open(tmp_path / f"w{i}.log", "w") for i in range(3)]
            workers = [_worker(path, f"w{i}", logs[i]) for i in range(3)]
            procs.extend(workers)
            run_id = queue_mod.enqueue(rt, "backfill", {"end": END.isoformat()})

            # a slow chunk held by a worker that is not running the parent run
            def victim():
                with rt.conn() as conn:
                    owner = conn.execute("SELECT owner FROM backfill_fanouts WHERE run_id = %s",
                                         (run_id,)).fetchone()
                if owner is None:
                    return None
                for sym, status, claimed_by, _, _ in _chunks(rt, run_id):
                    if sym in SLOW and status == "running" and claimed_by != owner[0]:
                        horse = int(claimed_by.rsplit(":", 1)[1])
                        parent = _ppid(horse)
                        for w in workers:
                            if w.pid == parent:
                                return sym, claimed_by, horse, w
                return None
            sym, killed, horse, w = wait_until(victim, 60, "a slow chunk on a non-parent worker")
            os.kill(horse, signal.SIGKILL)
            w.send_signal(signal.SIGKILL)

            def finished():
                with rt.conn() as conn:
                    r = runs.get(conn, run_id)
                return r if r["status"] not in ("queued", "running") else None
            run = wait_until(finished, 120, "the backfill run to finish")
            assert run["status"] == "ok", (run, [x.read_text() for x in
                                                 tmp_path.glob("w*.log")])
            chunks = _chunks(rt, run_id)
            assert sorted(c[0] for c in chunks) == sorted(SYMS)
            assert all(c[1] == "done" for c in chunks), chunks
            # every chunk done once: one attempt each, two for the one whose worker was killed
            attempts = {c[0]: c[4] for c in chunks}
            assert attempts[sym] == 2
            assert all(n == 1 for s, n in attempts.items() if s != sym), attempts
            done_by = {c[0]: c[3] for c in chunks}
            assert done_by[sym] != killed
            assert len(set(done_by.values())) >= 2, done_by  # the work was shared
            for s in SYMS:
                assert _stored(rt, s) == truth.rows(s), s
            # the finishing step ran once, and the run shows the whole progress
            with rt.conn() as conn:
                n_finish = conn.execute(
                    "SELECT count(*) FROM events WHERE kind = 'backfill' AND message LIKE %s",
                    (f"backfill run {run_id}: %",)).fetchone()[0]
                fan = conn.execute("SELECT finished_at, result FROM backfill_fanouts "
                                   "WHERE run_id = %s", (run_id,)).fetchone()
            assert n_finish == 1
            assert fan[0] is not None and fan[1]["symbols_ok"] == len(SYMS)
            p = run["progress"]
            assert p["chunks_done"] == p["chunks_total"] == len(SYMS)
            assert p["symbols_done"] == len(SYMS) and p["bars"] == sum(
                len(truth.rows(s)) for s in SYMS)
            assert "eta_s" in p
            assert run["result"]["inserted"] == p["bars"]
        finally:
            rt.close()
            for f in logs:
                f.close()
            _kill_leftovers(str(path))


def _kill_leftovers(config_path: str) -> None:
    """RQ's work horses run in sessions of their own: one whose worker was
    killed outlives it. Every process started with this test's config goes."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if config_path.encode() in cmd:
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_stopped_worker_hands_its_backfill_over_after_the_chunk_it_is_fetching(
        config_factory, procs, tmp_path):
    """SIGTERM (Ctrl-C of ``appliance up``) to a worker running a fanned-out
    backfill waited for the whole backfill, until ``up`` killed it 25 s later
    and the run was recorded failed (the database stopped under it). Now the
    work horse ends after the chunk it is fetching: the worker exits at once,
    the run stays running with its chunks queued, and the next worker
    finishes it: every bar stored once, the run ok, its parent not run again."""
    syms = [f"H{i:02d}" for i in range(15)]
    truth = make_truth(syms, START, END, seed=7)
    fake = PolygonFake(truth.bars, truth.splits, faults=["hang"] * len(syms),
                       fault_paths="/v2/aggs/ticker/H", hang_seconds=2)
    with fake:
        path, rt = _fanned_out(config_factory, fake, syms, stale_s=60)
        logs = [open(tmp_path / f"h{i}.log", "w") for i in range(2)]
        try:
            first = _worker(path, "h-first", logs[0])
            procs.append(first)
            run_id = queue_mod.enqueue(rt, "backfill", {"end": END.isoformat()})

            def started():
                done = [c for c in _chunks(rt, run_id) if c[1] == "done"]
                return len(done) >= 2 or None
            wait_until(started, 60, "two chunks of the backfill done")
            first.send_signal(signal.SIGTERM)
            # fifteen 2-second chunks: waiting for the backfill took over 20 s more
            first.wait(timeout=10)
            assert first.returncode == 0
            with rt.conn() as conn:
                r = runs.get(conn, run_id)
            left = [c for c in _chunks(rt, run_id) if c[1] != "done"]
            assert r["status"] == "running" and r["progress"]["handed_over"] is True, r
            assert left and all(c[1] == "pending" for c in left), left
            from appliance.web import create_app
            html = create_app(runtime=rt).test_client().get("/jobs").get_data(as_text=True)
            assert "its first worker stopped: any worker takes the chunks left" in html

            second = _worker(path, "h-second", logs[1])
            procs.append(second)

            def finished():
                with rt.conn() as conn:
                    x = runs.get(conn, run_id)
                return x if x["status"] not in ("queued", "running") else None
            run = wait_until(finished, 120, "the next worker to finish the run")
            assert run["status"] == "ok", (run, [p.read_text() for p in tmp_path.glob("h*.log")])
            assert all(c[1] == "done" and c[4] == 1 for c in _chunks(rt, run_id))
            for s in syms:
                assert _stored(rt, s) == truth.rows(s), s
            assert run["result"]["symbols_ok"] == len(syms)
            # whoever ended it took the leftover chunk jobs out of the queue
            assert not [j for j in queue_mod.queue(rt).job_ids
                        if j.startswith(f"appliance-backfill-{run_id}-chunk-")]
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=20)
            out = (tmp_path / "h0.log").read_text() + (tmp_path / "h1.log").read_text()
            assert "its worker is stopping; the " in out, out
            assert f"backfill run {run_id} failed" not in out, out
            with rt.conn() as conn:  # the parent was not run again: one start of the run
                assert runs.get(conn, run_id)["attempts"] == 1
        finally:
            rt.close()
            for f in logs:
                f.close()
            _kill_leftovers(str(path))


def test_a_grouped_daily_plan_fans_its_minute_months_out(config_factory):
    """A grouped daily plan (symbols with daily bars, a few sessions missing)
    ran its minute months in the parent, one after the other, where no other
    worker could help and a stopped worker could not hand them over."""
    from appliance.ingest.backfill import run_backfill
    syms = ["AAPL", "MSFT", "GOOGL", "AMZN", "NVDA", "SPY", "QQQ"]
    history = {"start": "2026-09-01", "lookback_sessions": 5}
    path = config_factory(schedules=QUIET, symbols=syms, history=history)
    for step in ("daily", "minutes"):
        if step == "minutes":
            path = config_factory(schedules=QUIET, history={**history, "start": {
                "1d": "2026-09-01", "1m": "2026-10-01"}},
                symbols=[{"symbol": s, "timeframes": ["1m", "1d"]} for s in syms])
        rt = Runtime.from_path(path)
        rt.open()
        try:
            res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill, params={})
        finally:
            rt.close()
        assert res["status"] == "ok", res
    assert "grouped" in res["plan"] and "fanned out" in res["plan"], res["plan"]
    months = res["minutes"]["months_done"]
    assert months >= 2 * len(syms) and res["fetched"]["1m"]["months"] == months, res
