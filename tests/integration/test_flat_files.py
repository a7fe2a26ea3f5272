"""Whole-market history from the vendor's flat files, against a real S3 API
(moto's server on loopback) holding files this test writes in the vendor's
layout: ``us_stocks_sip/{day,minute}_aggs_v1/YYYY/MM/YYYY-MM-DD.csv.gz``,
header ``ticker,volume,open,close,high,low,window_start,transactions``,
nanosecond bar starts, gzip. PostgreSQL and Redis are real."""
from __future__ import annotations

import datetime as dt
import gzip
import json
import uuid

import boto3
import numpy as np
import pytest
import requests

from appliance.config.loader import load_config
from appliance.core import calendar as tcal
from appliance.core.errors import ProviderAuthError
from appliance.ingest import flatfiles as ingest
from appliance.providers.flatfiles import COLUMNS, FileInfo, FlatFileError, FlatFiles
from appliance.runtime.runtime import Runtime
from appliance.store import minutes as mstore
from appliance.store import pool as db
from tests.support import free_port

DAY = dt.date(2024, 3, 5)
DAY2 = dt.date(2024, 3, 6)
KEY_ID, SECRET = "AKIAFLATFILESTEST01", "flat-files-test-secret-0123"


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_server):
    name = "flatfiles-" + uuid.uuid4().hex[:12]
    s3 = _s3(s3_server)
    s3.create_bucket(Bucket=name)
    return name


def _s3(endpoint, key_id=KEY_ID, secret=SECRET):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=key_id, aws_secret_access_key=secret)


def _key(tf: str, day: dt.date) -> str:
    ds = "day_aggs_v1" if tf == "1d" else "minute_aggs_v1"
    return f"us_stocks_sip/{ds}/{day:%Y}/{day:%m}/{day.isoformat()}.csv.gz"


def _csv(rows, columns=COLUMNS) -> bytes:
    lines = [",".join(columns)]
    for r in rows:
        lines.append(",".join(str(r[c]) for c in columns))
    return gzip.compress(("\n".join(lines) + "\n").encode())


def _put(endpoint, bucket, tf, day, body: bytes) -> FileInfo:
    s3 = _s3(endpoint)
    key = _key(tf, day)
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    head = s3.head_object(Bucket=bucket, Key=key)
    return FileInfo(tf, day, key, head["ETag"].strip('"'), head["ContentLength"])


def _ns(day: dt.date, minute: int) -> int:
    return (tcal.local_midnight_epoch(day) + minute * 60) * 1_000_000_000


def _daily_rows(day=DAY):
    return [
        {"ticker": "AAPL", "volume": 51234567.5, "open": 170.1, "close": 171.25, "high": 172.0,
         "low": 169.8, "window_start": _ns(day, 0), "transactions": 612345},
        {"ticker": "MSFT", "volume": 20000000, "open": 400.0, "close": 401.5, "high": 402.25,
         "low": 398.75, "window_start": _ns(day, 0), "transactions": 300000},
        {"ticker": "BRK.B", "volume": 3000000, "open": 410.0, "close": 409.0, "high": 411.0,
         "low": 408.0, "window_start": _ns(day, 0), "transactions": 50000},
        {"ticker": "ACME.WS", "volume": 1000, "open": 0.5, "close": 0.55, "high": 0.6,
         "low": 0.45, "window_start": _ns(day, 0), "transactions": 12},
        {"ticker": "BAD", "volume": 1000, "open": 10.0, "close": 10.0, "high": 9.0,
         "low": 9.5, "window_start": _ns(day, 0), "transactions": 12},
    ]


def _minute_rows(day=DAY, seed=1, tickers=("AAPL", "THIN", "ZZZ.WS")):
    rng = np.random.default_rng(seed)
    rows = []
    for tk in tickers:
        minutes = np.arange(240, 1200) if tk != "THIN" else np.array([300, 575, 600, 601, 959,
                                                                      1000])
        minutes = minutes[rng.random(len(minutes)) > 0.2] if tk == "AAPL" else minutes
        price = 100.0
        for m in minutes.tolist():
            price = round(price + float(rng.normal(0, 0.05)), 2)
            o = price
            c = round(price + float(rng.normal(0, 0.03)), 2)
            h = round(max(o, c) + abs(float(rng.normal(0, 0.02))), 4)
            lo = round(min(o, c) - abs(float(rng.normal(0, 0.02))), 4)
            rows.append({"ticker": tk, "volume": float(rng.integers(1, 9000)) + 0.25,
                         "open": o, "close": c, "high": h, "low": lo,
                         "window_start": _ns(day, m), "transactions": int(rng.integers(1, 50))})
    return rows


def _config(config_factory, endpoint, bucket, *, session="extended", symbols=("SPY",),
            minute_start="2024-01-02", **over):
    env_free = {"enabled": True, "endpoint": endpoint, "bucket": bucket,
                "access_key_id": KEY_ID, "secret_access_key": SECRET, "max_retries": 0,
                "timeout_seconds": 10}
    provider = over.pop("provider", {"name": "demo", "polygon": {"flat_files": env_free}})
    universe = {"enabled": True, "exclude": [r".*\.WS$"], "daily_start": "2024-01-02",
                "minute_start": minute_start, **over.pop("universe", {})}
    path = config_factory(provider=provider, universe=universe,
                          symbols=list(symbols), session=session, **over)
    return path


