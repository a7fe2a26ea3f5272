"""Vendor chaos and a worker killed mid-backfill: the store ends equal to the
vendor's truth, every candle, no duplicates."""
from __future__ import annotations

import datetime as dt
import time

import psycopg
import pytest

from appliance.jobs import backfill, runs
from appliance.runtime import Runtime
from tests.fakes.polygon_fake import PolygonFake, make_truth

from .helpers import (assert_store_equals_truth, cli, kill_group, polygon_config,
                      wait_until)

pytestmark = pytest.mark.reliability

START, END = dt.date(2024, 1, 2), dt.date(2024, 6, 28)


def _open(path):
    rt = Runtime.from_path(path)
    rt.open()
    return rt


def test_vendor_chaos_ends_in_the_exact_truth(config_factory):
    syms = [f"C{i:02d}" for i in range(20)]
    truth = make_truth(syms, START, END, seed=5, split_symbol="C03",
                       split_date=dt.date(2024, 3, 11))
    kinds = ("429", "500", "502", "503", "hang", "truncated", "empty_page")
    with PolygonFake(truth.bars, truth.splits, page_size=40, fault_rate=0.2,
                     fault_kinds=kinds, seed=3, hang_seconds=1.0) as fake:
        rt = _open(polygon_config(config_factory, fake, syms, START))
        try:
            first = runs.execute(rt, "backfill", runs.manual_slot(), backfill.run,
                                 params={"end": END.isoformat()})
            served = dict(fake.faults_served)
            # whatever the first run could not get, it names; the next run fetches it
            if first["status"] != "ok":
                assert set(first["failed"]) <= set(syms)
                second = runs.execute(rt, "backfill", runs.manual_slot(), backfill.run,
                                      params={"end": END.isoformat()})
                assert second["status"] == "ok", second
            with rt.conn() as conn:
                n = assert_store_equals_truth(conn, truth, syms)
        finally:
            rt.close()
    assert sum(served.values()) >= 10, served  # the chaos really happened
    assert {"429", "hang", "truncated"} <= set(served), served
    assert n == truth.n_candles


def _pg_activity(url: str, like: str) -> bool:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute("""SELECT count(*) FROM pg_stat_activity
                            WHERE datname = current_database() AND state = 'active'
                              AND wait_event_type = 'Lock' AND query ILIKE %s""",
                         (like,)).fetchone()[0] > 0


@pytest.mark.parametrize("point", ["fetch", "copy", "upsert"])
def test_a_worker_killed_mid_backfill_loses_nothing(config_factory, database_url, point):
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
                runs.execute(rt, "backfill", runs.manual_slot(), backfill.run,
                             params={"end": "2024-02-15"})
            if point == "fetch":
                fake.add_faults([None] * 57 + ["hang"])   # the 58th request never answers
            else:
                from appliance import db
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
            with rt.conn() as conn:
                running = conn.execute("SELECT id FROM job_runs WHERE status = 'running'"
                                       ).fetchall()
                assert len(running) == 1, "the killed run should still look running"
                conn.execute("UPDATE job_runs SET heartbeat_at = now() - interval '11 s' "
                             "WHERE status = 'running'")  # its 10 s timeout has passed
                assert runs.mark_stale(conn, 10) == 1
                assert conn.execute("SELECT count(*) FROM job_runs WHERE status = 'running'"
                                    ).fetchone()[0] == 0
            res = runs.execute(rt, "backfill", runs.manual_slot(), backfill.run,
                               params={"end": end.isoformat()})
            assert res["status"] == "ok", res
            with rt.conn() as conn:
                n = assert_store_equals_truth(conn, truth, syms)
            assert n == truth.n_candles
        finally:
            locker.close()
            rt.close()
