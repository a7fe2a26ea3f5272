"""Demo data never passes as real (issue 22, finding 9): once provider.name
names a real vendor, the demo provider's history is replaced by the vendor's
whole history (daily and minute bars), or deleted on request; until then
every view labels it demo. Real PostgreSQL and Redis, the loopback Polygon."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pytest

from appliance.core import calendar as tcal
from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.runtime.runtime import Runtime
from appliance.store import minutes as mstore
from tests.fakes.minute_truth import make_minute_truth
from tests.fakes.polygon_fake import PolygonFake, Truth, make_truth

SYMS = ["AAPL", "MSFT", "NVDA"]
START, END = dt.date(2024, 1, 2), dt.date(2024, 12, 31)
#: a session the vendor does not have for MSFT (the demo has it)
LACKING = dt.date(2024, 3, 5)
HISTORY = {"start": START.isoformat(), "lookback_sessions": 5}


def _run(rt, **params):
    return runs.execute(rt, "backfill", runs.manual_slot(), run_backfill, params=params)


def _open(path) -> Runtime:
    rt = Runtime.from_path(path)
    rt.open()
    return rt


def _polygon(fake) -> dict:
    return {"name": "polygon",
            "polygon": {"api_key": "test-key", "base_url": fake.base_url,
                        "requests_per_minute": 6000, "timeout_seconds": 2, "max_retries": 3,
                        "retry_backoff_seconds": 0.01, "max_retry_seconds": 10}}


def _stored(rt, symbol):
    with rt.conn() as conn:
        return conn.execute(
            """SELECT (ts AT TIME ZONE 'America/New_York')::date, open, high, low, close, volume,
                      vwap, trades FROM market_data WHERE symbol = %s ORDER BY ts""",
            (symbol,)).fetchall()


def _one(rt, sql, *args):
    with rt.conn() as conn:
        return conn.execute(sql, args).fetchone()[0]


def _cli(path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=300)


def _client(rt):
    from appliance.web import create_app
    app = create_app(runtime=rt)
    app.config["TESTING"] = True
    return app.test_client()


@pytest.fixture(scope="module")
def vendor() -> Truth:
    truth = make_truth(SYMS, START, END, seed=11, split_symbol="NVDA",
                       split_date=dt.date(2024, 6, 10), split_to=4.0)
    bars = dict(truth.bars)
    msft = bars["MSFT"]
    keep = msft.session != np.datetime64(LACKING)
    bars["MSFT"] = msft.take(np.nonzero(keep)[0])
    return Truth(bars, truth.splits)


@pytest.fixture
def demo_history(config_factory):
    """SYMS backfilled by the demo provider over 2024; the config path."""
    path = config_factory(symbols=SYMS, history=HISTORY)
    rt = _open(path)
    try:
        res = _run(rt, end=END.isoformat())
        assert res["status"] == "ok", res
        assert _one(rt, "SELECT count(*) FROM market_data WHERE source = 'demo'") > 700
        assert _one(rt, "SELECT count(*) FROM market_data WHERE source <> 'demo'") == 0
        # the demo's session the vendor lacks, and a demo split the vendor does not have
        assert (LACKING,) in [r[:1] for r in _stored(rt, "MSFT")]
        assert _one(rt, "SELECT count(*) FROM splits WHERE source = 'demo'") > 0
    finally:
        rt.close()
    return path


def test_switching_to_polygon_replaces_the_whole_demo_history(config_factory, demo_history,
                                                              vendor):
    """The next backfill stores exactly the vendor's bars and splits: no demo
    bar survives (not even for a session the vendor lacks), no demo split,
    no revision recorded for the swap, and /api/v1/symbols says polygon."""
    with PolygonFake(vendor.bars, vendor.splits) as fake:
        rt = _open(config_factory(symbols=SYMS, history=HISTORY, provider=_polygon(fake)))
        try:
            assert rt.config["provider"]["name"] == "polygon"
            res = _run(rt, end=END.isoformat())
            assert res["status"] == "ok", res
            for sym in SYMS:
                assert _stored(rt, sym) == vendor.rows(sym), sym
            assert _one(rt, "SELECT count(*) FROM market_data WHERE source <> 'polygon'") == 0
            with rt.conn() as conn:
                splits = conn.execute("""SELECT symbol, execution_date, split_from, split_to,
                                                source FROM splits ORDER BY 1, 2""").fetchall()
            assert splits == [("NVDA", dt.date(2024, 6, 10), 1.0, 4.0, "polygon")]
            assert _one(rt, "SELECT count(*) FROM revisions WHERE old->>'source' = 'demo'") == 0
            assert _one(rt, "SELECT count(*) FROM missing_sessions WHERE symbol = 'MSFT'") == 1
            body = _client(rt).get("/api/v1/symbols").get_json()
            assert {s["symbol"]: s["source"] for s in body["symbols"]} == \
                {s: "polygon" for s in SYMS}
            health = _client(rt).get("/health").get_json()
            assert not [r for r in health["reasons"] if r.startswith("demo_data_present")]
            # replaced once: the next backfill is the usual incremental one
            again = _run(rt, end=END.isoformat())
            assert again["status"] == "ok", again
            assert again["inserted"] == 0 and again["updated"] == 0 and again["revised"] == 0
        finally:
            rt.close()


def test_a_symbol_the_vendor_does_not_have_keeps_no_demo_bar(config_factory, demo_history,
                                                            vendor):
    """NVDA unknown to the vendor: its whole demo history goes, nothing is
    labelled polygon, and it no longer counts as demo anywhere."""
    bars = {s: b for s, b in vendor.bars.items() if s != "NVDA"}
    with PolygonFake(bars, []) as fake:
        rt = _open(config_factory(symbols=SYMS, history=HISTORY, provider=_polygon(fake)))
        try:
            res = _run(rt, end=END.isoformat())
            # the vendor does not know NVDA: named as such (symbol_unknown), and its
            # demo history is gone all the same
            assert res["status"] == "partial" and list(res["failed"]) == ["NVDA"], res
            assert "does not know this ticker" in res["failed"]["NVDA"]
            assert _stored(rt, "NVDA") == []
            assert _one(rt, "SELECT count(*) FROM market_data WHERE source = 'demo'") == 0
            assert _one(rt, "SELECT count(*) FROM splits WHERE symbol = 'NVDA'") == 0
            body = _client(rt).get("/api/v1/symbols").get_json()
            nvda = [x for x in body["symbols"] if x["symbol"] == "NVDA"][0]
            assert nvda["records"] == 0 and nvda["source"] is None
            health = _client(rt).get("/health").get_json()
            assert not [r for r in health["reasons"] if r.startswith("demo_data_present")]
        finally:
            rt.close()


def test_the_migration_relabels_a_history_already_relabelled_as_real(demo_history):
    """A database of before the fix (finding 9's state: demo bars, stats
    saying polygon after the latest sessions came from the vendor): migration
    0008 labels those symbols demo again."""
    from appliance.store import pool as db
    rt = _open(demo_history)
    try:
        with rt.conn() as conn:
            conn.execute("UPDATE market_data SET source = 'polygon' WHERE symbol = 'AAPL' "
                         "AND ts >= '2024-12-20'")
            conn.execute("UPDATE symbol_stats SET source = 'polygon'")  # max(source)
            conn.execute("ALTER TABLE minute_stats DROP COLUMN source")
            conn.execute("DELETE FROM schema_migrations WHERE version = 8")
        assert db.migrate(rt.endpoints.database_url) == [8]
        with rt.conn() as conn:
            labels = dict(conn.execute("SELECT symbol, source FROM symbol_stats").fetchall())
        assert labels == {s: "demo" for s in SYMS}
        body = _client(rt).get("/api/v1/symbols").get_json()
        assert {x["source"] for x in body["symbols"]} == {"demo"}
    finally:
        rt.close()


def test_the_reload_that_switches_to_polygon_queues_the_replacement(
        config_factory, demo_history, vendor):
    """``appliance reload`` after ``provider.name: polygon``: the backfill it
    queues (run here by a burst worker) replaces the demo history."""
    from appliance.jobs import schedule
    from appliance.jobs.reload import reload_config
    rt = _open(demo_history)
    try:
        assert schedule.ensure_baseline(rt)  # what `appliance up` does at start
        with PolygonFake(vendor.bars, vendor.splits) as fake:
            config_factory(symbols=SYMS, history=HISTORY, provider=_polygon(fake))
            res = reload_config(rt, source="cli")
            assert res["ok"], res
            assert res["diff"]["changed"]["provider.name"] == {"old": "demo", "new": "polygon"}
            assert res["backfill_run_id"] is not None
            with rt.conn() as conn:
                queued = runs.get(conn, res["backfill_run_id"])
            assert queued["params"]["symbols"] == SYMS and queued["trigger"] == "reload"
            worker = _cli(demo_history, "worker", "--burst")
            assert worker.returncode == 0, worker.stderr
        with rt.conn() as conn:
            done = runs.get(conn, res["backfill_run_id"])
        assert done["status"] == "ok", done
        for sym in SYMS:
            assert _stored(rt, sym) == vendor.rows(sym), sym
    finally:
        rt.close()


def test_until_replaced_every_view_says_demo(config_factory, demo_history, vendor):
    """After the switch the latest sessions come from the vendor (a ranged
    backfill, as the incremental one did): the symbols still hold demo bars
    and every view says so; the replacing backfill ends it."""
    with PolygonFake(vendor.bars, vendor.splits) as fake:
        rt = _open(config_factory(symbols=SYMS, history=HISTORY, provider=_polygon(fake)))
        try:
            recent = tcal.previous_sessions("XNYS", END, 4)[0].astype(dt.date)
            res = _run(rt, start=recent.isoformat(), end=END.isoformat())
            assert res["status"] == "ok", res
            client = _client(rt)
            body = client.get("/api/v1/symbols").get_json()
            assert {s["symbol"]: s["source"] for s in body["symbols"]} == \
                {s: "demo" for s in SYMS}
            rows = client.get(f"/api/v1/historical/AAPL?start={START}&end={END}").get_json()
            sources = [r["source"] for r in rows["data"]]
            assert set(sources[:-5]) == {"demo"} and set(sources[-5:]) == {"polygon"}
            csv = client.get(f"/api/v1/historical/AAPL?start={START}&end={END}&format=csv")
            lines = csv.get_data(as_text=True).splitlines()
            assert lines[1].endswith(",demo") and lines[-1].endswith(",polygon")
            health = client.get("/health").get_json()
            demo = [r for r in health["reasons"] if r.startswith("demo_data_present")]
            assert demo and "3 symbol(s)" in demo[0], health["reasons"]
            dash = client.get("/dashboard").get_data(as_text=True)
            assert "demo-banner" in dash and "3 symbols (AAPL, MSFT, NVDA)" in dash
            page = client.get("/symbols/AAPL").get_data(as_text=True)
            assert 'id="demo-label"' in page and "demo data" in page
            assert "demo data" in client.get("/symbols").get_data(as_text=True)

            assert _run(rt, end=END.isoformat())["status"] == "ok"
            body = client.get("/api/v1/symbols").get_json()
            assert {s["source"] for s in body["symbols"]} == {"polygon"}
            assert "demo-banner" not in client.get("/dashboard").get_data(as_text=True)
            assert 'id="demo-label"' not in client.get("/symbols/AAPL").get_data(as_text=True)
            from tests.support import wait_until  # /health serves a probe up to 1 s old
            wait_until(lambda: not [r for r in client.get("/health").get_json()["reasons"]
                                    if r.startswith("demo_data_present")], 5,
                       "/health without demo_data_present")
        finally:
            rt.close()


def test_demo_data_delete_removes_it_and_the_vendor_fills_the_whole_history(
        config_factory, demo_history, vendor):
    """``appliance demo-data --delete``: no demo bar, split or stats left;
    the next backfill by the vendor fetches every symbol's whole history."""
    listed = _cli(demo_history, "demo-data")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "demo data held: 3 symbol(s)" in listed.stdout and "AAPL  " in listed.stdout
    with PolygonFake(vendor.bars, vendor.splits) as fake:
        path = config_factory(symbols=SYMS, history=HISTORY, provider=_polygon(fake))
        out = _cli(path, "demo-data", "--delete")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "demo data deleted: 3 symbol(s)" in out.stdout
        rt = _open(path)
        try:
            assert _one(rt, "SELECT count(*) FROM market_data") == 0
            assert _one(rt, "SELECT count(*) FROM splits") == 0
            assert _one(rt, "SELECT count(*) FROM symbol_stats") == 0
            assert _one(rt, "SELECT count(*) FROM symbols WHERE history_from IS NOT NULL") == 0
            assert "no demo data stored" in _cli(path, "demo-data").stdout
            assert _run(rt, end=END.isoformat())["status"] == "ok"
            for sym in SYMS:
                assert _stored(rt, sym) == vendor.rows(sym), sym
        finally:
            rt.close()


