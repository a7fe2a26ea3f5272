"""The operator's routine as jobs, on real PostgreSQL: spot-check against a loopback
second source, maintenance (statistics, index rebuilds, partitions ahead, data
retention), retention of the appliance's own history, and the performance review."""
from __future__ import annotations

import collections
import datetime as dt
import functools
import re
import subprocess

import numpy as np
import pytest

from appliance.alerts import rules as alerts
from appliance.alerts.rules import disk_check
from appliance.core.candles import Bars
from appliance.core.errors import ProviderError
from appliance.ingest import daily
from appliance.ingest.backfill import run_backfill
from appliance.jobs import registry, runs
from appliance.ops.maintenance import maintain
from appliance.ops.performance import review
from appliance.ops.retention import prune_history
from appliance.ops.spotcheck import spot_check
from appliance.store import pool as db
from tests.fakes.polygon_fake import PolygonFake, make_truth
from tests.fakes.yahoo_fake import YahooFake

SYMS = ["AAPL", "NVDA"]
START, END = dt.date(2024, 1, 2), dt.date(2024, 3, 28)
SPLIT_DAY = dt.date(2024, 2, 15)


def _execute(rt, job, fn, **params):
    """The job run as the worker runs it; its result holds only the keys its
    job's result type declares (what the console renders)."""
    res = runs.execute(rt, job, runs.manual_slot(), fn, params=params)
    undeclared = set(res) - set(registry.result_keys(job)) - {"run_id"}
    assert not undeclared, f"{job} returns keys its result type does not declare: {undeclared}"
    return res


def _open(path):
    from appliance.runtime.runtime import Runtime
    rt = Runtime.from_path(path)
    rt.open()
    return rt


# --------------------------------------------------------------------------- spot-check

@pytest.fixture
def truth():
    return make_truth(SYMS, START, END, seed=5, split_symbol="NVDA", split_date=SPLIT_DAY,
                      split_to=4.0)


@pytest.fixture
def stored(config_factory, truth):
    """A store backfilled from the Polygon fake; yields a function that opens a
    Runtime whose second source is a given Yahoo fake."""
    opened = []
    with PolygonFake(truth.bars, truth.splits) as poly:
        def for_yahoo(yahoo_url: str, **spot):
            path = config_factory(
                provider={"name": "polygon",
                          "polygon": {"api_key": "test-key", "base_url": poly.base_url,
                                      "requests_per_minute": 6000,
                                      "retry_backoff_seconds": 0.01},
                          "yahoo": {"base_url": yahoo_url, "requests_per_minute": 6000,
                                    "max_retries": 1, "retry_backoff_seconds": 0.01,
                                    "timeout_seconds": 2}},
                symbols=SYMS, history={"start": START.isoformat(), "lookback_sessions": 5},
                spot_check={"source": "yahoo", "samples": 20, "match_pct": 0.2,
                            "mismatch_pct": 1, **spot})
            rt = _open(path)
            opened.append(rt)
            return rt

        rt = for_yahoo("http://127.0.0.1:9")
        res = _execute(rt, "backfill", run_backfill, end=END.isoformat())
        assert res["status"] == "ok", res
        yield for_yahoo
    for rt in opened:
        rt.close()


def _n_sessions(truth):
    return sum(len(b) for b in truth.bars.values())


def _last_spot_result(rt):
    with rt.conn() as conn:
        row = conn.execute("""SELECT status, result FROM job_runs WHERE job = 'spot_check'
                              AND status IN ('ok', 'partial') ORDER BY finished_at DESC
                              LIMIT 1""").fetchone()
    return row


def test_spot_check_of_a_clean_store_matches_every_pair_including_across_a_split(stored, truth):
    with YahooFake(truth.bars, truth.splits) as yahoo:
        rt = stored(yahoo.base_url, samples=_n_sessions(truth) + 10)
        res = _execute(rt, "spot_check", spot_check)
        requests = sum(yahoo.requests.values())
    assert res["status"] == "ok", res
    assert res["samples"] == res["compared"] == _n_sessions(truth)
    assert res["mismatches"] == 0 and res["close"] == 0 and res["mismatch_pct"] == 0
    assert res["matches"] == res["compared"]
    assert res["unavailable"] == []
    assert requests == len(SYMS)  # one request per symbol over its sampled range
    nvda_before = [p for p in res["pairs"]
                   if p["symbol"] == "NVDA" and p["session"] < SPLIT_DAY.isoformat()]
    assert nvda_before, "pairs before the split were compared"
    for p in nvda_before:  # the raw close is 4x the split-adjusted one
        assert p["stored_close_adjusted"] == pytest.approx(p["stored_close"] / 4, rel=1e-9)
        assert p["diff_pct"] < 0.01
    status, stored_result = _last_spot_result(rt)
    assert status == "ok"
    assert stored_result["mismatch_pct"] == 0 and len(stored_result["pairs"]) == res["compared"]


