"""Minute bars from the loopback Polygon: exact store, rollups equal to the
vendor's own multi-minute aggregates, no missing minute reported as a gap,
a restarted backfill that fetches nothing twice, and the ETA in progress."""
from __future__ import annotations

import datetime as dt
import json

import pytest
import requests

from appliance.core import calendar as tcal
from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.runtime.runtime import Runtime
from appliance.store import minutes as mstore
from appliance.web import create_app
from tests.fakes.minute_truth import make_minute_truth
from tests.fakes.polygon_fake import PolygonFake
from tests.fakes.vendor_minutes import VendorMinutes

SYMS = ["AAPL", "MSFT", "SPY"]
START, END = dt.date(2024, 6, 3), dt.date(2024, 7, 31)  # 07-03: early close
SPLIT = dt.date(2024, 6, 10)


@pytest.fixture(scope="module")
def truth():
    return make_minute_truth(SYMS, START, END, seed=5, session="extended",
                             split_symbols=["AAPL"], split_date=SPLIT, split_to=4.0)


def _cfg(config_factory, fake, session="extended", **extra):
    return config_factory(
        provider={"name": "polygon",
                  "polygon": {"api_key": "test-key", "base_url": fake.base_url,
                              "requests_per_minute": 6000, "timeout_seconds": 2,
                              "max_retries": 3, "retry_backoff_seconds": 0.01,
                              "max_retry_seconds": 10, "grouped_daily": False}},
        symbols=[{"symbol": s, "timeframes": ["1m", "1d"]} for s in SYMS],
        history={"start": {"1d": START.isoformat(), "1m": START.isoformat()},
                 "lookback_sessions": 0},
        session=session, **extra)


def _run(rt):
    return runs.execute(rt, "backfill", runs.manual_slot(), run_backfill, params={})


def _rows(rt, sym, tf, start=START, end=END):
    with rt.conn() as conn:
        rows = conn.execute(mstore.intraday_sql(tf, adjust="none", include_invalid=True,
                                                fmt="json"),
                            {"symbol": sym, "start": start, "end": end, "after": None,
                             "tz": "America/New_York",
                             "limit": None}).fetchall()
    return [(r[0], json.loads(r[1])) for r in rows]


def _now():
    return dt.datetime(2024, 8, 1, 12, tzinfo=dt.UTC)


@pytest.fixture
def frozen_now(monkeypatch):
    """Backfills run as of 2024-08-01: the latest completed session is 07-31."""
    import appliance.ingest.backfill as bf
    real = bf.dt.datetime

    class Frozen(real):
        @classmethod
        def now(cls, tz=None):
            return _now() if tz else _now().replace(tzinfo=None)
    monkeypatch.setattr(bf.dt, "datetime", Frozen)
    yield