def test_demo_data_delete_is_refused_while_a_backfill_runs(demo_history):
    """A running backfill may be replacing the demo data: --delete says so
    and deletes nothing; a bad symbol is named. Once free, one symbol's demo
    data can go alone."""
    from appliance import store
    from appliance.store import pool as db
    from appliance.store.locks import BACKFILL_LOCK
    rt = _open(demo_history)
    lock = db.connect(rt.endpoints.database_url, autocommit=True)
    try:
        before = _one(rt, "SELECT count(*) FROM market_data")
        assert store.locks.try_lock(lock, BACKFILL_LOCK)  # what a running backfill holds
        out = _cli(demo_history, "demo-data", "--delete")
        assert out.returncode == 1
        assert "a backfill is running" in out.stderr and "try again" in out.stderr
        assert _one(rt, "SELECT count(*) FROM market_data") == before
        bad = _cli(demo_history, "demo-data", "--delete", "aapl")
        assert bad.returncode == 2 and "not a valid symbol: aapl" in bad.stderr
        lock.close()
        # the provider is still demo: done, with a word about the next backfill
        one = _cli(demo_history, "demo-data", "--delete", "AAPL")
        assert one.returncode == 0, one.stderr
        assert "demo data deleted: 1 symbol(s)" in one.stdout
        assert "provider.name is still demo" in one.stderr
        assert _one(rt, "SELECT count(*) FROM market_data WHERE symbol = 'AAPL'") == 0
        assert _one(rt, "SELECT count(*) FROM market_data WHERE symbol = 'MSFT'") > 0
    finally:
        lock.close()
        rt.close()