def test_spot_check_finds_exactly_the_one_wrong_price_of_the_second_source(stored, truth):
    wrong_day = np.datetime64("2024-02-05", "D")  # NVDA, before its split
    b = truth.bars["NVDA"]
    i = int(np.nonzero(b.session == wrong_day)[0][0])
    close = b.close.copy()
    close[i] *= 1.03
    bad = dict(truth.bars)
    bad["NVDA"] = Bars("NVDA", b.session, b.open, b.high, b.low, close, b.volume, b.vwap,
                       b.trades, "truth")
    with YahooFake(bad, truth.splits) as yahoo:
        rt = stored(yahoo.base_url, samples=_n_sessions(truth))
        res = _execute(rt, "spot_check", spot_check)
    assert res["status"] == "ok", res
    mism = [p for p in res["pairs"] if p["verdict"] == "mismatch"]
    assert [(p["symbol"], p["session"]) for p in mism] == [("NVDA", "2024-02-05")]
    assert mism[0]["diff_pct"] == pytest.approx(100 * 0.03 / 1.03, rel=1e-3)
    assert res["mismatches"] == 1 and res["matches"] == res["compared"] - 1
    assert res["mismatch_pct"] == pytest.approx(100 / res["compared"], rel=1e-3)
    _, stored_result = _last_spot_result(rt)
    assert stored_result["mismatches"] == 1
    assert [p for p in stored_result["pairs"] if p["verdict"] == "mismatch"][0]["session"] \
        == "2024-02-05"
    with rt.conn() as conn:
        ev = conn.execute("""SELECT count(*) FROM events WHERE kind = 'spot_check'
                             AND level = 'warning'""").fetchone()[0]
    assert ev == 1


def test_one_wrong_price_among_the_sampled_pairs_of_a_symbol_opens_the_spot_check_alert(
        stored, truth):
    wrong_day = np.datetime64("2024-03-05", "D")  # NVDA, after its split
    b = truth.bars["NVDA"]
    i = int(np.nonzero(b.session == wrong_day)[0][0])
    close = b.close.copy()
    close[i] *= 0.95
    bad = dict(truth.bars)
    bad["NVDA"] = Bars("NVDA", b.session, b.open, b.high, b.low, close, b.volume, b.vwap,
                       b.trades, "truth")
    with YahooFake(bad, truth.splits) as yahoo:
        rt = stored(yahoo.base_url, samples=len(b))
        res = _execute(rt, "spot_check", spot_check, symbols=["NVDA"])
    assert res["mismatches"] == 1 and res["mismatch_pct"] > 1  # 1 of the NVDA sessions
    ev = alerts.evaluate(rt, disk_usage=lambda p: collections.namedtuple("U", "total used free")(
        100, 10, 90), notify=False)
    assert "spot_check_mismatch" in ev["opened"]
    with rt.conn() as conn:
        msg, details = conn.execute("SELECT message, details FROM alerts "
                                    "WHERE key = 'spot_check_mismatch'").fetchone()
    assert "NVDA 2024-03-05" in msg and "Response:" in msg
    assert [(p["symbol"], p["session"]) for p in details["pairs"]] == [("NVDA", "2024-03-05")]


def test_spot_check_samples_a_bounded_random_subset(stored, truth):
    with YahooFake(truth.bars, truth.splits) as yahoo:
        rt = stored(yahoo.base_url, samples=15)
        res = _execute(rt, "spot_check", spot_check, seed=3)
    assert res["status"] == "ok"
    assert res["samples"] == res["compared"] == 15
    keys = {(p["symbol"], p["session"]) for p in res["pairs"]}
    assert len(keys) == 15
    assert res["mismatches"] == 0