@pytest.fixture
def flat(config_factory, s3_server, bucket):
    """(runtime, FlatFiles client, endpoint, bucket) with flat files and the universe on."""
    made = []

    def make(**kw):
        rt = Runtime.from_path(_config(config_factory, s3_server, bucket, **kw))
        rt.open()
        made.append(rt)
        return rt, ingest.client(rt.config)
    yield make, s3_server, bucket
    for rt in made:
        rt.close()


def _market_rows(rt, day):
    with rt.conn() as conn:
        return {r[0]: r[1:] for r in conn.execute(
            """SELECT symbol, open, high, low, close, volume, vwap, trades, source, validated,
                      to_char(ts AT TIME ZONE 'America/New_York', 'YYYY-MM-DD HH24:MI')
               FROM market_data WHERE timeframe = '1d'
                 AND ts = (%s::date::timestamp AT TIME ZONE 'America/New_York')""", (day,))}


def _file_row(rt, tf, day):
    with rt.conn() as conn:
        return conn.execute("SELECT etag, size, bars FROM flat_files WHERE timeframe = %s "
                            "AND day = %s", (tf, day)).fetchone()


# --------------------------------------------------------------------------- daily

def test_a_daily_file_stores_every_kept_tickers_bar_exactly(flat):
    make, endpoint, bucket = flat
    rt, ff = make()
    info = _put(endpoint, bucket, "1d", DAY, _csv(_daily_rows()))
    res = ingest.ingest(rt.conn, rt.config, ff, info, run_id=None)
    got = _market_rows(rt, DAY)
    assert set(got) == {"AAPL", "MSFT", "BRK.B", "BAD"}  # ACME.WS: excluded by the universe
    assert got["AAPL"] == (170.1, 172.0, 169.8, 171.25, 51234567.5, None, 612345,
                           "polygon-flatfile", True, "2024-03-05 00:00")
    assert got["BAD"][8] is False  # high below open: stored, flagged, like a REST bar
    assert res["files"] == 1 and res["bars"] == 4 and res["skipped"] == 1
    assert _file_row(rt, "1d", DAY) == (info.etag, info.size, 4)


def test_reordered_columns_read_by_name(flat):
    make, endpoint, bucket = flat
    rt, ff = make()
    cols = ("close", "ticker", "window_start", "low", "transactions", "high", "open", "volume")
    info = _put(endpoint, bucket, "1d", DAY, _csv(_daily_rows(), columns=cols))
    ingest.ingest(rt.conn, rt.config, ff, info)
    assert _market_rows(rt, DAY)["MSFT"][:5] == (400.0, 402.25, 398.75, 401.5, 20000000.0)


def test_a_republished_daily_file_records_the_one_changed_bar_as_a_revision(flat):
    make, endpoint, bucket = flat
    rt, ff = make()
    info = _put(endpoint, bucket, "1d", DAY, _csv(_daily_rows()))
    ingest.ingest(rt.conn, rt.config, ff, info)
    again = ingest.ingest(rt.conn, rt.config, ff, info)
    assert again["files"] == 0  # the same version: not read again
    rows = _daily_rows()
    rows[1]["close"] = 401.75
    info2 = _put(endpoint, bucket, "1d", DAY, _csv(rows))
    assert info2.etag != info.etag
    res = ingest.ingest(rt.conn, rt.config, ff, info2)
    assert res["revised"] == 1
    with rt.conn() as conn:
        revs = conn.execute("SELECT symbol, old->>'close', new->>'close' FROM revisions"
                            ).fetchall()
    assert revs == [("MSFT", "401.5", "401.75")]
    assert _file_row(rt, "1d", DAY)[0] == info2.etag


def test_a_file_bar_without_the_vwap_a_stored_rest_bar_has_leaves_it_as_it_is(flat):
    """A day's file read while REST bars of it are stored (OPERATIONS.md,
    "Load the whole market"): the same prices and volume without a vwap do
    not erase the stored vwap; a bar the file changes is replaced and revised."""
    make, endpoint, bucket = flat
    rt, ff = make()
    ingest.ingest(rt.conn, rt.config, ff, _put(endpoint, bucket, "1d", DAY, _csv(_daily_rows())))
    with rt.conn() as conn:  # as the REST API stored it: with the vendor's vwap
        conn.execute("""UPDATE market_data SET vwap = 170.9876, source = 'polygon'
                        WHERE symbol IN ('AAPL', 'MSFT') AND timeframe = '1d'""")
    before = _market_rows(rt, DAY)
    rows = _daily_rows()
    rows[1]["close"] = 401.75  # MSFT revised by the vendor
    res = ingest.ingest(rt.conn, rt.config, ff, _put(endpoint, bucket, "1d", DAY, _csv(rows)))
    assert res["revised"] == 1
    after = _market_rows(rt, DAY)
    assert after["AAPL"] == before["AAPL"]  # vwap 170.9876, source polygon: kept
    assert after["AAPL"][5] == 170.9876 and after["AAPL"][7] == "polygon"
    assert after["MSFT"][3] == 401.75 and after["MSFT"][5] is None  # the file's bar
    assert after["MSFT"][7] == "polygon-flatfile"


def test_a_ticker_listed_after_the_first_file_counts_its_sessions_from_its_first_bar(flat):
    """README, "Data quality": completeness counts from the symbol's first
    bar; a universe ticker absent from the first day's file was not listed
    yet, so it has no missing session and no gap before it."""
    from appliance.ingest import daily
    make, endpoint, bucket = flat
    rt, ff = make()
    first = [r for r in _daily_rows(DAY) if r["ticker"] != "BRK.B"]
    ingest.ingest(rt.conn, rt.config, ff, _put(endpoint, bucket, "1d", DAY, _csv(first)))
    ingest.ingest(rt.conn, rt.config, ff, _put(endpoint, bucket, "1d", DAY2,
                                                _csv(_daily_rows(DAY2))))
    with rt.conn() as conn:
        stats = daily.refresh_stats(conn, rt.config, "BRK.B")
        missing = conn.execute("SELECT count(*) FROM missing_sessions WHERE symbol = 'BRK.B'"
                               ).fetchone()[0]
    assert stats is not None and stats["completeness"] == 1.0, stats
    assert missing == 0