# --------------------------------------------------------------------------- minute bars

M_SYMS = ["AAPL", "MSFT"]
M_START, M_END = dt.date(2024, 6, 3), dt.date(2024, 7, 31)
M_LACKING = dt.date(2024, 7, 10)


@pytest.fixture(scope="module")
def minute_vendor():
    truth = make_minute_truth(M_SYMS, M_START, M_END, seed=5, session="extended")
    minutes = dict(truth.minutes)
    mb = minutes["MSFT"]
    lo = tcal.local_midnight_epoch(M_LACKING) * 1000
    keep = (mb.t < lo) | (mb.t >= lo + 86_400_000)
    minutes["MSFT"] = dataclasses.replace(
        mb, **{f: getattr(mb, f)[keep] for f in ("t", "o", "h", "l", "c", "v", "vw", "n",
                                                  "mod", "regular")})
    return truth, minutes


@pytest.fixture
def frozen_now(monkeypatch):
    """Backfills run as of 2024-08-01: the latest completed session is 07-31."""
    import appliance.ingest.backfill as bf
    real = bf.dt.datetime
    now = dt.datetime(2024, 8, 1, 12, tzinfo=dt.UTC)

    class Frozen(real):
        @classmethod
        def now(cls, tz=None):
            return now if tz else now.replace(tzinfo=None)
    monkeypatch.setattr(bf.dt, "datetime", Frozen)