def test_spot_check_lists_a_symbol_the_source_does_not_know_as_unavailable(stored, truth):
    with YahooFake({"AAPL": truth.bars["AAPL"]}, truth.splits,
                   null_dates=[dt.date(2024, 1, 3)]) as yahoo:
        rt = stored(yahoo.base_url, samples=_n_sessions(truth))
        res = _execute(rt, "spot_check", spot_check)
    assert res["status"] == "partial"
    n_nvda = len(truth.bars["NVDA"])
    assert sum(1 for u in res["unavailable"] if u["symbol"] == "NVDA") == n_nvda
    assert [u["session"] for u in res["unavailable"] if u["symbol"] == "AAPL"] == ["2024-01-03"]
    assert res["compared"] == len(truth.bars["AAPL"]) - 1 and res["mismatches"] == 0


def test_spot_check_fails_when_the_source_fails_for_every_symbol(stored, truth):
    with YahooFake({}, []) as yahoo:  # it answers, with an error, for each symbol
        rt = stored(yahoo.base_url, samples=10)
        with pytest.raises(ProviderError) as e:
            _execute(rt, "spot_check", spot_check)
    assert "every request to yahoo failed (2 symbol(s) asked)" in e.value.message
    with rt.conn() as conn:
        status = conn.execute("SELECT status FROM job_runs WHERE job = 'spot_check'").fetchone()[0]
    assert status == "failed"


def test_spot_check_stops_asking_a_source_that_never_answers(stored, monkeypatch):
    """An offline host: once the first symbols found no answer at all (here
    the first: UNREACHABLE_AFTER lowered to 1 for two stored symbols), the
    rest are not asked, and the run says so; its progress ends complete."""
    from appliance.ops import spotcheck as sc
    monkeypatch.setattr(sc, "UNREACHABLE_AFTER", 1)
    rt = stored("http://127.0.0.1:9")  # connection refused: no HTTP status
    with pytest.raises(ProviderError) as e:
        _execute(rt, "spot_check", spot_check)
    msg = e.value.message
    assert "every request to yahoo failed (1 symbol(s) asked, the other 1 not: the source " \
           "is unreachable): yahoo: connection error" in msg, msg
    with rt.conn() as conn:
        prog = conn.execute("SELECT progress FROM job_runs WHERE job = 'spot_check'").fetchone()[0]
    assert (prog["symbols_done"], prog["symbols"]) == (2, 2), prog


# --------------------------------------------------------------------------- maintenance

def _insert_rows(conn, symbols: int, days: int, start: dt.date):
    y0, y1 = start.year, (start + dt.timedelta(days=days)).year
    db.ensure_partitions(conn, y0, y1)
    conn.execute(
        """INSERT INTO market_data (symbol, ts, open, high, low, close, volume, source, validated,
                                    quality_score)
           SELECT 'S' || lpad(s::text, 3, '0'),
                  (%s::date + d)::timestamp AT TIME ZONE 'America/New_York',
                  10, 11, 9, 10.5, 1000, 'test', true, 1
           FROM generate_series(1, %s) s, generate_series(0, %s - 1) d
           ORDER BY 1, 2""", (start, symbols, days))


def _indexes_valid(conn) -> bool:
    return conn.execute("SELECT bool_and(indisvalid) FROM pg_index").fetchone()[0]


def test_maintenance_creates_partitions_ahead_and_keeps_all_data_without_retention(runtime):
    res = _execute(runtime, "maintenance", maintain)
    assert res["status"] == "ok", res
    year = dt.date.today().year
    with runtime.conn() as conn:
        parts = db.existing_partitions(conn)
        analyzed = conn.execute("""SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables
                                   WHERE relname = 'job_runs'""").fetchone()[0]
        minute_parts = db.existing_partitions(conn, "minute_bars")
        minute_analyzed = conn.execute(
            """SELECT relname, last_analyze IS NOT NULL FROM pg_stat_user_tables
               WHERE relname IN (%s, 'security_tickers')""", (f"minute_bars_y{year}",)).fetchall()
    assert {year, year + 1, year + 2} <= parts
    assert {year, year + 1, year + 2} <= minute_parts
    assert {f"market_data_y{year + 2}", f"minute_bars_y{year + 2}"} <= \
        set(res["partitions_created"])
    assert "market_data" in res["analyzed"] and analyzed
    # the intraday, flat-file and corporate-action tables too, their partitions included
    assert {"minute_bars", "rollup_bars", "flat_files", "security_tickers"} <= \
        set(res["analyzed"])
    assert sorted(minute_analyzed) == [(f"minute_bars_y{year}", True), ("security_tickers", True)]
    assert any(i["table"].startswith("minute_bars_y") for i in res["index_bloat"]["indexes"]), \
        res["index_bloat"]["indexes"]
    assert res["retention"]["dropped"] == []
    assert res["reindexed"] == []  # nothing is bloated in a fresh store
    assert res["index_bloat"]["method"] in ("estimate", "pgstatindex")
    again = _execute(runtime, "maintenance", maintain)
    assert again["partitions_created"] == []