# --------------------------------------------------------------------------- minutes

@pytest.mark.parametrize("session", ["extended", "regular"])
def test_a_minute_file_stores_its_bars_in_new_york_time_per_session(flat, session):
    make, endpoint, bucket = flat
    rt, ff = make(session=session)
    rows = _minute_rows()
    info = _put(endpoint, bucket, "1m", DAY, _csv(rows))
    res = ingest.ingest(rt.conn, rt.config, ff, info)
    lo, hi = (240, 1200) if session == "extended" else (570, 960)
    for tk in ("AAPL", "THIN"):
        want = {r["window_start"] // 1_000_000: r for r in rows
                if r["ticker"] == tk and lo <= (r["window_start"] // 10**9
                                               - tcal.local_midnight_epoch(DAY)) // 60 < hi}
        with rt.conn() as conn:
            got = mstore.day_bars(conn, tk, "1m", DAY, tz="America/New_York")
        assert set(got) == set(want), tk
        for t, r in want.items():
            g = got[t]
            assert (g["open"], g["high"], g["low"], g["close"], g["volume"], g["trades"]) == \
                (r["open"], r["high"], r["low"], r["close"], r["volume"], r["transactions"])
            assert g["vwap"] is None
            local = dt.datetime.fromtimestamp(t / 1000, tcal_zone())
            assert g["time"] == local.isoformat()
    with rt.conn() as conn:
        assert mstore.day_bars(conn, "ZZZ.WS", "1m", DAY, tz="America/New_York") == {}
    assert res["outside_session"] == (0 if session == "extended" else
                                      sum(1 for r in rows if r["ticker"] != "ZZZ.WS") - res["bars"])


def test_a_minute_file_replaces_a_session_stored_before_and_copies_the_rest(flat):
    """A ticker whose session of the day REST stored first goes through the
    upsert (``symbols_on``); the file's other tickers are copied straight
    into minute_bars; both end up as the file has them."""
    make, endpoint, bucket = flat
    rt, ff = make()
    rows = _minute_rows()
    n = 5
    earlier = mstore.MinuteSession("AAPL", DAY, np.arange(570, 570 + n), *(np.full(n, 9.5),) * 4,
                                   np.full(n, 100.0), np.full(n, np.nan),
                                   np.full(n, 1, dtype=np.int64), [], "polygon")
    with rt.conn() as conn:
        mstore.ensure_partitions_for(conn, DAY, DAY)
        mstore.write_days(conn, [earlier], rollups=True)
    with rt.conn() as conn:
        assert mstore.symbols_on(conn, DAY) == {"AAPL"}
    res = ingest.ingest(rt.conn, rt.config, ff, _put(endpoint, bucket, "1m", DAY, _csv(rows)))
    assert res["files"] == 1 and res["revised"] == 0
    midnight = tcal.local_midnight_epoch(DAY)
    for tk in ("AAPL", "THIN"):
        want = {r["window_start"] // 1_000_000: r for r in rows if r["ticker"] == tk
                and 240 <= (r["window_start"] // 10**9 - midnight) // 60 < 1200}
        with rt.conn() as conn:
            got = mstore.day_bars(conn, tk, "1m", DAY, tz="America/New_York")
        assert set(got) == set(want), tk
        assert all(got[t]["close"] == r["close"] and got[t]["volume"] == r["volume"]
                   for t, r in want.items()), tk
    with rt.conn() as conn:
        sources = dict(conn.execute("SELECT symbol, source FROM minute_bars").fetchall())
        rolled = conn.execute("""SELECT count(*) FROM rollup_bars WHERE symbol = 'AAPL'
                                 AND timeframe = '4h' AND session = %s""", (DAY,)).fetchone()
    assert sources == {"AAPL": "polygon-flatfile", "THIN": "polygon-flatfile"}
    assert rolled == (1,)


def test_a_minute_file_session_without_the_vwap_of_a_stored_one_leaves_it_as_it_is(flat):
    """The same minutes, prices and volumes as a session REST stored with its
    vwap: the file's session (no vwap) is not written over it, nor its
    rollups; a session the file changes is replaced."""
    make, endpoint, bucket = flat
    rt, ff = make()
    rows = _minute_rows()
    midnight = tcal.local_midnight_epoch(DAY)
    mine = [r for r in rows if r["ticker"] == "AAPL"]
    minutes = np.array([(r["window_start"] // 10**9 - midnight) // 60 for r in mine])
    col = {k: np.array([r[k] for r in mine]) for k in ("open", "high", "low", "close", "volume")}
    stored = mstore.MinuteSession("AAPL", DAY, minutes, col["open"], col["high"], col["low"],
                                  col["close"], col["volume"], np.round(col["close"] + 0.0012, 4),
                                  np.array([r["transactions"] for r in mine], dtype=np.int64),
                                  [], "polygon")
    thin = [r for r in rows if r["ticker"] == "THIN"]
    n = len(thin)
    other = mstore.MinuteSession(
        "THIN", DAY, np.array([(r["window_start"] // 10**9 - midnight) // 60 for r in thin]),
        *(np.full(n, 9.5),) * 4, np.full(n, 100.0), np.full(n, 9.51),
        np.full(n, 1, dtype=np.int64), [], "polygon")
    with rt.conn() as conn:
        mstore.ensure_partitions_for(conn, DAY, DAY)
        mstore.write_days(conn, [stored, other], rollups=True)
        before = mstore.day_bars(conn, "AAPL", "1m", DAY, tz="America/New_York")
        rolled = conn.execute("""SELECT vwap FROM rollup_bars WHERE symbol = 'AAPL'
                                 AND timeframe = '1h' AND session = %s""", (DAY,)).fetchone()
    assert all(b["vwap"] is not None for b in before.values())
    res = ingest.ingest(rt.conn, rt.config, ff, _put(endpoint, bucket, "1m", DAY, _csv(rows)))
    assert res["files"] == 1 and res["revised"] == 0
    with rt.conn() as conn:
        assert mstore.day_bars(conn, "AAPL", "1m", DAY, tz="America/New_York") == before
        sources = dict(conn.execute("SELECT symbol, source FROM minute_bars").fetchall())
        # recomputed from the stored minutes (in SQL: the same sums in another order)
        assert conn.execute("""SELECT vwap FROM rollup_bars WHERE symbol = 'AAPL'
                               AND timeframe = '1h' AND session = %s""", (DAY,)).fetchone()[0] \
            == pytest.approx(rolled[0], rel=1e-12)
        thin_now = mstore.day_bars(conn, "THIN", "1m", DAY, tz="America/New_York")
    assert sources == {"AAPL": "polygon", "THIN": "polygon-flatfile"}
    assert {b["close"] for b in thin_now.values()} == {r["close"] for r in thin}  # replaced


def test_a_minute_file_of_2003_creates_the_partition_of_its_year(flat):
    make, endpoint, bucket = flat
    rt, ff = make(session="extended", minute_start="2003-01-02")
    day = dt.date(2003, 3, 4)
    rows = [r for r in _minute_rows(day) if r["ticker"] == "AAPL"]
    with rt.conn() as conn:
        assert 2003 not in db.existing_partitions(conn, "minute_bars")
    res = ingest.ingest(rt.conn, rt.config, ff, _put(endpoint, bucket, "1m", day, _csv(rows)))
    assert res["files"] == 1 and res["bars"] == len(rows)
    with rt.conn() as conn:
        assert 2003 in db.existing_partitions(conn, "minute_bars")
        got = mstore.day_bars(conn, "AAPL", "1m", day, tz="America/New_York")
        held = conn.execute("SELECT symbol, session FROM minute_bars_y2003").fetchall()
    assert len(got) == len(rows) and held == [("AAPL", day)]


def tcal_zone():
    from zoneinfo import ZoneInfo
    return ZoneInfo("America/New_York")


def test_rollups_of_a_minute_file_equal_their_recomputation(flat):
    make, endpoint, bucket = flat
    rt, ff = make(session="extended")
    rows = [r for r in _minute_rows() if r["ticker"] == "AAPL"]
    info = _put(endpoint, bucket, "1m", DAY, _csv(rows))
    ingest.ingest(rt.conn, rt.config, ff, info)
    for tf, width in (("5m", 5), ("1h", 60)):
        buckets: dict[int, list] = {}
        for r in rows:
            m = (r["window_start"] // 10**9 - tcal.local_midnight_epoch(DAY)) // 60
            buckets.setdefault(m // width * width, []).append(r)
        with rt.conn() as conn:
            got = mstore.day_bars(conn, "AAPL", tf, DAY, tz="America/New_York")
        assert len(got) == len(buckets)
        for start, rs in buckets.items():
            t = (tcal.local_midnight_epoch(DAY) + start * 60) * 1000
            g = got[t]
            assert g["open"] == rs[0]["open"] and g["close"] == rs[-1]["close"]
            assert g["high"] == max(r["high"] for r in rs)
            assert g["low"] == min(r["low"] for r in rs)
            assert g["volume"] == pytest.approx(sum(r["volume"] for r in rs), rel=1e-12)
            assert g["trades"] == sum(r["transactions"] for r in rs)


def test_a_republished_minute_file_with_one_changed_bar_records_one_revision(flat):
    make, endpoint, bucket = flat
    rt, ff = make()
    rows = _minute_rows()
    ingest.ingest(rt.conn, rt.config, ff, _put(endpoint, bucket, "1m", DAY, _csv(rows)))
    i = next(i for i, r in enumerate(rows) if r["ticker"] == "THIN")
    rows[i]["volume"] = 12345.5
    res = ingest.ingest(rt.conn, rt.config, ff, _put(endpoint, bucket, "1m", DAY, _csv(rows)))
    assert res["revised"] == 1
    with rt.conn() as conn:
        (sym, old, new), = conn.execute("SELECT symbol, old, new FROM revisions").fetchall()
        got = mstore.day_bars(conn, "THIN", "1m", DAY, tz="America/New_York")
    assert sym == "THIN" and new["volume"] == 12345.5 and old["volume"] != 12345.5
    assert got[rows[i]["window_start"] // 1_000_000]["volume"] == 12345.5


# --------------------------------------------------------------------------- bad input

def _nothing_stored(rt, tf, day):
    with rt.conn() as conn:
        n = conn.execute("SELECT (SELECT count(*) FROM market_data) + "
                         "(SELECT count(*) FROM minute_bars) + "
                         "(SELECT count(*) FROM flat_files)").fetchone()[0]
    return n == 0


def test_a_truncated_gzip_fails_its_file_and_keeps_none_of_its_bars(flat):
    make, endpoint, bucket = flat
    rt, ff = make()
    body = _csv(_minute_rows())
    info = _put(endpoint, bucket, "1m", DAY, body[: len(body) * 2 // 3])
    with pytest.raises(FlatFileError, match="corrupt or truncated"):
        ingest.ingest(rt.conn, rt.config, ff, info)
    assert _nothing_stored(rt, "1m", DAY)


def test_a_file_that_is_not_gzip_fails_clearly(flat):
    make, endpoint, bucket = flat
    rt, ff = make()
    info = _put(endpoint, bucket, "1d", DAY, b"ticker,volume\nAAPL,1\n")
    with pytest.raises(FlatFileError, match="corrupt or truncated"):
        ingest.ingest(rt.conn, rt.config, ff, info)
    assert _nothing_stored(rt, "1d", DAY)


def test_a_missing_column_is_named(flat):
    make, endpoint, bucket = flat
    rt, ff = make()
    cols = tuple(c for c in COLUMNS if c != "low")
    info = _put(endpoint, bucket, "1d", DAY, _csv(_daily_rows(), columns=cols))
    with pytest.raises(FlatFileError, match="lacks column.s. low"):
        ingest.ingest(rt.conn, rt.config, ff, info)
    assert _nothing_stored(rt, "1d", DAY)


def test_a_value_that_is_not_a_number_fails_the_file(flat):
    make, endpoint, bucket = flat
    rt, ff = make()
    rows = _daily_rows()
    rows[2]["open"] = "n/a"
    info = _put(endpoint, bucket, "1d", DAY, _csv(rows))
    with pytest.raises(FlatFileError, match="not the vendor's CSV layout"):
        ingest.ingest(rt.conn, rt.config, ff, info)
    assert _nothing_stored(rt, "1d", DAY)


def test_odd_tickers_are_left_out_and_named_in_an_event(flat):
    make, endpoint, bucket = flat
    rt, ff = make()
    rows = _daily_rows()
    rows.append(dict(rows[0], ticker="abc$x"))
    rows.append(dict(rows[0], ticker='"Q,R"'))
    info = _put(endpoint, bucket, "1d", DAY, _csv(rows))
    res = ingest.ingest(rt.conn, rt.config, ff, info)
    assert res["odd_tickers"] == 2 and "abc$x" not in _market_rows(rt, DAY)
    with rt.conn() as conn:
        msg, = conn.execute("SELECT message FROM events WHERE kind = 'flat_files'").fetchone()
    assert "'abc$x'" in msg and "'Q,R'" in msg


def test_a_holiday_has_no_file_and_listing_says_so(flat):
    make, endpoint, bucket = flat
    rt, ff = make()
    _put(endpoint, bucket, "1d", DAY, _csv(_daily_rows()))
    _put(endpoint, bucket, "1d", DAY2, _csv(_daily_rows(DAY2)))
    files = ff.list("1d", dt.date(2024, 2, 28), dt.date(2024, 3, 31))
    assert [f.day for f in files] == [DAY, DAY2]


def test_a_bucket_that_does_not_exist_is_named(flat):
    make, endpoint, bucket = flat
    rt, _ff = make()
    ff = FlatFiles(dict(rt.config["provider"]["polygon"]["flat_files"], bucket="no-such-bkt"))
    with pytest.raises(ProviderAuthError, match="bucket 'no-such-bkt' does not exist"):
        ff.list("1d", DAY, DAY)


@pytest.fixture
def s3_auth(s3_server):
    """moto checks credentials and IAM policies for the test's span: a user
    whose policy denies the 2003 files (a plan without that history)."""
    iam = boto3.client("iam", endpoint_url=s3_server, region_name="us-east-1",
                       aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
    user = "flat-" + uuid.uuid4().hex[:8]
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:GetObject",
         "Resource": "arn:aws:s3:::*/us_stocks_sip/day_aggs_v1/2003/*"}]}
    iam.put_user_policy(UserName=user, PolicyName="plan", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    requests.post(f"{s3_server}/moto-api/reset-auth", data=b"0", timeout=5)
    yield key["AccessKeyId"], key["SecretAccessKey"]
    requests.post(f"{s3_server}/moto-api/reset-auth", data=b"inf", timeout=5)


def test_wrong_credentials_are_refused_with_a_clear_error(flat, s3_auth):
    make, endpoint, bucket = flat
    rt, _ff = make()
    base = dict(rt.config["provider"]["polygon"]["flat_files"])
    for key_id, secret, code in (("AKIANOSUCHKEY0000000", "x" * 40, "InvalidAccessKeyId"),
                                 (s3_auth[0], "wrong-secret-" + "y" * 27,
                                  "SignatureDoesNotMatch")):
        ff = FlatFiles(dict(base, access_key_id=key_id, secret_access_key=secret))
        with pytest.raises(ProviderAuthError, match=f"credentials were refused .{code}."):
            ff.list("1d", DAY, DAY)


def test_a_403_for_a_date_outside_the_plan_names_the_plan(flat, s3_auth):
    make, endpoint, bucket = flat
    rt, _ff = make()
    old = dt.date(2003, 9, 2)
    info = None
    with pytest.MonkeyPatch.context():
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=5)
        info = _put(endpoint, bucket, "1d", old, _csv(_daily_rows(old)))
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=5)
    ff = FlatFiles(dict(rt.config["provider"]["polygon"]["flat_files"],
                        access_key_id=s3_auth[0], secret_access_key=s3_auth[1]))
    assert [f.day for f in ff.list("1d", old, old)] == [old]
    with pytest.raises(ProviderAuthError, match="vendor plan of these credentials does not "
                                                "include this date"):
        ingest.ingest(rt.conn, rt.config, ff, info)
    assert _nothing_stored(rt, "1d", old)


# --------------------------------------------------------------------------- the backfill

def _cli(path, *args, timeout=240):
    import os
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "APPLIANCE_LOG_LEVEL": "WARNING"})


def test_a_backfill_loads_the_universe_from_files_and_goes_on_past_a_bad_file(flat):
    make, endpoint, bucket = flat
    rt, ff = make(backfill={"fan_out": False})
    _put(endpoint, bucket, "1d", DAY, _csv(_daily_rows()))
    body = _csv(_daily_rows(DAY2))
    _put(endpoint, bucket, "1d", DAY2, body[:-20])  # truncated
    _put(endpoint, bucket, "1m", DAY, _csv(_minute_rows()))
    plan = _cli(rt.config.path, "backfill", "--plan", "--end", DAY2.isoformat())
    assert plan.returncode == 0, plan.stderr
    assert "1d: flat files (2 to ingest of 2, newest 2024-03-06; the universe" in plan.stdout
    assert "1m: flat files (1 to ingest of 1, newest 2024-03-05" in plan.stdout
    assert "1d REST: nothing to do" in plan.stdout  # SPY's days are in the files

    r = _cli(rt.config.path, "backfill", "--end", DAY2.isoformat())
    assert r.returncode == 1, r.stdout + r.stderr  # partial: one file failed
    assert "flat files: 2 of 3 ingested (1 failed)" in r.stdout
    assert "flat file 1d 2024-03-06: " in r.stdout and "corrupt or truncated" in r.stdout
    assert set(_market_rows(rt, DAY)) == {"AAPL", "MSFT", "BRK.B", "BAD"}
    assert _market_rows(rt, DAY2) == {}
    with rt.conn() as conn:
        ev = conn.execute("SELECT message FROM events WHERE kind = 'flat_files' "
                          "AND level = 'error'").fetchall()
        stats = conn.execute("SELECT symbol, records FROM symbol_stats ORDER BY 1").fetchall()
        progress = conn.execute("SELECT progress FROM job_runs ORDER BY id DESC LIMIT 1"
                                ).fetchone()[0]
    assert any("2024-03-06.csv.gz: the gzip stream is corrupt" in m for (m,) in ev)
    assert ("AAPL", 1) in stats  # the API knows the universe's tickers
    assert progress["files_total"] == 3 and progress["files_done"] == 2
    assert progress["file_bytes"] > 0 and progress["file_rows"] > 0
    from appliance.jobs.runs import progress_counts
    shown = progress_counts(progress)["files"]  # what the Jobs page and the run page show
    assert (shown["done"], shown["total"], shown["failed"]) == (2, 3, 1)
    assert shown["rows"] == progress["file_rows"] and shown["bytes"].endswith("B")
    from appliance.alerts import health
    ff = health.compute(rt).body()["flat_files"]
    assert ff["1d"]["newest_day"] == "2024-03-05" and ff["1d"]["files"] == 1
    assert ff["1m"]["newest_day"] == "2024-03-05"

    # the file is published again, whole: the next run takes only it
    _put(endpoint, bucket, "1d", DAY2, body)
    plan = _cli(rt.config.path, "backfill", "--plan", "--end", DAY2.isoformat())
    assert "1d: flat files (1 to ingest of 2" in plan.stdout
    assert "1m: flat files (0 to ingest of 1" in plan.stdout
    r = _cli(rt.config.path, "backfill", "--end", DAY2.isoformat())
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(_market_rows(rt, DAY2)) == {"AAPL", "MSFT", "BRK.B", "BAD"}


def test_the_plan_takes_rest_for_a_few_symbols_and_files_for_many(config_factory, s3_server,
                                                                   bucket):
    from appliance.ingest.flatfiles import make_plan
    ff_cfg = {"enabled": True, "endpoint": s3_server, "bucket": bucket,
              "access_key_id": KEY_ID, "secret_access_key": SECRET}
    _put(s3_server, bucket, "1d", DAY, _csv(_daily_rows()))
    few = load_config(config_factory(provider={"name": "demo", "polygon": {
        "flat_files": ff_cfg, "requests_per_minute": 5}}, symbols=["AAPL", "MSFT"],
        history={"start": "2020-01-02"}))
    many = load_config(config_factory(provider={"name": "demo", "polygon": {
        "flat_files": ff_cfg, "requests_per_minute": 5}},
        symbols=[f"S{i:03d}" for i in range(500)], history={"start": "2020-01-02"}))
    rt = Runtime.from_path(few.path)
    rt.open()
    try:
        with rt.conn() as conn:
            p = make_plan(conn, few, ingest.client(few), end=DAY, start=None,
                          rest_requests={"1d": 2})
            assert not p.uses_files("1d") and p.files == []
            assert p.describe().startswith("1d: REST (2 request(s)")
            p = make_plan(conn, many, ingest.client(many), end=DAY, start=None,
                          rest_requests={"1d": 500})
            assert p.uses_files("1d") and [f.day for f in p.files] == [DAY]
            assert p.covered["1d"] == DAY  # REST takes only the days after it
    finally:
        rt.close()


def _big_minute_file(day, tickers=600, minutes=range(240, 1200)):
    """A file of ``tickers`` x ``minutes`` rows, written fast (numpy, not dicts)."""
    rng = np.random.default_rng(7)
    mins = np.array(list(minutes))
    lines = [",".join(COLUMNS)]
    base = tcal.local_midnight_epoch(day)
    for k in range(tickers):
        c = np.round(50 + np.cumsum(rng.normal(0, 0.02, len(mins))), 2)
        o = np.round(c + rng.normal(0, 0.01, len(mins)), 2)
        h = np.maximum(o, c) + 0.01
        lo = np.minimum(o, c) - 0.01
        tk = f"T{k:04d}"
        lines += [f"{tk},{100 + j},{o[j]:.2f},{c[j]:.2f},{h[j]:.2f},{lo[j]:.2f},"
                  f"{(base + int(m) * 60) * 1_000_000_000},{1 + j % 9}"
                  for j, m in enumerate(mins.tolist())]
    return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=1), \
        tickers * len(mins)


def test_a_worker_killed_mid_file_leaves_nothing_and_the_file_is_taken_over(flat, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from appliance.ingest import chunks
    from appliance.store import chunks as chunk_store
    from tests.support import wait_until
    make, endpoint, bucket = flat
    rt, ff = make(backfill={"fan_out": True, "chunk_stale_seconds": 5, "chunk_attempts": 3})
    body, n_rows = _big_minute_file(DAY)
    _put(endpoint, bucket, "1m", DAY, body)
    run_id = 990001
    with rt.conn() as conn:
        chunk_store.create_fanout(conn, run_id, "test", [(ingest.FILE_CHUNK, "1m", DAY, DAY,
                                                          False)])
    code = (f"from appliance.runtime.runtime import Runtime\nfrom appliance.ingest import chunks\n"
            f"rt = Runtime.from_path({str(rt.config.path)!r}); rt.open()\n"
            f"chunks.work(rt, rt.config, {run_id})\n")
    victim = subprocess.Popen([sys.executable, "-c", code], cwd=os.getcwd(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def copying():
            with rt.conn() as conn:
                # this test's database only: another test's COPY (a parallel
                # worker) had the victim killed before it claimed the file
                return conn.execute("SELECT 1 FROM pg_stat_activity WHERE query LIKE "
                                    "'COPY minute_%%' AND datname = current_database()"
                                    ).fetchone()
        wait_until(copying, 60, "the worker streaming the file into its COPY", step=0.05)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
    with rt.conn() as conn:
        assert conn.execute("SELECT count(*) FROM minute_bars").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM flat_files").fetchone()[0] == 0
    # its heartbeat goes stale: this process takes the file over and stores all of it
    wait_until(lambda: chunks.work(rt, rt.config, run_id), 60, "the chunk taken over")
    with rt.conn() as conn:
        status, attempts, = conn.execute("SELECT status, attempts FROM backfill_chunks "
                                         "WHERE run_id = %s", (run_id,)).fetchone()
        stored = conn.execute("SELECT sum(cardinality(minutes)) FROM minute_bars").fetchone()[0]
    assert (status, attempts) == ("done", 2)
    assert stored == n_rows


def test_the_universes_splits_come_by_execution_date_and_explain_its_gaps(flat):
    from appliance.core.candles import Split
    from tests.fakes.polygon_fake import PolygonFake
    make, endpoint, bucket = flat
    prev = [dict(r, ticker=t, open=p, close=p, high=p + 1, low=p - 1)
            for r in _daily_rows()[:1] for t, p in (("SPLT", 400.0), ("JUMP", 100.0))]
    cur = [dict(r, ticker=t, open=p, close=p, high=p + 1, low=p - 1,
                window_start=_ns(DAY2, 0)) for r in _daily_rows()[:1]
           for t, p in (("SPLT", 100.0), ("JUMP", 200.0))]
    splits = [Split("SPLT", DAY2, 1.0, 4.0)] + [Split(f"X{i:03d}", DAY, 1.0, 2.0)
                                                for i in range(5)]
    with PolygonFake({}, splits, splits_page_size=2) as fake:
        rt, _ff = make(provider={"name": "polygon", "polygon": {
            "api_key": "test-key", "base_url": fake.base_url, "requests_per_minute": 6000,
            "flat_files": {"enabled": True, "endpoint": endpoint, "bucket": bucket,
                           "access_key_id": KEY_ID, "secret_access_key": SECRET}}},
            symbols=["SPLT"], backfill={"fan_out": False})
        _put(endpoint, bucket, "1d", DAY, _csv(prev))
        _put(endpoint, bucket, "1d", DAY2, _csv(cur))
        r = _cli(rt.config.path, "backfill", "--end", DAY2.isoformat())
        assert r.returncode == 0, r.stdout + r.stderr
        split_queries = [q for p, q, _s, _f in fake.log if p == "/v3/reference/splits"]
    assert split_queries and all("ticker" not in q for q in split_queries)  # no per-ticker ask
    assert len(split_queries) == 3  # 6 splits in pages of 2: one paged request
    with rt.conn() as conn:
        kinds = dict(conn.execute(
            """SELECT symbol, gap_kind FROM market_data WHERE timeframe = '1d'
               AND ts = (%s::date::timestamp AT TIME ZONE 'America/New_York')""", (DAY2,)))
        n_splits = conn.execute("SELECT count(*) FROM splits").fetchone()[0]
    assert kinds == {"SPLT": "split", "JUMP": "jump"}
    assert n_splits == 6


def test_the_latest_session_without_its_file_comes_by_one_grouped_daily_request(flat):
    from appliance.core.candles import Bars
    from tests.fakes.polygon_fake import PolygonFake
    make, endpoint, bucket = flat
    truth = {t: Bars.from_rows(t, [(DAY, 10.0, 11.0, 9.0, 10.5, 1000.0, None, 5),
                                   (DAY2, p, p + 1, p - 1, p, 5000.0, p, 50)], "polygon")
             for t, p in (("AAPL", 172.0), ("SPY", 510.0), ("ACME.WS", 0.5))}
    with PolygonFake(truth, []) as fake:
        rt, _ff = make(provider={"name": "polygon", "polygon": {
            "api_key": "test-key", "base_url": fake.base_url, "requests_per_minute": 6000,
            "flat_files": {"enabled": True, "endpoint": endpoint, "bucket": bucket,
                           "access_key_id": KEY_ID, "secret_access_key": SECRET}}},
            symbols=["SPY"], minute_start="", backfill={"fan_out": False})
        _put(endpoint, bucket, "1d", DAY, _csv(_daily_rows()))  # DAY2's file is late
        r = _cli(rt.config.path, "backfill", "--end", DAY2.isoformat())
        assert r.returncode == 0, r.stdout + r.stderr
        paths = [p for p, _q, _s, _f in fake.log]
    assert paths.count(f"/v2/aggs/grouped/locale/us/market/stocks/{DAY2}") == 1
    assert not [p for p in paths if p.startswith("/v2/aggs/ticker/")]  # nothing asked twice
    got = _market_rows(rt, DAY2)
    assert set(got) == {"AAPL", "SPY"}  # ACME.WS: excluded by the universe, as from a file
    assert got["SPY"][:5] == (510.0, 511.0, 509.0, 510.0, 5000.0) and got["SPY"][7] == "polygon"


def test_a_symbol_added_later_gets_its_history_from_the_files_read_again(flat):
    from appliance.ingest.flatfiles import make_plan
    make, endpoint, bucket = flat
    rt, ff = make(symbols=["SPY"])
    info = _put(endpoint, bucket, "1d", DAY, _csv(_daily_rows()))
    ingest.ingest(rt.conn, rt.config, ff, info)
    assert "ACME.WS" not in _market_rows(rt, DAY)
    with rt.conn() as conn:
        assert make_plan(conn, rt.config, ff, end=DAY, start=None,
                         rest_requests={"1d": 1}).files == []  # stored: nothing to read
    rt2, ff2 = make(symbols=["SPY", "ACME.WS"])  # the universe's rules drop it; asked for now
    with rt2.conn() as conn:
        plan = make_plan(conn, rt2.config, ff2, end=DAY, start=None, rest_requests={"1d": 2})
    assert [f.day for f in plan.files] == [DAY]
    res = ingest.ingest(rt2.conn, rt2.config, ff2, plan.files[0])
    assert res["files"] == 1 and res["revised"] == 0
    assert _market_rows(rt2, DAY)["ACME.WS"][:4] == (0.5, 0.6, 0.45, 0.55)


def test_a_missing_bucket_is_named_on_the_run_and_rest_goes_on(flat):
    make, endpoint, bucket = flat
    ff_cfg = {"enabled": True, "endpoint": endpoint, "bucket": "no-such-bucket-here",
              "access_key_id": KEY_ID, "secret_access_key": SECRET}
    rt, _ff = make(provider={"name": "demo", "polygon": {"flat_files": ff_cfg}},
                   symbols=["SPY"], backfill={"fan_out": False})
    r = _cli(rt.config.path, "backfill", "--end", DAY2.isoformat())
    assert r.returncode == 1, r.stdout + r.stderr
    assert "flat files: bucket 'no-such-bucket-here' does not exist" in r.stdout
    assert set(_market_rows(rt, DAY2)) == {"SPY"}  # the configured symbol came by REST
    with rt.conn() as conn:
        (msg,), = conn.execute("SELECT message FROM events WHERE kind = 'flat_files'").fetchall()
    assert "no-such-bucket-here" in msg


def test_universe_rules_may_be_shell_patterns(flat):
    make, endpoint, bucket = flat
    rt, ff = make(universe={"exclude": ["glob:BR*"], "include": ["glob:[A-C]*"]})
    ingest.ingest(rt.conn, rt.config, ff, _put(endpoint, bucket, "1d", DAY, _csv(_daily_rows())))
    assert set(_market_rows(rt, DAY)) == {"AAPL", "ACME.WS", "BAD"}  # MSFT: not included


def test_a_universe_alone_needs_no_symbol_list(flat):
    """``symbols: []`` with the universe on: the config loads, the plan and the
    backfill take the whole market from the files, the API serves it, and the
    dashboard and status show it (without the universe, [] is refused: the
    bad-config corpus has that case)."""
    make, endpoint, bucket = flat
    rt, _ = make(symbols=[], backfill={"fan_out": False})
    assert rt.config.symbols == []
    _put(endpoint, bucket, "1d", DAY, _csv(_daily_rows()))
    plan = _cli(rt.config.path, "backfill", "--plan", "--end", DAY.isoformat())
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "1d: flat files (1 to ingest of 1" in plan.stdout
    r = _cli(rt.config.path, "backfill", "--end", DAY.isoformat())
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(_market_rows(rt, DAY)) == {"AAPL", "MSFT", "BRK.B", "BAD"}
    from appliance.web import create_app
    client = create_app(runtime=rt).test_client()
    d = client.get(f"/api/v1/historical/AAPL?start={DAY}&end={DAY}").get_json()
    assert d["count"] == 1
    assert client.get("/dashboard").status_code == 200
    st = _cli(rt.config.path, "status", "--json")  # no server runs here: "unhealthy", exit 1
    assert "Traceback" not in st.stderr and json.loads(st.stdout)["status"] == "unhealthy"
