"""Vendor chaos and a worker killed mid-backfill: the store ends equal to the
vendor's truth, every candle, no duplicates."""
from __future__ import annotations

import datetime as dt
import time

import psycopg
import pytest

from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.runtime.runtime import Runtime
from tests.fakes.polygon_fake import PolygonFake, make_truth

from .helpers import assert_store_equals_truth, cli, kill_group, polygon_config, wait_until

pytestmark = pytest.mark.reliability

START, END = dt.date(2024, 1, 2), dt.date(2024, 6, 28)


def _open(path):
    rt = Runtime.from_path(path)
    rt.open()
    return rt


def _incomplete(conn, truth, syms) -> set[str]:
    from .helpers import stored_rows
    return {s for s in syms if stored_rows(conn, s) != truth.rows(s)}


def test_vendor_chaos_ends_in_the_exact_truth(config_factory, survived):
    """20% of requests fail (429, 5xx, hang past the timeout, truncated JSON,
    empty page mid-pagination). With a retry budget of 1 the first run names
    exactly the symbols it could not complete; with the usual budget the next
    run, under the same chaos, completes them: the store equals the truth."""
    syms = [f"C{i:02d}" for i in range(20)]
    truth = make_truth(syms, START, END, seed=5, split_symbol="C03",
                       split_date=dt.date(2024, 3, 11))
    kinds = ("429", "500", "502", "503", "hang", "truncated", "empty_page")
    with PolygonFake(truth.bars, truth.splits, page_size=40, fault_rate=0.2,
                     fault_kinds=kinds, seed=3, hang_seconds=1.0) as fake:
        # 1. a tight retry budget: some symbols cannot be had, and the run says which
        rt = _open(polygon_config(config_factory, fake, syms, START,
                                  polygon={"max_retries": 1}))
        try:
            first = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                                 params={"end": END.isoformat()})
            with rt.conn() as conn:
                missing = _incomplete(conn, truth, syms)
        finally:
            rt.close()
        served_first = sum(fake.faults_served.values())
        assert first["status"] == "partial", first
        assert missing, "the chaos should have beaten a retry budget of 1"
        # exactly: every symbol not in the store as published is reported, and no other
        assert set(first["failed"]) == missing, (sorted(first["failed"]), sorted(missing))
        # 2. the usual budget, same chaos: the next run fetches them
        rt = _open(polygon_config(config_factory, fake, syms, START))
        try:
            second = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                                  params={"end": END.isoformat()})
            assert second["status"] == "ok", second
            with rt.conn() as conn:
                n = assert_store_equals_truth(conn, truth, syms)
        finally:
            rt.close()
        served = dict(fake.faults_served)
        requests = fake.count()
    assert sum(served.values()) >= 10, served  # the chaos really happened
    assert set(kinds) <= set(served), served
    assert n == truth.n_candles
    survived(f"{requests} vendor requests, {sum(served.values())} faulted "
             f"({', '.join(f'{k}={v}' for k, v in sorted(served.items()))}); run 1 "
             f"({served_first} faults, 1 retry) reported exactly the {len(missing)} symbols "
             f"it could not get; run 2 stored them: {n} candles of {len(syms)} symbols equal "
             f"the vendor's truth, 0 duplicates")


def _pg_activity(url: str, like: str) -> bool:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute("""SELECT count(*) FROM pg_stat_activity
                            WHERE datname = current_database() AND state = 'active'
                              AND wait_event_type = 'Lock' AND query ILIKE %s""",
                         (like,)).fetchone()[0] > 0


@pytest.mark.parametrize("point", ["fetch", "copy", "upsert"])
def test_a_worker_killed_mid_backfill_loses_nothing(config_factory, database_url, point,
                                                     survived):
    """SIGKILL of an `appliance backfill` process (and its process group) while a
    request is in flight, while it COPYs into market_data, and while it upserts
    into market_data; the killed run is marked failed once its timeout passed and
    the next run ends in the exact truth."""
    syms = [f"K{i:03d}" for i in range(200)]
    end = dt.date(2024, 3, 28)
    truth = make_truth(syms, START, end, seed=9)
    hang = 30.0 if point == "fetch" else 1.0
    with PolygonFake(truth.bars, truth.splits, hang_seconds=hang) as fake:
        path = polygon_config(config_factory, fake, syms, START,
                              polygon={"timeout_seconds": 60},
                              jobs={"timeout_seconds": 10, "retries": 0})
        rt = _open(path)
        locker = psycopg.connect(database_url)
        try:
            if point == "upsert":
                # the first half is stored already: its bars go through staging + upsert
                runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                             params={"end": "2024-02-15"})
            if point == "fetch":
                fake.add_faults([None] * 57 + ["hang"])   # the 58th request never answers
            else:
                from appliance.store import pool as db
                with rt.conn() as conn:  # so the worker does not stop at CREATE TABLE
                    db.ensure_partitions(conn, START.year, end.year)
                # the worker blocks on market_data exactly where we want to kill it
                locker.execute("LOCK TABLE market_data IN SHARE MODE")
            p = cli(path, "backfill", "--end", end.isoformat())
            try:
                if point == "fetch":
                    wait_until(lambda: fake.count() >= 58, 60, "the hanging request")
                    time.sleep(0.2)
                elif point == "copy":
                    wait_until(lambda: _pg_activity(database_url, "COPY market_data%"), 60,
                               "the COPY into market_data")
                else:
                    wait_until(lambda: _pg_activity(database_url, "%INSERT INTO market_data%"),
                               60, "the upsert into market_data")
            finally:
                kill_group(p)
                locker.rollback()
            requests_at_kill = fake.count()
            with rt.conn() as conn:
                at_kill = conn.execute("SELECT count(*) FROM market_data").fetchone()[0]
                running = conn.execute("SELECT id FROM job_runs WHERE status = 'running'"
                                       ).fetchall()
                assert len(running) == 1, "the killed run should still look running"
                conn.execute("UPDATE job_runs SET heartbeat_at = now() - interval '11 s' "
                             "WHERE status = 'running'")  # its 10 s timeout has passed
                assert runs.mark_stale(conn, 10) == 1
                status, error = conn.execute("SELECT status, error FROM job_runs WHERE id = %s",
                                             (running[0][0],)).fetchone()
                assert status == "failed" and "stale" in error, (status, error)
                assert conn.execute("SELECT count(*) FROM job_runs WHERE status = 'running'"
                                    ).fetchone()[0] == 0
            res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                               params={"end": end.isoformat()})
            assert res["status"] == "ok", res
            with rt.conn() as conn:
                n = assert_store_equals_truth(conn, truth, syms)
            assert n == truth.n_candles
            survived(f"killed during {point} after {requests_at_kill} vendor requests with "
                     f"{at_kill} candles committed; run {running[0][0]} marked failed "
                     f"(stale after its 10 s timeout); the next run stored "
                     f"{res.get('inserted')} more: {n} candles of {len(syms)} symbols equal "
                     f"the truth, 0 duplicates")
        finally:
            locker.close()
            rt.close()