def test_maintenance_rebuilds_a_bloated_index_and_leaves_healthy_ones(runtime):
    with runtime.conn() as conn:
        _insert_rows(conn, symbols=40, days=300, start=dt.date(2019, 1, 1))
    res = _execute(runtime, "maintenance", maintain, min_index_bytes=0)
    assert res["reindexed"] == [], res["reindexed"]  # a freshly written index is not bloated
    pkey = [i for i in res["index_bloat"]["indexes"]
            if i["index"] == "public.market_data_y2019_pkey"][0]
    assert pkey["bloat_pct"] is not None and pkey["bloat_pct"] < 30
    with runtime.conn() as conn:  # 90 % of the rows go: the index keeps its pages
        conn.execute("DELETE FROM market_data WHERE ts < '2019-10-01' AND ts >= '2019-01-01'")
    res = _execute(runtime, "maintenance", maintain, min_index_bytes=0)
    done = {i["index"]: i for i in res["reindexed"]}
    assert "public.market_data_y2019_pkey" in done, res["index_bloat"]
    assert done["public.market_data_y2019_pkey"]["bloat_pct"] >= 30
    assert done["public.market_data_y2019_pkey"]["bytes_after"] < \
        done["public.market_data_y2019_pkey"]["bytes"]
    with runtime.conn() as conn:
        assert _indexes_valid(conn)
        n = conn.execute("""SELECT count(*) FROM events WHERE kind = 'maintenance'
                            AND message LIKE 'maintenance: rebuilt index%%'""").fetchone()[0]
    assert n == len(done)


def test_maintenance_with_a_zero_threshold_rebuilds_every_partition_index_concurrently(runtime):
    with runtime.conn() as conn:
        _insert_rows(conn, symbols=5, days=30, start=dt.date(2024, 3, 1))
    res = _execute(runtime, "maintenance", maintain, bloat_threshold_pct=0,
                   min_index_bytes=0)
    assert res["status"] == "ok", res
    names = {i["index"] for i in res["reindexed"]}
    assert "public.market_data_y2024_pkey" in names
    assert "public.job_runs_pkey" in names
    assert not any(n == "public.market_data_pkey" for n in names)  # never the partitioned parent
    with runtime.conn() as conn:
        assert _indexes_valid(conn)
        # the rebuilt primary key still enforces uniqueness and answers lookups
        n = conn.execute("SELECT count(*) FROM market_data WHERE symbol = 'S001'").fetchone()[0]
    assert n == 30


def test_maintenance_retention_drops_whole_old_partitions_and_keeps_recent_data(config_factory):
    years = dt.date.today().year - 2022  # keeps 2022 onwards
    rt = _open(config_factory(retention={"data_years": years}))
    try:
        with rt.conn() as conn:
            _insert_rows(conn, symbols=2, days=20, start=dt.date(2015, 3, 2))
            _insert_rows(conn, symbols=2, days=20, start=dt.date(2024, 3, 2))
            for s in ("S001", "S002"):
                daily.refresh_stats(conn, rt.config, s)
            before = conn.execute("SELECT first_session FROM symbol_stats WHERE symbol = 'S001'"
                                  ).fetchone()[0]
        assert before.year == 2015
        res = _execute(rt, "maintenance", maintain)
        assert res["status"] == "ok", res
        assert "market_data_y2015" in res["retention"]["dropped"]
        assert res["retention"]["symbols_refreshed"] == ["S001", "S002"]
        with rt.conn() as conn:
            parts = db.existing_partitions(conn)
            left = conn.execute("SELECT min(ts), count(*) FROM market_data").fetchone()
            stats = conn.execute("SELECT first_session, records FROM symbol_stats "
                                 "WHERE symbol = 'S001'").fetchone()
            ev = conn.execute("""SELECT count(*) FROM events WHERE kind = 'maintenance'
                                 AND message LIKE 'retention: dropped partition%%'""").fetchone()[0]
        assert 2015 not in parts and 2024 in parts
        assert left[0].year == 2024 and left[1] == 40
        assert stats[0] == dt.date(2024, 3, 2) and stats[1] == 20
        assert ev == len(res["retention"]["dropped"])
    finally:
        rt.close()