def _minute_cfg(config_factory, fan_out: bool, **extra):
    return config_factory(
        symbols=[{"symbol": s, "timeframes": ["1m", "1d"]} for s in M_SYMS],
        history={"start": {"1d": M_START.isoformat(), "1m": M_START.isoformat()},
                 "lookback_sessions": 0},
        session="extended", backfill={"fan_out": fan_out}, **extra)


def _minute_rows(rt, sym, tf):
    with rt.conn() as conn:
        rows = conn.execute(mstore.intraday_sql(tf, adjust="none", include_invalid=True,
                                                fmt="json"),
                            {"symbol": sym, "start": M_START, "end": M_END, "after": None,
                             "tz": "America/New_York",
                             "limit": None}).fetchall()
    return [(r[0], json.loads(r[1])) for r in rows]


@pytest.mark.parametrize("fan_out", [True, False], ids=["fanned-out", "one-worker"])
def test_demo_minute_bars_are_replaced_by_the_vendors(config_factory, frozen_now,
                                                       minute_vendor, fan_out):
    truth, minutes = minute_vendor
    rt = _open(_minute_cfg(config_factory, fan_out))
    try:
        assert _run(rt)["status"] == "ok"
        assert _one(rt, "SELECT count(*) FROM minute_bars WHERE symbol = 'MSFT' "
                        "AND session = %s AND source = 'demo'", M_LACKING) == 1
    finally:
        rt.close()
    with PolygonFake(truth.bars, truth.splits, minutes=minutes) as fake:
        provider = _polygon(fake)
        provider["polygon"]["grouped_daily"] = False
        rt = _open(_minute_cfg(config_factory, fan_out, provider=provider))
        try:
            body = _client(rt).get("/api/v1/symbols").get_json()
            assert {s["source"] for s in body["symbols"]} == {"demo"}
            res = _run(rt)
            assert res["status"] == "ok", res
            assert _one(rt, "SELECT count(*) FROM minute_bars WHERE source <> 'polygon'") == 0
            assert _one(rt, "SELECT count(*) FROM market_data WHERE source <> 'polygon'") == 0
            for sym in M_SYMS:
                want = minutes[sym].to_candles()
                got = _minute_rows(rt, sym, "1m")
                assert [t // 1000 for t, _ in got] == want.t.tolist(), sym
                assert [g["close"] for _, g in got] == want.close.tolist(), sym
                # the rollups are the vendor's minutes', none left from the demo's
                five = _minute_rows(rt, sym, "5m")
                assert {g["session"] for _, g in five} == {g["session"] for _, g in got}
            assert _one(rt, "SELECT count(*) FROM rollup_bars WHERE symbol = 'MSFT' "
                            "AND session = %s", M_LACKING) == 0
            with rt.conn() as conn:
                stats = mstore.minute_stats(conn)
            assert {stats[s]["source"] for s in M_SYMS} == {"polygon"}
            body = _client(rt).get("/api/v1/symbols").get_json()
            assert {s["source"] for s in body["symbols"]} == {"polygon"}
        finally:
            rt.close()
