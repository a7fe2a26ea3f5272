"""Minute bars follow the daily rules: ``--start/--end`` and a per-symbol
``since`` bound the minute months too, and the result says what was fetched
per resolution."""
from __future__ import annotations

import datetime as dt

import pytest

from appliance.ingest import minutes as intraday
from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.runtime.runtime import Runtime
from tests.fakes.minute_truth import make_minute_truth
from tests.fakes.polygon_fake import PolygonFake
from tests.integration.test_intraday_backfill import frozen_now  # noqa: F401 - a fixture

START, END = dt.date(2024, 6, 3), dt.date(2024, 7, 31)


@pytest.fixture(scope="module")
def truth():
    return make_minute_truth(["AAPL", "QQQ"], START, END, seed=3, session="regular")


def _cfg(config_factory, fake):
    return config_factory(
        provider={"name": "polygon",
                  "polygon": {"api_key": "test-key", "base_url": fake.base_url,
                              "requests_per_minute": 6000, "timeout_seconds": 2,
                              "max_retries": 3, "retry_backoff_seconds": 0.01,
                              "grouped_daily": False}},
        symbols=[{"symbol": "AAPL", "timeframes": ["1m", "1d"]},
                 {"symbol": "QQQ", "since": "2024-07-15", "timeframes": ["1m", "1d"]}],
        history={"start": START.isoformat(), "lookback_sessions": 0}, session="regular")


def test_a_per_symbol_since_bounds_the_minute_months(config_factory, truth):
    with PolygonFake(truth.bars, truth.splits, minutes=truth.minutes) as fake:
        rt = Runtime.from_path(_cfg(config_factory, fake))
        rt.open()
        try:
            with rt.conn() as conn:
                ws = intraday.plan(conn, rt.config, ["AAPL", "QQQ"], end=END)
        finally:
            rt.close()
    qqq = [(w.start, w.end) for w in ws if w.symbol == "QQQ"]
    assert qqq == [(dt.date(2024, 7, 15), END)], qqq
    assert [w.start for w in ws if w.symbol == "AAPL"] == [START, dt.date(2024, 7, 1)]


def test_a_bounded_backfill_refetches_the_minutes_of_its_range_and_says_so(
        config_factory, truth, frozen_now):
    with PolygonFake(truth.bars, truth.splits, minutes=truth.minutes) as fake:
        rt = Runtime.from_path(_cfg(config_factory, fake))
        rt.open()
        try:
            full = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill, params={})
            assert full["status"] == "ok", full
            before = len(fake.log)
            day = "2024-06-12"
            res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                               params={"symbols": ["AAPL"], "start": day, "end": day})
            assert res["status"] == "ok", res
            paths = [e[0] for e in fake.log[before:]]
            assert f"/v2/aggs/ticker/AAPL/range/1/minute/{day}/{day}" in paths, paths
            got = res["fetched"]
            assert got["1d"]["symbols"] == 1 and got["1d"]["start"] == day
            assert got["1m"] == {"symbols": 1, "months": 1, "start": day, "end": day,
                                 "bars": got["1m"]["bars"]}
            assert got["1m"]["bars"] > 0
        finally:
            rt.close()