# --------------------------------------------------------------------------- disk check

def test_disk_check_records_free_space_and_opens_the_disk_alert_when_low(runtime):
    full = lambda p: collections.namedtuple("U", "total used free")(1000, 950, 50)  # 5 % free  # noqa: E731
    res = runs.execute(runtime, "disk_check", runs.manual_slot(),
                       functools.partial(disk_check, disk_usage=full))
    assert res["status"] == "ok"
    assert res["low"] == ["data", "backup"]
    assert res["disks"]["data"]["free_pct"] == 5.0
    assert {"disk_low_data", "disk_low_backup"} <= set(res["alerts_opened"])
    fine = lambda p: collections.namedtuple("U", "total used free")(1000, 500, 500)  # noqa: E731
    res = runs.execute(runtime, "disk_check", runs.manual_slot(),
                       functools.partial(disk_check, disk_usage=fine))
    assert res["low"] == [] and {"disk_low_data", "disk_low_backup"} <= set(
        res["alerts_resolved"])


def test_disk_check_measures_a_real_nearly_full_backup_filesystem(config_factory, tmp_path):
    mnt = tmp_path / "backupfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    rt = None
    try:
        rt = _open(config_factory(backup={"path": str(mnt / "backups"), "min_free_pct": 1}))
        (mnt / "filler").write_bytes(b"x" * 1_900_000)
        res = _execute(rt, "disk_check", disk_check)
        assert res["disks"]["backup"]["free_pct"] < 20, res["disks"]
        assert res["disks"]["backup"]["total_bytes"] == 2 * 1024 * 1024
        assert "backup" in res["low"] and "disk_low_backup" in res["alerts_opened"]
        (mnt / "filler").unlink()   # space freed: the alert resolves
        res = _execute(rt, "disk_check", disk_check)
        assert "backup" not in res["low"] and "disk_low_backup" in res["alerts_resolved"]
    finally:
        if rt is not None:
            rt.close()
        subprocess.run(["umount", str(mnt)], check=False)


# --------------------------------------------------------------------------- retention

def test_retention_deletes_old_history_but_never_a_running_job(runtime):
    with runtime.conn() as conn:
        old = "now() - interval '400 days'"
        conn.execute(f"""INSERT INTO job_runs (job, slot, status, created_at, finished_at) VALUES
            ('backup', 'old-ok', 'ok', {old}, {old}),
            ('backup', 'old-failed', 'failed', {old}, {old}),
            ('backfill', 'old-running', 'running', {old}, NULL),
            ('backfill', 'old-queued', 'queued', {old}, NULL),
            ('backup', 'new-ok', 'ok', now(), now())""")
        conn.execute(f"""INSERT INTO events (ts, level, kind, message) VALUES
            ({old}, 'info', 'x', 'old'), (now() - interval '100 days', 'info', 'x', 'older'),
            (now() - interval '10 days', 'info', 'x', 'recent')""")
        conn.execute(f"""INSERT INTO alerts (key, severity, status, message, pending_since,
                                             opened_at, resolved_at) VALUES
            ('a', 'warning', 'resolved', 'old', {old}, {old}, {old}),
            ('b', 'warning', 'resolved', 'new', now(), now(), now() - interval '1 day'),
            ('c', 'critical', 'open', 'still open', {old}, {old}, NULL)""")
        conn.execute(f"""INSERT INTO config_reloads (ts, source, ok) VALUES
            ({old}, 'cli', true), (now(), 'cli', true)""")
    res = _execute(runtime, "retention", prune_history)
    assert res["status"] == "ok"
    assert res["job_runs_deleted"] == 2
    assert res["events_deleted"] == 2
    assert res["alerts_deleted"] == 1
    assert res["config_reloads_deleted"] == 1
    with runtime.conn() as conn:
        slots = {r[0] for r in conn.execute("SELECT slot FROM job_runs WHERE job <> 'retention'")}
        alerts = {r[0] for r in conn.execute("SELECT key FROM alerts")}
        msgs = {r[0] for r in conn.execute("SELECT message FROM events WHERE kind = 'x'")}
    assert slots == {"old-running", "old-queued", "new-ok"}
    assert alerts == {"b", "c"}
    assert msgs == {"recent"}


