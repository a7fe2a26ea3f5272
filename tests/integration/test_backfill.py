"""Backfill end to end on real PostgreSQL: demo provider and the loopback Polygon fake."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs


def _run(rt, **params):
    return runs.execute(rt, "backfill", runs.manual_slot(), run_backfill, params=params)


def test_demo_backfill_stores_every_session_and_is_idempotent(runtime):
    first = _run(runtime)
    assert first["status"] == "ok", first
    assert first["inserted"] > 0
    with runtime.conn() as conn:
        n1 = conn.execute("SELECT count(*) FROM market_data").fetchone()[0]
        dupes = conn.execute("""SELECT count(*) FROM (SELECT symbol, ts FROM market_data
                                GROUP BY 1, 2 HAVING count(*) > 1) d""").fetchone()[0]
    assert n1 == first["inserted"]
    assert dupes == 0
    second = _run(runtime)
    assert second["status"] == "ok"
    assert second["inserted"] == 0 and second["updated"] == 0
    with runtime.conn() as conn:
        assert conn.execute("SELECT count(*) FROM market_data").fetchone()[0] == n1


# --------------------------------------------------------------------------- Polygon fake

from tests.fakes.polygon_fake import PolygonFake, make_truth  # noqa: E402

SYMS = ["AAPL", "MSFT", "NVDA", "SPY"]
START, END = dt.date(2024, 1, 2), dt.date(2024, 12, 31)


def _polygon_cfg(config_factory, fake, **extra):
    return config_factory(
        provider={"name": "polygon",
                  "polygon": {"api_key": "test-key", "base_url": fake.base_url,
                              "requests_per_minute": 6000, "timeout_seconds": 0.5,
                              "max_retries": 6, "retry_backoff_seconds": 0.01,
                              "max_retry_seconds": 30, **extra}},
        symbols=SYMS, history={"start": START.isoformat(), "lookback_sessions": 5})


def _stored(rt, symbol):
    with rt.conn() as conn:
        return conn.execute(
            """SELECT (ts AT TIME ZONE 'America/New_York')::date, open, high, low, close, volume,
                      vwap, trades FROM market_data WHERE symbol = %s ORDER BY ts""",
            (symbol,)).fetchall()


@pytest.fixture
def truth():
    # NVDA splits 4-for-1 mid-year; the split must be classified, not reported as a jump
    return make_truth(SYMS, START, END, seed=11, split_symbol="NVDA",
                      split_date=dt.date(2024, 6, 10), split_to=4.0)


def _runtime_for(path):
    from appliance.runtime.runtime import Runtime
    rt = Runtime.from_path(path)
    rt.open()
    return rt


def test_polygon_backfill_reproduces_the_vendor_exactly_through_faults(config_factory, truth):
    faults = ["429", "500", "hang", "truncated", None, "503", "502", None, "empty_page"]
    # the faults hit the bars (the reference requests before them, ticker events and
    # dividends, answer cleanly)
    with PolygonFake(truth.bars, truth.splits, page_size=100, faults=faults,
                     hang_seconds=1.5, fault_paths="/v2/aggs/") as fake:
        rt = _runtime_for(_polygon_cfg(config_factory, fake))
        try:
            res = _run(rt, end=END.isoformat())
            assert res["status"] == "ok", res
            assert res["retries"] >= 6
            for sym in SYMS:
                assert _stored(rt, sym) == truth.rows(sym), sym
            again = _run(rt, end=END.isoformat())
            assert again["status"] == "ok"
            assert again["inserted"] == 0 and again["updated"] == 0 and again["revised"] == 0
            for sym in SYMS:
                assert _stored(rt, sym) == truth.rows(sym)
            with rt.conn() as conn:
                split_gaps = conn.execute(
                    """SELECT (ts AT TIME ZONE 'America/New_York')::date, gap_kind
                       FROM market_data WHERE symbol = 'NVDA' AND gap_detected""").fetchall()
                n_requests = conn.execute("SELECT sum(count) FROM vendor_requests "
                                          "WHERE kind = 'request'").fetchone()[0]
        finally:
            rt.close()
    assert (dt.date(2024, 6, 10), "split") in split_gaps
    assert all(kind != "jump" for d, kind in split_gaps if d == dt.date(2024, 6, 10))
    assert n_requests >= fake.count()  - 1


def test_holidays_are_never_missing_and_a_removed_session_is(config_factory, truth):
    bars = dict(truth.bars)
    msft = bars["MSFT"]
    drop = np.where(msft.session == np.datetime64("2024-03-05"))[0][0]
    bars["MSFT"] = msft.take(np.delete(np.arange(len(msft)), drop))
    with PolygonFake(bars, truth.splits) as fake:
        rt = _runtime_for(_polygon_cfg(config_factory, fake))
        try:
            assert _run(rt, end=END.isoformat())["status"] == "ok"
            with rt.conn() as conn:
                missing = conn.execute("SELECT symbol, session FROM missing_sessions "
                                       "ORDER BY 1, 2").fetchall()
        finally:
            rt.close()
    # Good Friday (2024-03-29), Juneteenth (2024-06-19), Thanksgiving are holidays: not missing
    assert missing == [("MSFT", dt.date(2024, 3, 5))]


def test_bad_ticks_are_stored_but_not_validated(config_factory, truth):
    bars = dict(truth.bars)
    spy = bars["SPY"]
    i = int(np.where(spy.session == np.datetime64("2024-04-10"))[0][0])
    spy.high = spy.high.copy()
    spy.high[i] = spy.low[i] - 1.0  # high below low
    with PolygonFake(bars, truth.splits) as fake:
        rt = _runtime_for(_polygon_cfg(config_factory, fake))
        try:
            res = _run(rt, end=END.isoformat())
            assert res["rejected"] == 1
            with rt.conn() as conn:
                row = conn.execute(
                    """SELECT validated, issues FROM market_data WHERE symbol = 'SPY'
                       AND ts = '2024-04-10 00:00 America/New_York'""").fetchone()
        finally:
            rt.close()
    assert row == (False, ["ohlc_inconsistent"])


def test_a_revised_bar_is_updated_and_the_revision_recorded(config_factory, truth):
    with PolygonFake(truth.bars, truth.splits) as fake:
        rt = _runtime_for(_polygon_cfg(config_factory, fake))
        try:
            assert _run(rt, end=END.isoformat())["status"] == "ok"
            aapl = truth.bars["AAPL"]
            aapl.close = aapl.close.copy()
            old_close = float(aapl.close[-2])
            aapl.close[-2] = round(old_close * 1.001, 4)
            aapl.high = np.maximum(aapl.high, aapl.close)
            fake.set_bars("AAPL", aapl)
            res = _run(rt, end=END.isoformat())
            assert res["updated"] >= 1 and res["revised"] == 1, str(res)
            with rt.conn() as conn:
                rev = conn.execute("SELECT symbol, old->>'close', new->>'close' "
                                   "FROM revisions").fetchall()
        finally:
            rt.close()
    assert rev == [("AAPL", repr(old_close), repr(float(aapl.close[-2])))]


def test_an_unknown_api_key_fails_the_run_with_the_vendor_message(config_factory, truth):
    with PolygonFake(truth.bars, truth.splits, api_key="the-real-key") as fake:
        rt = _runtime_for(_polygon_cfg(config_factory, fake))
        try:
            res = _run(rt, end=END.isoformat())
            with rt.conn() as conn:
                ev = conn.execute("SELECT message FROM events WHERE kind = 'vendor'").fetchall()
        finally:
            rt.close()
    assert res["status"] == "failed"
    assert "Unknown API Key" in res["failed"]["AAPL"]
    assert fake.count() == 1  # no hammering with a bad key (the first request: ticker events)
    assert any("Unknown API Key" in m for (m,) in ev)


def test_a_daily_update_uses_grouped_daily_one_request_per_missing_session(config_factory, truth):
    with PolygonFake(truth.bars, truth.splits) as fake:
        path = _polygon_cfg(config_factory, fake)
        text = path.read_text().replace("lookback_sessions: 5", "lookback_sessions: 0")
        path.write_text(text)
        rt = _runtime_for(path)
        try:
            assert _run(rt, end="2024-12-27")["status"] == "ok"
            before_aggs = fake.count("/v2/aggs/ticker")
            res = _run(rt, end="2024-12-30")  # one session missing for every symbol
            grouped = fake.count("/v2/aggs/grouped")
            assert fake.count("/v2/aggs/ticker") == before_aggs
            for sym in SYMS:
                assert _stored(rt, sym) == [r for r in truth.rows(sym)
                                            if r[0] <= dt.date(2024, 12, 30)]
        finally:
            rt.close()
    assert res["plan"].startswith("grouped daily")
    assert grouped == 1


def test_ctrl_c_on_a_cli_backfill_records_an_interruption_not_a_traceback(config_factory,
                                                                         truth):
    import signal
    import subprocess
    import sys

    from tests.support import wait_until
    with PolygonFake(truth.bars, truth.splits, faults=["hang"] * 50, hang_seconds=60) as fake:
        path = _polygon_cfg(config_factory, fake, timeout_seconds=30)
        rt = _runtime_for(path)
        try:
            p = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config",
                                  str(path), "backfill"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)

            def running():
                with rt.conn() as conn:
                    return [r for r in runs.recent(conn, job="backfill")
                            if r["status"] == "running"] or None
            (run,) = wait_until(running, 60, "the backfill to run")
            wait_until(lambda: fake.log or fake.faults_served["hang"], 30, "a request")
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=60)
            assert p.returncode != 0
            assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
            assert "interrupted (Ctrl-C)" in err, err
            with rt.conn() as conn:
                done = runs.get(conn, run["id"])
            assert done["status"] == "failed" and done["error"].startswith("interrupted"), done
        finally:
            rt.close()


def test_appliance_run_takes_the_parameters_a_job_has_and_symbols_as_a_list(runtime):
    """``-p symbols=AAPL`` backfilled A, P and L; an unknown key failed the
    run with a traceback."""
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config",
                               str(runtime.config.path), "run", *args],
                              capture_output=True, text=True, timeout=300)
    r = cli("disk_check", "-p", "foo=1")
    assert r.returncode == 2 and "--param foo: disk_check takes no parameter" in r.stderr, r.stderr
    r = cli("backfill", "-p", "symbolz=AAPL")
    assert r.returncode == 2 and "backfill takes symbols, start, end" in r.stderr, r.stderr
    r = cli("backfill", "-p", "symbols=AAPL,aapl")
    assert r.returncode == 2 and "not a valid symbol: aapl" in r.stderr, r.stderr
    with runtime.conn() as conn:
        assert runs.recent(conn) == []  # none of those ran, or was recorded
    r = cli("backfill", "-p", "symbols=AAPL", "-p", "start=2024-01-02", "-p", "end=2024-01-31")
    assert r.returncode == 0, r.stderr
    with runtime.conn() as conn:
        stored = [row[0] for row in conn.execute("SELECT DISTINCT symbol FROM market_data")]
        (run,) = runs.recent(conn, job="backfill")
    assert stored == ["AAPL"] and run["params"]["symbols"] == ["AAPL"]
    r = cli("backfill", "-p", "symbols=AAPL,ZZZZ", "-p", "start=2024-01-02",
            "-p", "end=2024-01-05")
    assert "warning: ZZZZ not in symbols:" in r.stderr, r.stderr
