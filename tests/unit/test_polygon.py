import datetime as dt
import json
import pathlib

import numpy as np
import pytest

from appliance.core.candles import Split
from appliance.core.errors import ProviderAuthError, ProviderDataError
from appliance.providers import make_provider, settings
from appliance.providers.http import HttpClient, MemoryStats
from appliance.providers.polygon import PolygonProvider, bars_from_results
from tests.fakes import StaticFake
from tests.fakes.polygon_fake import PolygonFake, make_truth

KEY = "pk-test-0123456789abcdef"
VENDOR = pathlib.Path("/work/shared/vendor/polygon")
FIELDS = ("session", "open", "high", "low", "close", "volume", "vwap", "trades")


@pytest.fixture(scope="module")
def truth():
    return make_truth(["AAPL", "MSFT", "BRK.B"], dt.date(2019, 1, 1), dt.date(2021, 12, 31),
                      seed=3, split_symbol="AAPL", split_date=dt.date(2020, 8, 31))


def provider(fake, key=KEY, auth="query", stats=None, **kw):
    client = HttpClient("polygon", 0, timeout_seconds=kw.pop("timeout_seconds", 2),
                        max_retries=kw.pop("max_retries", 5), stats=stats or MemoryStats(),
                        sleep=lambda s: None)
    return PolygonProvider(settings("polygon", {"api_key": key, "base_url": fake.base_url,
                                                "auth": auth}), client=client, **kw)


def assert_same(bars, expected):
    assert len(bars) == len(expected)
    for f in FIELDS:
        assert np.array_equal(getattr(bars, f), getattr(expected, f)), f


def test_it_returns_every_field_exactly_as_served(truth):
    with PolygonFake(truth.bars, truth.splits, api_key=KEY) as f:
        b = provider(f).daily_bars("AAPL", dt.date(2019, 1, 1), dt.date(2021, 12, 31))
    assert_same(b, truth.bars["AAPL"])
    assert b.source == "polygon" and b.volume.dtype == np.float64


def test_it_asks_for_raw_ascending_bars_with_the_largest_limit(truth):
    with PolygonFake(truth.bars, truth.splits, api_key=KEY) as f:
        b = provider(f).daily_bars("AAPL", dt.date(2020, 8, 1), dt.date(2020, 9, 30))
    path, query, status, _ = f.log[0]
    assert path == "/v2/aggs/ticker/AAPL/range/1/day/2020-08-01/2020-09-30"
    assert query["adjusted"] == "false" and query["sort"] == "asc" and query["limit"] == "50000"
    # raw prices: the 4-for-1 split shows as a drop to about a quarter
    i = int(np.searchsorted(b.session, np.datetime64("2020-08-31")))
    assert 0.2 < b.open[i] / b.close[i - 1] < 0.3