def test_minute_backfill_stores_the_vendor_exactly_and_rolls_up_like_it(
        config_factory, truth, frozen_now):
    with PolygonFake(truth.bars, truth.splits, minutes=truth.minutes) as fake:
        rt = Runtime.from_path(_cfg(config_factory, fake))
        rt.open()
        try:
            res = _run(rt)
            assert res["status"] == "ok", res
            m = res["minutes"]
            # two months per symbol: one request each (a month is under 50,000 minutes),
            # each a chunk beside the daily ones
            assert m["requests_planned"] == m["months_done"] == 2 * len(SYMS)
            assert res["chunks"] == 3 * len(SYMS) and m["bars"] == sum(
                len(truth.minutes[s]) for s in SYMS)
            # no worker took a chunk (this process did them all): none is left
            # queued for a worker to find done while later jobs wait behind it
            from appliance.jobs.queue import queue
            with rt.conn() as conn:
                run_id = conn.execute("SELECT max(id) FROM job_runs WHERE job = 'backfill'"
                                      ).fetchone()[0]
            left = [j.description for j in queue(rt).jobs
                    if (j.description or "").startswith(f"backfill run {run_id} chunk")]
            assert left == [], left[:3]
            assert fake.count("/v2/aggs/ticker/AAPL/range/1/minute") == 2
            for sym in SYMS:
                want = truth.minutes[sym].to_candles()
                got = _rows(rt, sym, "1m")
                assert [t // 1000 for t, _ in got] == want.t.tolist()
                for col in ("open", "high", "low", "close", "volume", "vwap"):
                    assert [g[col] for _, g in got] == getattr(want, col).tolist(), (sym, col)
                assert [g["trades"] for _, g in got] == want.trades.tolist()
                # New York wall time with its summer offset, the session's date
                assert got[0][1]["time"].endswith("-04:00") and got[0][1]["session"] == \
                    got[0][1]["time"][:10]
                # rollups against the vendor's own aggregates, bar for bar
                for tf, mult, span in (("5m", 5, "minute"), ("1h", 1, "hour"),
                                       ("4h", 4, "hour"), ("15m", 15, "minute")):
                    url = (f"/v2/aggs/ticker/{sym}/range/{mult}/{span}/{START}/{END}"
                           f"?adjusted=false&limit=50000&apiKey=test-key")
                    vendor = requests.get(fake.base_url + url, timeout=10).json()["results"]
                    ours = _rows(rt, sym, tf)
                    assert [t for t, _ in ours] == [r["t"] for r in vendor], (sym, tf)
                    for (_, g), r in zip(ours, vendor, strict=False):
                        assert (g["open"], g["high"], g["low"], g["close"], g["volume"],
                                g["trades"]) == (r["o"], r["h"], r["l"], r["c"], r["v"],
                                                 r["n"]), (sym, tf)
                        assert g["vwap"] == pytest.approx(r["vw"], abs=6e-5)
            with rt.conn() as conn:
                stats = mstore.minute_stats(conn)
                missing = conn.execute("""SELECT count(*) FROM missing_sessions
                                          WHERE timeframe = '1m'""").fetchone()[0]
            # plenty of minutes are missing in the truth; not one session is
            assert missing == 0
            assert all(stats[s]["completeness"] == 1.0 for s in SYMS)
            assert all(stats[s]["inconsistent_sessions"] == 0 for s in SYMS), stats
            # adjusted on read: AAPL before its 4-for-1 split is divided by 4
            with rt.conn() as conn:
                adj = conn.execute(mstore.intraday_sql("1h", adjust="splits",
                                                       include_invalid=False, fmt="json"),
                                   {"symbol": "AAPL", "start": START, "end": START,
                                    "after": None, "tz": "America/New_York", "limit": 1}).fetchone()
            raw = _rows(rt, "AAPL", "1h", START, START)[0][1]
            assert json.loads(adj[1])["open"] == raw["open"] * 0.25
            _spot_check_rollups(rt)
            _daily_versus_minutes(rt)
        finally:
            rt.close()


def test_regular_session_keeps_regular_minutes_only(config_factory, truth, frozen_now):
    with PolygonFake(truth.bars, truth.splits, minutes=truth.minutes) as fake:
        rt = Runtime.from_path(_cfg(config_factory, fake, session="regular"))
        rt.open()
        try:
            assert _run(rt)["status"] == "ok"
            got = _rows(rt, "MSFT", "1m")
            vm = truth.minutes["MSFT"]
            assert [t for t, _ in got] == vm.t[vm.regular].tolist()
            early = [g for _, g in got if g["session"] == "2024-07-03"]
            assert early and max(g["time"] for g in early) < "2024-07-03T13:00"
        finally:
            rt.close()


def test_a_restarted_backfill_fetches_nothing_twice(config_factory, truth, frozen_now):
    # the vendor fails MSFT's second month: the run is partial, the first month kept
    with PolygonFake(truth.bars, truth.splits, minutes=truth.minutes) as fake:
        path = _cfg(config_factory, fake)
        rt = Runtime.from_path(path)
        rt.open()
        try:
            fake.fault_paths = "/v2/aggs/ticker/MSFT/range/1/minute/2024-07-01"
            fake.add_faults(["500"] * 20)
            first = _run(rt)
            assert first["status"] == "partial", first
            assert "MSFT (1m 2024-07)" in first["failed"]  # the month, in a fanned-out run
            fake.fault_paths = "/nothing"
            before = len(fake.log)
            second = _run(rt)
            assert second["status"] == "ok", second
            assert second["minutes"]["requests_planned"] == 1  # MSFT's July only
            # MSFT's July of minute bars, and nothing else (lookback_sessions: 0)
            again = [e[0] for e in fake.log[before:]]
            assert again == ["/v2/aggs/ticker/MSFT/range/1/minute/2024-07-01/2024-07-31"], again
            with rt.conn() as conn:
                run = runs.get(conn, second["run_id"])
            # the minute phase's progress, final: every planned month done, nothing left
            p = run["progress"]
            assert (p["months_total"], p["months_done"], p["eta_s"]) == (1, 1, 0)
        finally:
            rt.close()


def test_cli_backfill_shows_the_minute_phase_with_its_eta(config_factory, truth):
    """The command as an operator runs it (today's date: every month since the
    truth's start is planned; the ones after it are empty)."""
    import subprocess
    import sys
    with PolygonFake(truth.bars, truth.splits, minutes=truth.minutes) as fake:
        path = _cfg(config_factory, fake, backfill={"fan_out": False})
        res = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(path),
                              "backfill"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    from appliance.core import calendar as tcal
    last = tcal.latest_completed_session("XNYS", dt.datetime.now(dt.UTC))
    months = len(SYMS) * sum(1 for _ in _months(START, last))
    # not a terminal: plain progress lines, the last one forced at the end
    assert f"progress: {months}/{months} months of 1m" in res.stderr, res.stderr
    assert "ETA 0m00s" in res.stderr
    # the daily phase's last report is forced too: every symbol done, not 0 of them
    n = len(SYMS)
    assert f"progress: {n}/{n} symbols" in res.stderr, res.stderr
    assert f"1m: {months} month(s) fetched" in res.stdout


def _months(a: dt.date, b: dt.date):
    y, m = a.year, a.month
    while (y, m) <= (b.year, b.month):
        yield y, m
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)


