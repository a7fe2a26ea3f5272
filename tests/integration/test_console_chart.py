"""The symbol chart's data for every timeframe and the completeness per
resolution, through Flask's test client on real PostgreSQL: daily bars from
the demo provider, NVDA's minute bars stored from the minute fake (10-for-1
split on 2024-06-10, one session left out, invalid bars on the last one)."""
from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest

from appliance import store
from appliance.store import minutes as mstore
from appliance.web.console.chart import PAGE, wall_seconds
from tests.minute_store import store_minutes

START, END = "2024-05-28", "2024-06-14"
DROPPED = dt.date(2024, 6, 4)
INVALID = 3


@pytest.fixture
def charted(runtime, config_factory):
    """Demo daily bars of AAPL, MSFT and NVDA; NVDA's minutes as above."""
    from appliance.ingest.backfill import run_backfill
    from appliance.jobs import runs
    from appliance.jobs.reload import reload_config
    config_factory(symbols=["AAPL", "MSFT", "NVDA"])
    assert reload_config(runtime, source="cli")["ok"]
    res = runs.execute(runtime, "backfill", runs.manual_slot(), run_backfill, params={})
    assert res["status"] == "ok", res  # the demo provider is deterministic: nothing fails
    bars = store_minutes(runtime, "NVDA", START, END, drop=[DROPPED.isoformat()],
                         invalid=INVALID, split_date="2024-06-10")
    return bars


def _sessions(bars) -> list[dt.date]:
    return sorted(set(bars.session.astype(dt.date).tolist()))


def _pages(client, timeframe: str, **q) -> list[dict]:
    out, end = [], None
    while True:
        url = f"/console/api/chart/NVDA?timeframe={timeframe}" + (f"&end={end}" if end else "")
        url += "".join(f"&{k}={v}" for k, v in q.items())
        r = client.get(url)
        assert r.status_code == 200, r.get_data(as_text=True)
        d = r.get_json()
        out.append(d)
        end = d["older"]
        if end is None:
            return out
        assert len(out) < 20


