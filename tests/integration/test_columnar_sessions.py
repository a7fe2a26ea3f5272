"""The Arrow and Parquet answers decode the stored minute sessions in
Python (``ops.arrowbars.decode_sessions``), not in SQL like the JSON answer:
these cases hold what the sample data of test_columnar does not, bar for bar
against the JSON answer: sessions stored as raw floats (no decimal scale
fits), missing vwap and trade counts (NULL elements), a missing price, in
every adjustment mode and with or without invalid bars; and the bar times at
every minute of days the clocks change, against PostgreSQL's own
``AT TIME ZONE``. Real PostgreSQL and Redis; daily bars (NVDA's split) from
the demo provider."""
from __future__ import annotations

import datetime as dt
import io

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from appliance.ingest import minutes as intraday
from appliance.ops import arrowbars
from tests.fakes.minute_truth import make_minute_truth
from tests.minute_store import CFG

START, END = "2024-06-03", "2024-06-12"
PRICES = ("open", "high", "low", "close", "volume", "vwap")


@pytest.fixture
def odd(runtime, config_factory):
    """NVDA (10-for-1 split on 2024-06-10 in the demo daily bars) with
    minutes of START..END: the second session's prices a third of the truth's
    (stored raw), some vwaps and trade counts missing, one close NaN."""
    from appliance.ingest.backfill import run_backfill
    from appliance.jobs import runs
    from appliance.jobs.reload import reload_config
    config_factory(symbols=["NVDA"])
    assert reload_config(runtime, source="cli")["ok"]
    res = runs.execute(runtime, "backfill", runs.manual_slot(), run_backfill, params={})
    assert res["status"] == "ok", res
    truth = make_minute_truth(["NVDA"], START, END, seed=3, split_symbols=["NVDA"],
                              split_date="2024-06-10", split_to=10.0)
    bars = truth.minutes["NVDA"].to_candles("test")
    bars = bars.take(np.nonzero(intraday.in_session(CFG, bars))[0])
    days = np.unique(bars.session)
    second = bars.session == days[1]
    for c in ("open", "high", "low", "close", "vwap"):
        getattr(bars, c)[second] = getattr(bars, c)[second] / 3
    bars.close[np.nonzero(second)[0][5]] = np.nan
    bars.vwap[::7] = np.nan
    bars.trades[::5] = -1
    with runtime.conn() as conn:
        intraday.write(conn, CFG, bars)
        intraday.refresh_stats(conn, CFG, "NVDA")
        raw = conn.execute("SELECT count(*) FROM minute_bars WHERE scale IS NULL").fetchone()[0]
    assert raw == 1  # the case is there
    return runtime


def _json_bars(client, url: str) -> list[dict]:
    out = []
    while url:
        r = client.get(url)
        assert r.status_code == 200, r.get_data(as_text=True)[:300]
        out += r.get_json()["data"]
        url = r.get_json().get("next")
    return out


def _parquet(client, url: str) -> pa.Table:
    pages, url = [], f"{url}&format=parquet"
    while url:
        r = client.get(url)
        assert r.status_code == 200, r.get_data(as_text=True)[:300]
        pages.append(pq.read_table(io.BytesIO(r.get_data())))
        link = r.headers.get("Link")
        url = link[1:link.index(">")] if link else None
    return pa.concat_tables(pages)


@pytest.mark.parametrize("adjust", ["none", "splits", "total"])
def test_raw_sessions_and_missing_values_equal_json_bar_for_bar(client, odd, adjust):
    for tf in ("1m", "5m"):
        for invalid in ("true", "false"):
            url = (f"/api/v1/historical/NVDA?timeframe={tf}&start={START}&end={END}"
                   f"&adjust={adjust}&include_invalid={invalid}&limit=900")
            rows = _json_bars(client, url)
            got = _parquet(client, url).to_pylist()
            assert len(got) == len(rows) > 900, (tf, invalid)
            nulls = 0
            for j, a in zip(rows, got, strict=True):
                assert a["time"] == dt.datetime.fromisoformat(j["time"])
                assert a["session"].isoformat() == j["session"]
                for c in (*PRICES, "trades", "validated"):
                    assert a[c] == j[c], (tf, c, j, a)
                nulls += j["vwap"] is None
            assert nulls, "missing vwaps are part of the case"


@pytest.mark.parametrize("tz,day", [("America/New_York", "2024-03-10"),
                                    ("America/New_York", "2024-11-03"),
                                    ("Europe/London", "2024-10-27"),
                                    ("Australia/Lord_Howe", "2024-04-07"),
                                    ("Asia/Tokyo", "2024-06-03")])
def test_bar_times_are_postgresqls_at_every_minute_of_a_clock_change(database_url, tz, day):
    d = dt.date.fromisoformat(day)
    minutes = np.arange(1440)
    days = np.full(1440, (d - dt.date(1970, 1, 1)).days)
    with psycopg.connect(database_url) as conn:
        want = [r[0] for r in conn.execute(
            """SELECT (extract(epoch FROM (%s::date + make_interval(mins => m))::timestamp
                                          AT TIME ZONE %s) * 1000)::bigint
               FROM generate_series(0, 1439) m ORDER BY m""", (d, tz)).fetchall()]
    assert arrowbars.utc_ms(days, minutes, tz).tolist() == want
