"""Minute bars in PostgreSQL: exact round trip, rollups, the API's timeframes
and cursor pagination. Bars are built here; the vendor path is in
test_intraday_backfill.py."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from appliance.core import calendar as tcal
from appliance.core.candles import MinuteBars
from appliance.ingest import minutes as intraday
from appliance.store import minutes as mstore

SYM = "AAPL"
DAYS = ["2024-11-26", "2024-11-27", "2024-11-29"]  # 11-29: early close (13:00)


def _bars(seed=3, session_minutes=(240, 1200), odd_prices=False) -> MinuteBars:
    rng = np.random.default_rng(seed)
    ts, cols = [], []  # noqa: F841
    for d in DAYS:
        day = np.datetime64(d, "D")
        mins = np.arange(*session_minutes)
        mins = mins[rng.random(len(mins)) > 0.1]  # missing minutes
        t = tcal.local_time_epochs(np.full(len(mins), day), 0) + mins * 60
        ts.append(t)
    t = np.concatenate(ts)
    n = len(t)
    c = np.round(200 + np.cumsum(rng.normal(0, 0.05, n)), 2)
    o = np.round(c + rng.normal(0, 0.02, n), 2)
    h = np.round(np.maximum(o, c) + np.abs(rng.normal(0, 0.03, n)), 4)
    lo = np.round(np.minimum(o, c) - np.abs(rng.normal(0, 0.03, n)), 4)
    if odd_prices:
        h = h + 1e-11  # no decimal scale represents these: the float8 path
    v = rng.integers(1, 50_000, n).astype(float)
    vw = np.round((h + lo + c) / 3, 4)
    vw[5] = np.nan  # a bar without vwap
    k = rng.integers(1, 300, n)
    k[7] = -1  # a bar without a trade count
    return MinuteBars(SYM, t.astype(np.int64), o, h, lo, c, v, vw, k.astype(np.int64), "test")


def _store(runtime, bars, session="extended", cfg_extra=None):
    cfg = {"calendar": "XNYS", "session": session}

    class Cfg(dict):
        pass
    with runtime.conn() as conn:
        res = intraday.write(conn, Cfg(cfg), bars)
    return res


@pytest.mark.parametrize("odd", [False, True])
def test_minute_bars_round_trip_to_the_last_digit(runtime, odd):
    bars = _bars(odd_prices=odd)
    res = _store(runtime, bars)
    with runtime.conn() as conn:
        rows = conn.execute(mstore.intraday_sql("1m", adjust="none", include_invalid=True,
                                                fmt="json"),
                            {"symbol": SYM, "start": dt.date(2024, 11, 1),
                             "end": dt.date(2024, 11, 30), "after": None, "tz": "America/New_York",
                             "limit": None}).fetchall()
        scale = conn.execute("SELECT array_agg(scale) FROM minute_bars").fetchone()[0]
    assert (scale == [None] * 3) if odd else all(s is not None for s in scale)
    got = [json.loads(r[1]) for r in rows]
    # the early close keeps its after-hours to 17:00 only; the rest of the bars all
    keep = intraday.in_session({"calendar": "XNYS", "session": "extended"}, bars)
    assert res["outside_session"] == int((~keep).sum()) > 0
    want = bars.take(np.nonzero(keep)[0])
    assert len(got) == len(want) == res["bars"]
    assert [r[0] // 1000 for r in rows] == want.t.tolist()
    for name in ("open", "high", "low", "close", "volume"):
        assert [g[name] for g in got] == getattr(want, name).tolist(), name
    assert got[5]["vwap"] is None and got[7]["trades"] is None
    assert [g["vwap"] for g in got if g["vwap"] is not None] == \
        [x for x in want.vwap.tolist() if x == x]
    first = int(want.minute[0])  # the first kept minute (random gaps): 04:00 or a little later
    assert 240 <= first < 260
    assert got[0]["time"] == f"2024-11-26T{first // 60:02d}:{first % 60:02d}:00-05:00"
    assert got[0]["session"] == "2024-11-26"


def test_rollups_match_numpy_aggregates_and_regular_session_drops_the_rest(runtime):
    bars = _bars()
    _store(runtime, bars, session="regular")
    keep = intraday.in_session({"calendar": "XNYS", "session": "regular"}, bars)
    b = bars.take(np.nonzero(keep)[0])
    assert b.minute.min() >= 570
    assert b.minute[b.session == np.datetime64("2024-11-29")].max() < 780
    with runtime.conn() as conn:
        for tf, width in (("5m", 5), ("1h", 60), ("4h", 240)):
            rows = conn.execute(mstore.intraday_sql(tf, adjust="none", include_invalid=False,
                                                    fmt="json"),
                                {"symbol": SYM, "start": dt.date(2024, 11, 1),
                                 "end": dt.date(2024, 11, 30), "after": None, "tz": "America/New_York",
                                 "limit": None}).fetchall()
            got = [json.loads(r[1]) for r in rows]
            key = b.session.astype(np.int64) * 10_000 + (b.minute // width) * width
            uniq, first = np.unique(key, return_index=True)
            assert len(got) == len(uniq), tf
            for i, (k0, f) in enumerate(zip(uniq, first, strict=False)):
                sel = key == k0
                g = got[i]
                assert g["open"] == b.open[f]
                assert g["close"] == b.close[np.nonzero(sel)[0][-1]]
                assert g["high"] == b.high[sel].max() and g["low"] == b.low[sel].min()
                assert g["volume"] == b.volume[sel].sum()
            # hour bars snap to the clock: the 09:00 bar starts at 09:00 and holds 09:30-09:59
            if tf == "1h":
                assert got[0]["time"] == "2024-11-26T09:00:00-05:00"


def test_api_timeframes_pagination_and_daily_unchanged(client, runtime):
    _store(runtime, _bars())
    q = "/api/v1/historical/AAPL?start=2024-11-01&end=2024-11-30"
    full = client.get(q + "&timeframe=1m").get_json()
    assert full["count"] == len(full["data"]) > 1000 and full["next"] is None
    seen, url = [], q + "&timeframe=1m&limit=700"
    while url:
        page = client.get(url).get_json()
        assert page["count"] <= 700
        seen += page["data"]
        url = page["next"]
    assert seen == full["data"]
    csv = client.get(q + "&timeframe=15m&format=csv&limit=10")
    assert csv.status_code == 200 and 'rel="next"' in csv.headers["Link"]
    assert csv.get_data(as_text=True).splitlines()[0] == \
        "time,session,open,high,low,close,volume,vwap,trades,validated"
    bad = client.get(q + "&timeframe=2m")
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "bad_timeframe"
    bad = client.get(q + "&timeframe=1m&cursor=yesterday")
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "bad_cursor"
    assert client.get("/api/v1/historical/ZZZZ?timeframe=5m").status_code == 404


def test_bar_retention_drops_old_minutes_and_keeps_rollups(runtime):
    _store(runtime, _bars())
    from appliance.ops import maintenance  # noqa: F401 - the job that calls it

    class Cfg(dict):
        def get(self, key, default=None):
            return {"retention.bar_years": {"1m": 1}}.get(key, default)
    cfg = Cfg(calendar="XNYS", session="extended")
    with runtime.conn() as conn:
        out = intraday.apply_retention(conn, cfg, dt.date(2025, 11, 28))
        left = conn.execute("SELECT array_agg(session ORDER BY session) FROM minute_bars"
                            ).fetchone()[0]
        rollups = conn.execute("SELECT count(DISTINCT session) FROM rollup_bars").fetchone()[0]
    assert out == {"1m": 2}  # 2024-11-26 and -27 are before the cutoff, 2024-11-28
    assert left == [dt.date(2024, 11, 29)]
    assert rollups == 3


@pytest.mark.parametrize("cursor", ["253402300800000", "253402300799999999", str(2**53 - 1),
                                    "-1", "1e12", "99999999999999999999999"])
def test_a_cursor_past_year_9999_or_malformed_is_a_400_naming_it(client, runtime, cursor):
    _store(runtime, _bars())
    r = client.get("/api/v1/historical/AAPL?start=2024-11-01&end=2024-11-30"
                   f"&timeframe=1m&cursor={cursor}")
    assert r.status_code == 400, r.get_data(as_text=True)[:300]
    err = r.get_json()["error"]
    assert err["code"] == "bad_cursor" and "cursor" in err["message"]


def _minute_rows_scanned(runtime, sql, params) -> int:
    """Rows read from minute_bars (its yearly partitions) by ``sql`` (EXPLAIN ANALYZE)."""
    with runtime.conn() as conn:
        plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()[0]

    def walk(node):
        n = node.get("Actual Rows", 0) * node.get("Actual Loops", 1) \
            if node.get("Relation Name", "").startswith("minute_bars_y") else 0
        return n + sum(walk(c) for c in node.get("Plans", []))
    return walk(plan[0]["Plan"])


def test_an_intraday_cursor_narrows_the_sessions_read(runtime):
    """limit=1 with a cursor in the last session reads that session only, not
    every session from start on."""
    _store(runtime, _bars())
    sql = mstore.intraday_sql("1m", adjust="splits", include_invalid=False, fmt="json")
    base = {"symbol": SYM, "tf": "1d", "tz": "America/New_York", "start": dt.date(2024, 11, 1),
            "end": dt.date(2024, 11, 30), "limit": 2}
    assert _minute_rows_scanned(runtime, sql, {**base, "after": None}) == 3
    late = dt.datetime(2024, 11, 29, 15, 0, tzinfo=dt.UTC)  # 10:00 New York
    assert _minute_rows_scanned(runtime, sql, {**base, "after": late}) == 1
    with runtime.conn() as conn:
        rows = conn.execute(sql, {**base, "after": late}).fetchall()
    assert [json.loads(r[1])["time"] for r in rows][0] > "2024-11-29T10:00:00"


def _raw(rows: int, width: int) -> list[list[float]]:
    return [[1.5] * width for _ in range(rows)]


def _insert_day(conn, **over):
    row = {"symbol": SYM, "session": dt.date(2024, 11, 26), "minutes": [570, 571],
           "scale": 2, "open": [100, 101], "high": [100, 101], "low": [100, 101],
           "close": [100, 101], "volume": [5, 6], "vwap": [100, 101], "raw": None,
           "trades": [1, 2], "invalid": [], "source": "test"}
    row.update(over)
    mstore.ensure_partitions_for(conn, row["session"], row["session"])  # SQL of its own
    cols = ", ".join(row)
    conn.execute(f"INSERT INTO minute_bars ({cols}) VALUES "
                 f"({', '.join('%(' + c + ')s' for c in row)})", row)


@pytest.mark.parametrize("over, constraint", [
    ({"raw": _raw(6, 2)}, "minute_bars_scaled_xor_raw"),  # scaled and raw
    ({"scale": None}, "minute_bars_scaled_xor_raw"),  # int arrays without a scale
    ({"scale": None, "open": None, "high": None, "low": None, "close": None,
      "volume": None, "vwap": None}, "minute_bars_scaled_xor_raw"),  # neither
    ({"close": [100]}, "minute_bars_equal_lengths"),
    ({"trades": [1, 2, 3]}, "minute_bars_equal_lengths"),
    ({"scale": None, "open": None, "high": None, "low": None, "close": None, "volume": None,
      "vwap": None, "raw": _raw(6, 3)}, "minute_bars_equal_lengths"),
    ({"scale": None, "open": None, "high": None, "low": None, "close": None, "volume": None,
      "vwap": None, "raw": _raw(5, 2)}, "minute_bars_equal_lengths"),
])
def test_the_database_refuses_a_minute_row_breaking_the_arrays_invariants(runtime, over,
                                                                        constraint):
    import psycopg
    with runtime.conn() as conn:
        _insert_day(conn, session=dt.date(2024, 11, 25))  # a good row is accepted
    with pytest.raises(psycopg.errors.CheckViolation) as e:
        with runtime.conn() as conn:
            _insert_day(conn, **over)
    assert e.value.diag.constraint_name == constraint
    with runtime.conn() as conn:
        assert conn.execute("SELECT count(*) FROM minute_bars").fetchone()[0] == 1


def test_a_raw_row_of_equal_lengths_is_accepted(runtime):
    with runtime.conn() as conn:
        _insert_day(conn, scale=None, open=None, high=None, low=None, close=None,
                    volume=None, vwap=None, raw=_raw(6, 2))
        assert conn.execute("SELECT count(*) FROM minute_bars").fetchone()[0] == 1


def test_an_unknown_intraday_timeframe_is_refused_before_any_sql():
    with pytest.raises(ValueError, match="'1d; DROP TABLE x' is no intraday timeframe"):
        mstore.intraday_sql("1d; DROP TABLE x", adjust="none", include_invalid=False,
                            fmt="json")


def test_the_exchange_time_zone_reaches_the_sql_as_a_parameter(runtime):
    """The same stored bar falls on the session its time zone says: the zone
    given is the one the SQL uses (none is written into it)."""
    from appliance import store
    with runtime.conn() as conn:
        store.ensure_partitions_for(conn, dt.date(2024, 3, 1), dt.date(2024, 3, 31))
        conn.execute("""INSERT INTO market_data (symbol, timeframe, ts, close, source,
                                                 validated, quality_score)
                        VALUES ('TZT', '1d', '2024-03-04 00:00 America/New_York', 1.0,
                                'test', true, 1.0)""")  # 05:00 UTC
        dates = {tz: store.stored_sessions(conn, "TZT", tz=tz).astype(str).tolist()
                 for tz in ("America/New_York", "Asia/Tokyo", "Pacific/Honolulu")}
        hlv = store.daily_hlv(conn, "TZT", dt.date(2024, 3, 3), dt.date(2024, 3, 3),
                              tz="Pacific/Honolulu")
    assert dates == {"America/New_York": ["2024-03-04"], "Asia/Tokyo": ["2024-03-04"],
                     "Pacific/Honolulu": ["2024-03-03"]}
    assert list(hlv) == [dt.date(2024, 3, 3)]