# --------------------------------------------------------------------------- performance

def test_performance_review_reports_sizes_growth_and_what_is_unavailable(runtime):
    with runtime.conn() as conn:
        _insert_rows(conn, symbols=3, days=50, start=dt.date(2024, 5, 1))
        has_pss = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"
                               ).fetchone() is not None
    res = _execute(runtime, "performance_review", review)
    assert res["status"] == "ok"
    assert res["database_bytes"] > 1_000_000
    md = res["market_data"]
    assert md["rows"] == 150 and md["bytes"] > 0 and md["avg_row_bytes"] > 50
    this_month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    assert res["growth"][-1]["rows"] == 150
    assert res["growth"][-1]["month"] in {this_month, (dt.datetime.now(dt.UTC)
                                                        - dt.timedelta(days=1)).strftime("%Y-%m")}
    assert res["growth"][-1]["bytes_estimated"] > 0
    if not has_pss:
        assert res["pg_stat_statements"] == {"available": False,
                                             "message": "pg_stat_statements is not installed"}
        assert res["slowest_queries"] == []
    assert 0 < len(res["tables"]) <= 20 and 0 < len(res["indexes"]) <= 20
    assert any(t["table"] == "public.market_data_y2024" and t["total_bytes"] > 0
               for t in res["tables"])
    sizes = [t["total_bytes"] for t in res["tables"]]
    assert sizes == sorted(sizes, reverse=True)
    # plain PostgreSQL is the only store: no TimescaleDB facts in the review
    assert not {"timescaledb", "compression", "compression_note"} & set(res)
    with runtime.conn() as conn:
        stored = runs.get(conn, res["run_id"])
    assert stored["status"] == "ok" and stored["result"]["database_bytes"] == res["database_bytes"]


def test_performance_review_projects_monthly_growth_from_recent_market_months(runtime):
    today = dt.datetime.now(dt.UTC).date()
    first = (today.replace(day=1) - dt.timedelta(days=100)).replace(day=1)
    with runtime.conn() as conn:
        _insert_rows(conn, symbols=2, days=(today - first).days, start=first)
        _insert_rows(conn, symbols=2, days=10, start=dt.date(2019, 1, 2))  # older than a year
    res = _execute(runtime, "performance_review", review)
    months = res["growth_by_market_month"]
    assert months[0]["month"] == first.strftime("%Y-%m")
    assert sum(m["rows"] for m in months) == 2 * (today - first).days
    this_month = today.strftime("%Y-%m")
    complete = [m for m in months if m["month"] < this_month][-3:]
    assert len(complete) == 3 and all(m["rows"] in (56, 58, 60, 62) for m in complete)
    avg = res["market_data"]["avg_row_bytes"]
    assert res["projected_bytes_per_month"] == int(
        sum(m["rows"] for m in complete) / 3 * avg)


def test_spot_check_runs_now_from_the_console_and_its_failure_opens_an_alert(stored):
    import subprocess
    import sys

    from appliance.alerts import rules as alerts
    from appliance.web import create_app
    from tests.integration.test_console import login
    rt = stored("http://127.0.0.1:9")  # the second source is unreachable
    app = create_app(runtime=rt)
    app.config["TESTING"] = True
    client = app.test_client()
    tok = login(client)
    page = client.get("/jobs").get_data(as_text=True)
    assert 'data-job="spot_check"' in page
    r = client.post("/jobs/spot_check/run", headers={"HX-Request": "true", "X-CSRFToken": tok})
    assert r.status_code == 200, r.get_data(as_text=True)
    run_id = int(re.search(r"queued as run (\d+)", r.get_data(as_text=True)).group(1))
    w = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(rt.config.path),
                        "worker", "--burst"], capture_output=True, text=True, timeout=240)
    assert w.returncode == 0, w.stderr[-2000:]
    with rt.conn() as conn:
        status, prog, error = conn.execute(
            "SELECT status, progress, error FROM job_runs WHERE id = %s", (run_id,)).fetchone()
    assert status == "failed" and error
    assert prog.get("final") == "failed" and prog.get("phase") != "comparing"
    res = alerts.evaluate(rt)
    assert "job_failing" in res["opened"], res
    with rt.conn() as conn:
        msg = conn.execute("SELECT message FROM alerts WHERE key = 'job_failing' "
                           "AND status = 'open'").fetchone()[0]
    assert "the last run of spot_check failed" in msg