def test_minute_chart_pages_back_to_the_first_bar_with_breaks_and_markers(client, charted):
    bars = charted
    sessions = _sessions(bars)
    assert DROPPED not in sessions and len(sessions) == 13
    pages = _pages(client, "1m")
    assert len(pages) == -(-len(sessions) // PAGE["1m"])   # 5 stored sessions a page
    first = pages[0]
    assert first["timeframe"] == "1m" and first["start"] == sessions[-5].isoformat()
    assert first["older"] == (sessions[-5] - dt.timedelta(days=1)).isoformat()
    # every stored bar once, at its New York wall time, oldest page last
    times = [c["time"] for p in reversed(pages) for c in p["candles"] if "open" in c]
    want = [wall_seconds(s, m) for s, m in zip(bars.session.astype(dt.date).tolist(),
                                               bars.minute.tolist(), strict=False)]
    assert times == want
    # one session break at the first bar of each stored session
    breaks = [t for p in reversed(pages) for t in p["breaks"]]
    firsts = {}
    for t, s in zip(want, bars.session.astype(dt.date).tolist(), strict=False):
        firsts.setdefault(s, t)
    assert breaks == [firsts[s] for s in sessions]
    # the dropped session is a missing gap: whitespace and a marker, in its page only
    missing = [(p["start"], m) for p in pages for m in p["markers"] if m["role"] == "missing"]
    assert len(missing) == 1
    assert missing[0][1]["time"] == wall_seconds(DROPPED, 570)
    assert any(c == {"time": wall_seconds(DROPPED, 570)} for p in pages for c in p["candles"])
    # the invalid minutes: grey candles and markers, on the latest page
    bad = [c for c in first["candles"] if c.get("role") == "invalid"]
    assert len(bad) == INVALID and all(c["high"] < c["low"] for c in bad)
    assert sorted(m["time"] for m in first["markers"] if m["role"] == "invalid") == \
        [c["time"] for c in bad]
    # the daily split gap is marked at the first minute of the split session
    split = [m for p in pages for m in p["markers"] if m["role"] == "split"]
    assert [m["time"] for m in split] == [firsts[dt.date(2024, 6, 10)]]


@pytest.mark.parametrize("timeframe,width", [("5m", 5), ("15m", 15), ("1h", 60), ("4h", 240)])
def test_rollup_chart_has_one_bar_per_bucket_of_valid_minutes(client, charted, timeframe, width):
    bars = charted
    pages = _pages(client, timeframe)
    assert len(pages) == 1 and pages[0]["older"] is None   # 13 sessions fit one page
    d = pages[0]
    ok = np.ones(len(bars), bool)
    last = bars.session == bars.session[-1]
    ok[np.nonzero(last)[0][10:10 + INVALID]] = False     # invalid minutes are not rolled up
    keys = sorted({(s, m // width * width) for s, m, good in
                   zip(bars.session.astype(dt.date).tolist(), bars.minute.tolist(), ok, strict=False) if good})  # noqa: E501
    got = [c["time"] for c in d["candles"] if "open" in c]
    assert got == [wall_seconds(s, m) for s, m in keys]
    assert all(t % (width * 60) == 0 for t in got)
    assert len(d["breaks"]) == len(_sessions(bars))
    assert not [m for m in d["markers"] if m["role"] == "invalid"]


def test_adjusted_minutes_before_the_split_are_a_tenth_of_the_raw_ones(client, charted):
    raw = {c["time"]: c for p in _pages(client, "1h") for c in p["candles"] if "open" in c}
    adj = {c["time"]: c for p in _pages(client, "1h", adjusted=1)
           for c in p["candles"] if "open" in c}
    assert raw.keys() == adj.keys()
    before = wall_seconds(dt.date(2024, 6, 7), 12 * 60)
    after = wall_seconds(dt.date(2024, 6, 10), 12 * 60)
    assert adj[before]["close"] == pytest.approx(raw[before]["close"] / 10)
    assert adj[after]["close"] == raw[after]["close"]


def test_daily_and_weekly_charts_keep_their_own_markers(client, charted):
    d = client.get("/console/api/chart/NVDA").get_json()
    assert d["timeframe"] == "1d" and d["older"] is None and d["breaks"] == []
    times = [c["time"] for c in d["candles"]]
    assert times == sorted(times) and "2024-06-10" in times
    # the minute data's missing session is no daily gap
    assert DROPPED.isoformat() not in {m["time"] for m in d["markers"] if m["role"] == "missing"}
    assert {"time": "2024-06-10", "role": "split"}.items() <= \
        next(m for m in d["markers"] if m["time"] == "2024-06-10").items()
    # a page ending earlier stops there and says where the one before it ends
    p = client.get("/console/api/chart/NVDA?end=2024-06-07").get_json()
    assert p["candles"][-1]["time"] <= "2024-06-07" and p["end"] == "2024-06-07"
    w = client.get("/console/api/chart/NVDA?timeframe=1w").get_json()
    weeks = [c["time"] for c in w["candles"]]
    assert weeks and all(dt.date.fromisoformat(t).weekday() == 6 for t in weeks)
    sundays = sorted({(dt.date.fromisoformat(c["time"]) - dt.timedelta(
        days=(dt.date.fromisoformat(c["time"]).weekday() + 1) % 7)).isoformat()
        for c in d["candles"] if "open" in c})
    assert [c["time"] for c in w["candles"] if "open" in c] == sundays
    assert [m["time"] for m in w["markers"] if m["role"] == "split"] == ["2024-06-09"]
    assert w["older"] is None


def test_chart_arguments_are_checked(client, charted):
    r = client.get("/console/api/chart/NVDA?timeframe=2m")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_timeframe"
    assert "1m, 5m" in r.get_json()["error"]["message"]
    r = client.get("/console/api/chart/NVDA?timeframe=1m&end=yesterday")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_date"
    # a symbol without minute bars has an empty intraday chart, not an error
    e = client.get("/console/api/chart/AAPL?timeframe=5m").get_json()
    assert e["candles"] == [] and e["older"] is None


def test_symbol_page_offers_intraday_timeframes_only_with_minute_data(client, charted, runtime):
    html = client.get("/symbols/NVDA?timeframe=5m&adjusted=1").get_data(as_text=True)
    offered = re.findall(r'data-timeframe="([0-9a-z]+)" aria-pressed="(true|false)"', html)
    assert offered == [(tf, "true" if tf == "5m" else "false")
                       for tf in ("1m", "5m", "15m", "1h", "4h", "1d", "1w")]
    assert 'href="/symbols/NVDA?timeframe=1h&amp;adjusted=1"' in html
    assert 'href="/symbols/NVDA?adjusted=1"' in html                       # 1d is the default
    assert 'data-adjusted="0" aria-pressed="false" href="/symbols/NVDA?timeframe=5m"' in html
    assert 'id="chart"' in html and 'data-timeframe="5m"' in html
    with runtime.conn() as conn:
        ms = mstore.minute_stats_of(conn, "NVDA")
        row = store.symbol_row(conn, "NVDA")
    assert ms["completeness"] == pytest.approx(13 / 14)
    comp = re.search(r'<dd id="completeness">(.*?)</dd>', html, re.S).group(1)
    assert f'1d {100 * row["completeness"]:.1f} %' in comp and "1m 92.9 %" in comp
    assert "Minute bars" in html and "ET · " in html
    html = client.get("/symbols/AAPL").get_data(as_text=True)
    assert re.findall(r'data-timeframe="([0-9a-z]+)" aria-pressed', html) == ["1d", "1w"]
    assert "1m " not in re.search(r'<dd id="completeness">(.*?)</dd>', html, re.S).group(1)
    assert client.get("/symbols/NVDA?timeframe=2m").status_code == 400


def test_symbol_grid_shows_completeness_per_resolution(client, charted):
    html = client.get("/symbols").get_data(as_text=True)
    rows = dict(re.findall(r'href="/symbols/([A-Z]+)".*?<td class="num nowrap">(.*?)</td>',
                           html, re.S))
    assert re.fullmatch(r'<span class="res" data-res="1d">1d \d+\.\d %</span> · '
                        r'<span class="res" data-res="1m">1m 92\.9 %</span>', rows["NVDA"])
    assert re.fullmatch(r"\d+\.\d %", rows["AAPL"])