def _spot_check_rollups(rt):
    """The spot-check's rollup comparison agrees with the vendor, then finds a
    bar we corrupt on purpose."""
    from appliance.ingest import minutes as intraday
    from appliance.providers import make_provider
    provider = make_provider(rt.config["provider"])
    res = intraday.rollup_check(rt.conn, rt.config, provider, 4, tolerance_pct=0.2, seed=0.5)
    assert res["days"] == 4 and res["compared"] > 100 and res["mismatches"] == 0, res
    with rt.conn() as conn:
        # the third 5m bar of each session 5 % higher: a float row's high, a
        # candle row's open (0014: high, low and close follow it)
        conn.execute("""UPDATE rollup_bars SET high[3] = high[3] * 1.05
                        WHERE timeframe = '5m' AND scale IS NULL""")
        conn.execute("""UPDATE rollup_bars SET open_scaled[3] = open_scaled[3] * 105 / 100
                        WHERE timeframe = '5m' AND scale IS NOT NULL""")
    res = intraday.rollup_check(rt.conn, rt.config, provider, 4, tolerance_pct=0.2, seed=0.5)
    assert res["mismatches"] == 4 and res["pairs"][0]["timeframe"] == "5m", res


def test_console_job_page_shows_the_minute_phase_and_its_eta(client, runtime):
    """A running backfill in its minute phase: the jobs table and the run's page
    show the months done and the ETA."""
    from appliance.jobs import runs as runs_mod
    with runtime.conn() as conn:
        run_id = runs_mod.claim(conn, "backfill", "manual:eta", trigger="manual",
                                params={}, timeout_s=600)
        runs_mod.start(conn, run_id)
        runs_mod.progress(conn, run_id, {"phase": "minutes", "months_total": 40,
                                         "months_done": 10, "eta_s": 372.4,
                                         "current": "SPY 2025-03"})
    page = client.get(f"/jobs/{run_id}").get_data(as_text=True)
    assert "ETA 6m12s" in page and "10 of 40 months of minute bars" in page
    table = client.get("/jobs").get_data(as_text=True)
    assert "ETA 6m12s" in table and 'aria-valuenow="25"' in table


def _daily_versus_minutes(rt):
    """A daily high the regular-hours minutes do not reach counts as one
    inconsistent session (the early close of 07-03 included, untouched)."""
    from appliance.ingest import minutes as intraday
    with rt.conn() as conn:
        conn.execute("""UPDATE market_data SET high = high * 1.05 WHERE symbol = 'SPY'
                        AND ts = '2024-07-03 00:00 America/New_York'""")
        intraday.refresh_stats(conn, rt.config, "SPY")
        stats = mstore.minute_stats(conn)
    assert stats["SPY"]["inconsistent_sessions"] == 1
    assert stats["MSFT"]["inconsistent_sessions"] == 0


def test_sessions_the_vendor_answered_without_minutes_are_missing(config_factory, truth,
                                                                   frozen_now):
    """MSFT keeps minute bars but the vendor has none; AAPL's stop at the end
    of June. Both showed as complete (the span ran from the first to the last
    stored session, and a symbol without any had no stats at all)."""
    july = int(dt.datetime(2024, 7, 1, 4, tzinfo=dt.UTC).timestamp() * 1000)
    aapl = truth.minutes["AAPL"]
    minutes = {"AAPL": aapl.between(0, july - 1), "MSFT": VendorMinutes.empty("MSFT"),
               "SPY": truth.minutes["SPY"]}
    with PolygonFake(truth.bars, truth.splits, minutes=minutes) as fake:
        rt = Runtime.from_path(_cfg(config_factory, fake))
        rt.open()
        try:
            assert _run(rt)["status"] == "ok"
            sessions = tcal.sessions("XNYS", START, END).astype(object).tolist()
            with rt.conn() as conn:
                stats = mstore.minute_stats(conn)
                missing = {s: [r[0] for r in conn.execute(
                    """SELECT session FROM missing_sessions WHERE symbol = %s
                       AND timeframe = '1m' ORDER BY session""", (s,))] for s in SYMS}
            assert missing["MSFT"] == sessions
            assert (stats["MSFT"]["sessions"], stats["MSFT"]["completeness"]) == (0, 0.0)
            assert missing["AAPL"] == [d for d in sessions if d >= dt.date(2024, 7, 1)]
            assert 0.4 < stats["AAPL"]["completeness"] < 0.6
            assert missing["SPY"] == [] and stats["SPY"]["completeness"] == 1.0
            body = create_app(runtime=rt).test_client().get("/api/v1/symbols").get_json()
            msft = next(s for s in body["symbols"] if s["symbol"] == "MSFT")
            assert [(r["timeframe"], r["bars"], r["completeness"])
                    for r in msft["resolutions"] if r["timeframe"] == "1m"] == [("1m", 0, 0.0)]
        finally:
            rt.close()