def test_it_follows_next_url_and_readds_the_key(truth):
    with PolygonFake(truth.bars, truth.splits, api_key=KEY, page_size=100) as f:
        b = provider(f).daily_bars("MSFT", dt.date(2019, 1, 1), dt.date(2021, 12, 31))
    assert_same(b, truth.bars["MSFT"])
    pages = [entry for entry in f.log if entry[0].startswith("/v2/aggs/ticker/MSFT")]
    assert len(pages) == -(-len(truth.bars["MSFT"]) // 100)
    assert all(q.get("apiKey") == KEY for _, q, _, _ in pages)
    assert all("cursor" in q for _, q, _, _ in pages[1:])
    assert all(status == 200 for _, _, status, _ in pages)


def test_header_auth_sends_a_bearer_token_and_no_query_key(truth):
    with PolygonFake(truth.bars, truth.splits, api_key=KEY, page_size=300) as f:
        b = provider(f, auth="header").daily_bars("MSFT", dt.date(2019, 1, 1), dt.date(2021, 12, 31))
    assert_same(b, truth.bars["MSFT"])
    assert all("apiKey" not in q for _, q, _, _ in f.log)


def test_an_empty_page_mid_pagination_is_followed(truth):
    with PolygonFake(truth.bars, truth.splits, api_key=KEY, page_size=200,
                     faults=[None, "empty_page", None]) as f:
        b = provider(f).daily_bars("AAPL", dt.date(2019, 1, 1), dt.date(2021, 12, 31))
    assert_same(b, truth.bars["AAPL"])
    assert f.faults_served["empty_page"] == 1


def test_injected_faults_are_survived_and_the_data_is_exact(truth):
    stats = MemoryStats()
    with PolygonFake(truth.bars, truth.splits, api_key=KEY, page_size=60, fault_rate=0.3,
                     fault_kinds=("429", "500", "502", "503", "truncated", "empty_page"),
                     seed=11) as f:
        p = provider(f, stats=stats, max_retries=8)
        b = p.daily_bars("BRK.B", dt.date(2019, 1, 1), dt.date(2021, 12, 31))
    assert_same(b, truth.bars["BRK.B"])
    assert sum(f.faults_served.values()) >= 3
    assert stats.get("polygon", "retry") >= 2


def test_no_results_key_or_null_results_is_no_data():
    routes = {
        "/v2/aggs/ticker/NONE/range/1/day/2020-01-01/2020-01-31": (200, {
            "ticker": "NONE", "queryCount": 0, "resultsCount": 0, "adjusted": False,
            "status": "OK", "request_id": "a", "count": 0}),
        "/v2/aggs/ticker/NULL/range/1/day/2020-01-01/2020-01-31": (200, {
            "ticker": "NULL", "queryCount": 0, "resultsCount": 0, "adjusted": False,
            "results": None, "status": "OK", "request_id": "b"}),
    }
    with StaticFake(routes) as f:
        p = provider(f)
        assert len(p.daily_bars("NONE", dt.date(2020, 1, 1), dt.date(2020, 1, 31))) == 0
        assert len(p.daily_bars("NULL", dt.date(2020, 1, 1), dt.date(2020, 1, 31))) == 0


def test_the_recorded_vendor_response_parses_exactly_and_delayed_is_data():
    raw = (VENDOR / "v2_aggs_ticker_AAPL_range_1_day_2005-04-01_2005-04-04.json").read_text()
    delayed = raw.replace('"status": "OK"', '"status": "DELAYED"')
    routes = {"/v2/aggs/ticker/AAPL/range/1/day/2005-04-01/2005-04-04": (200, raw),
              "/v2/aggs/ticker/AAPL/range/1/day/2005-04-02/2005-04-04": (200, delayed)}
    with StaticFake(routes) as f:
        p = provider(f)
        b = p.daily_bars("AAPL", dt.date(2005, 4, 1), dt.date(2005, 4, 4))
        d = p.daily_bars("AAPL", dt.date(2005, 4, 2), dt.date(2005, 4, 4))
    assert b.session.tolist() == [dt.date(2005, 4, 1), dt.date(2005, 4, 4)]
    assert b.open.tolist() == [1.5032, 1.4639] and b.low.tolist() == [1.4489, 1.4343]
    assert b.volume.tolist() == [642646396.0, 578172308.0] and b.trades.tolist() == [82132, 65543]
    assert b.vwap.tolist() == [1.469, 1.4589]
    assert d.session.tolist() == [dt.date(2005, 4, 4)]  # bars outside the asked range dropped


def test_timestamps_convert_with_new_york_not_utc():
    # 2020-07-01 22:30 in New York is already 2020-07-02 in UTC
    t_evening = int(dt.datetime(2020, 7, 2, 2, 30, tzinfo=dt.UTC).timestamp() * 1000)
    # 00:00 New York in winter (05:00 UTC) and summer (04:00 UTC)
    t_winter = int(dt.datetime(2020, 1, 2, 5, 0, tzinfo=dt.UTC).timestamp() * 1000)
    t_summer = int(dt.datetime(2020, 7, 6, 4, 0, tzinfo=dt.UTC).timestamp() * 1000)
    res = [{"o": 1, "h": 1, "l": 1, "c": 1, "v": 1, "t": t} for t in (t_winter, t_evening, t_summer)]
    b = bars_from_results("X", res)
    assert b.session.tolist() == [dt.date(2020, 1, 2), dt.date(2020, 7, 1), dt.date(2020, 7, 6)]


def test_float_volume_and_optional_fields_are_kept():
    res = [{"v": 5.5099718e+07, "o": 1.5, "c": 1.6, "h": 1.7, "l": 1.4, "t": 1577941200000}]
    b = bars_from_results("X", res)
    assert b.volume[0] == 55099718.0
    assert np.isnan(b.vwap[0]) and b.trades[0] == -1


def test_a_result_without_a_timestamp_is_a_data_error():
    with pytest.raises(ProviderDataError):
        bars_from_results("X", [{"o": 1, "h": 1, "l": 1, "c": 1, "v": 1}])


def test_unknown_api_key_is_a_permanent_error_with_the_vendor_message(truth):
    with PolygonFake(truth.bars, api_key=KEY) as f:
        with pytest.raises(ProviderAuthError) as e:
            provider(f, key="wrong-key-42").daily_bars("AAPL", dt.date(2020, 1, 1),
                                                       dt.date(2020, 2, 1))
    assert "Unknown API Key" in str(e.value)
    assert e.value.permanent and e.value.status == 401
    assert "wrong-key-42" not in str(e.value)
    assert f.count() == 1


def test_dates_before_the_plan_are_forbidden_with_the_vendor_message(truth):
    with PolygonFake(truth.bars, api_key=KEY, plan_start=dt.date(2020, 1, 1)) as f:
        p = provider(f)
        with pytest.raises(ProviderAuthError) as e:
            p.daily_bars("AAPL", dt.date(2019, 6, 1), dt.date(2020, 2, 1))
        assert len(p.daily_bars("AAPL", dt.date(2020, 1, 1), dt.date(2020, 2, 1))) > 0
    assert "Your plan doesn't include this data timeframe" in str(e.value)
    assert e.value.status == 403 and e.value.permanent


def test_grouped_daily_gives_one_bar_per_symbol_and_nothing_on_holidays(truth):
    with PolygonFake(truth.bars, truth.splits, api_key=KEY) as f:
        p = provider(f)
        g = p.grouped_daily(dt.date(2021, 3, 1))
        holiday = p.grouped_daily(dt.date(2021, 7, 5))
    assert sorted(g) == ["AAPL", "BRK.B", "MSFT"]
    for sym, b in g.items():
        i = int(np.searchsorted(truth.bars[sym].session, np.datetime64("2021-03-01")))
        assert_same(b, truth.bars[sym].take([i]))
    assert holiday == {}
    assert f.log[0][1]["adjusted"] == "false"


def test_splits_are_paginated_deduplicated_sorted_and_fractional():
    splits = [("AAPL", "2020-08-31", 1, 4), ("AAPL", "2005-02-28", 1, 2),
              ("AAPL", "2020-08-31", 1, 4), ("AAPL", "2014-06-09", 1, 7),
              ("CIG.C", "2022-05-02", 3, 4), ("MSFT", "2003-02-18", 1, 2)]
    with PolygonFake({}, splits, api_key=KEY, splits_page_size=2) as f:
        p = provider(f)
        got = p.splits("AAPL")
        frac = p.splits("CIG.C")
        window = p.splits("AAPL", dt.date(2010, 1, 1), dt.date(2019, 12, 31))
    assert got == [Split("AAPL", dt.date(2005, 2, 28), 1.0, 2.0),
                   Split("AAPL", dt.date(2014, 6, 9), 1.0, 7.0),
                   Split("AAPL", dt.date(2020, 8, 31), 1.0, 4.0)]
    assert frac == [Split("CIG.C", dt.date(2022, 5, 2), 3.0, 4.0)] and frac[0].ratio == 0.75
    assert window == [Split("AAPL", dt.date(2014, 6, 9), 1.0, 7.0)]
    split_calls = [q for path, q, _, _ in f.log if path == "/v3/reference/splits"]
    assert split_calls[0]["ticker"] == "AAPL" and split_calls[0]["limit"] == "1000"
    assert sum(1 for q in split_calls[:3] if "cursor" in q) == 1  # AAPL: 4 rows, 2 per page
    assert all(q.get("apiKey") == KEY for q in split_calls)


def test_the_recorded_splits_response_parses():
    raw = json.loads((VENDOR / "v3_reference_splits.json").read_text())
    with StaticFake({"/v3/reference/splits": (200, raw)}) as f:
        got = provider(f).splits("SHOP")
    assert [s.execution_date for s in got] == [dt.date(2022, 6, 22), dt.date(2022, 6, 29)]


def test_make_provider_refuses_an_empty_polygon_key():
    with pytest.raises(ProviderAuthError) as e:
        make_provider({"name": "polygon", "polygon": {"api_key": ""}})
    assert "provider.polygon.api_key is empty" in str(e.value)
    assert "POLYGON_API_KEY" in str(e.value)


def test_make_provider_builds_each_provider_with_defaults(tmp_path):
    cfg = {"name": "polygon", "polygon": {"api_key": KEY, "auth": "header",
                                          "base_url": "https://api.massive.com"},
           "csv": {"path": str(tmp_path)}}
    p = make_provider(cfg)
    assert p.name == "polygon" and p.base_url == "https://api.massive.com"
    assert p.auth == "header" and p.client.max_retries == 5
    assert KEY not in repr(p)
    assert make_provider(cfg, name="yahoo").name == "yahoo"
    assert make_provider(cfg, name="csv").name == "csv"
    d = make_provider({})
    assert d.name == "demo" and d.label == "demo (synthetic data)"
    # two providers with the same key share one rate limiter
    assert make_provider(cfg).client.limiter is p.client.limiter


def test_make_provider_takes_every_setting_from_the_config_defaults_or_the_section():
    from appliance.config.loader import DEFAULTS
    p = make_provider({"name": "polygon", "polygon": {"api_key": KEY,
                                                      "retry_backoff_seconds": 0.25}})
    d = DEFAULTS["provider"]["polygon"]
    assert p.client.backoff_base == 0.25
    assert (p.client.requests_per_minute, p.client.timeout_seconds, p.client.max_retries,
            p.client.max_retry_seconds) == (d["requests_per_minute"], d["timeout_seconds"],
                                            d["max_retries"], d["max_retry_seconds"])
    y = make_provider({}, name="yahoo")
    assert y.client.backoff_base == DEFAULTS["provider"]["yahoo"]["retry_backoff_seconds"]
