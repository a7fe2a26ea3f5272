import datetime as dt
import json
import pathlib

import numpy as np
import pytest

from appliance.core.candles import Split
from appliance.core.errors import ProviderAuthError, ProviderError
from appliance.providers import make_provider, settings
from appliance.providers.http import HttpClient, MemoryStats
from appliance.providers.tiingo import TiingoProvider
from appliance.providers.yahoo import YahooProvider
from tests.fakes import StaticFake
from tests.fakes.polygon_fake import make_truth
from tests.fakes.yahoo_fake import YahooFake

VENDOR = pathlib.Path("/work/shared/vendor")


def recorded(name):
    return json.loads((VENDOR / "yahoo" / name).read_text())["response"]["bodyJson"]


def client(name="yahoo"):
    return HttpClient(name, 0, timeout_seconds=2, max_retries=3, stats=MemoryStats(),
                      sleep=lambda s: None)


def yahoo(fake):
    return YahooProvider(settings("yahoo", {"base_url": fake.base_url}), client=client())


@pytest.fixture(scope="module")
def truth():
    return make_truth(["AAPL", "MSFT"], dt.date(2020, 1, 1), dt.date(2020, 12, 31), seed=9,
                      split_date=dt.date(2020, 8, 31))


def test_the_recorded_chart_parses_to_the_new_york_session():
    body = recorded("chart-AAPL-2020-01-01-to-2020-01-03.json")
    with StaticFake({"/v8/finance/chart/AAPL": (200, body)}) as f:
        b = yahoo(f).daily_bars("AAPL", dt.date(2020, 1, 1), dt.date(2020, 1, 3))
        _, query, _, _ = f.log[0]
    assert b.session.astype(dt.date).tolist() == [dt.date(2020, 1, 2)]
    assert b.open[0] == 74.05999755859375 and b.close[0] == 75.0875015258789
    assert b.volume[0] == 135480400.0
    assert query["interval"] == "1d" and query["events"] == "div,splits"
    assert int(query["period1"]) == int(dt.datetime(2020, 1, 1, 5, tzinfo=dt.UTC).timestamp())
    assert int(query["period2"]) == int(dt.datetime(2020, 1, 4, 5, tzinfo=dt.UTC).timestamp())


def test_the_recorded_split_event_becomes_a_split():
    body = recorded("chart-AAPL-2020-08-31-to-2020-11-07.json")
    with StaticFake({"/v8/finance/chart/AAPL": (200, body)}) as f:
        c = yahoo(f).chart("AAPL", dt.date(2020, 8, 31), dt.date(2020, 11, 7))
    assert c.splits == [Split("AAPL", dt.date(2020, 8, 31), 1.0, 4.0)]
    assert c.bars.session[0] == np.datetime64("2020-08-31")
    assert len(c.adjclose) == len(c.bars) and np.all(c.adjclose <= c.bars.close + 1e-9)


def test_bars_are_split_adjusted_and_flagged_as_such(truth):
    with YahooFake(truth.bars, truth.splits) as f:
        p = yahoo(f)
        b = p.daily_bars("AAPL", dt.date(2020, 1, 1), dt.date(2020, 12, 31))
        s = p.splits("AAPL", dt.date(2020, 1, 1), dt.date(2020, 12, 31))
    raw = truth.bars["AAPL"]
    assert p.split_adjusted is True and p.supports_grouped is False
    assert np.array_equal(b.session, raw.session)
    before = raw.session < np.datetime64("2020-08-31")
    np.testing.assert_allclose(b.close[before], raw.close[before] / 4, rtol=1e-6)
    np.testing.assert_allclose(b.close[~before], raw.close[~before], rtol=1e-6)
    assert s == [Split("AAPL", dt.date(2020, 8, 31), 1.0, 4.0)]


def test_null_values_are_skipped(truth):
    with YahooFake(truth.bars, truth.splits, null_dates=[dt.date(2020, 3, 2)]) as f:
        b = yahoo(f).daily_bars("MSFT", dt.date(2020, 2, 24), dt.date(2020, 3, 6))
    assert np.datetime64("2020-03-02") not in b.session
    assert len(b) == 9


def test_unknown_symbol_is_a_permanent_error_with_the_description(truth):
    with YahooFake(truth.bars) as f:
        with pytest.raises(ProviderError) as e:
            yahoo(f).daily_bars("NOPE", dt.date(2020, 1, 1), dt.date(2020, 2, 1))
    assert e.value.permanent and e.value.status == 404
    assert "No data found, symbol may be delisted" in str(e.value)
    assert f.count() == 1


def test_a_5xx_from_yahoo_is_retried(truth):
    with YahooFake(truth.bars, faults=["502", "truncated"]) as f:
        b = yahoo(f).daily_bars("MSFT", dt.date(2020, 6, 1), dt.date(2020, 6, 30))
    assert len(b) == 22 and f.count() == 3


def test_make_provider_builds_yahoo_with_defaults():
    p = make_provider({"name": "polygon", "polygon": {"api_key": "k"}}, name="yahoo")
    assert p.base_url == "https://query1.finance.yahoo.com"
    assert p.client.requests_per_minute == 60


# -- Tiingo, the optional second source ------------------------------------------

TIINGO_ROW = ('[{"adjClose":1037.29,"adjHigh":1044.65,"adjLow":1026.05,"adjOpen":1031.47,'
              '"adjVolume":1644794,"close":1037.29,"date":"2018-04-12T00:00:00+00:00",'
              '"divCash":0.0,"high":1044.65,"low":1026.05,"open":1031.47,"splitFactor":1.0,'
              '"volume":1644794}]')


def test_tiingo_returns_raw_prices_with_a_token_header():
    with StaticFake({"/tiingo/daily/googl/prices": (200, TIINGO_ROW)}) as f:
        p = TiingoProvider(settings("tiingo", {"api_key": "tkey", "base_url": f.base_url}),
                           client=client("tiingo"))
        b = p.daily_bars("GOOGL", dt.date(2018, 4, 12), dt.date(2018, 4, 12))
        sess, adj = p.adjusted_close("GOOGL", dt.date(2018, 4, 12), dt.date(2018, 4, 12))
        _, query, _, _ = f.log[0]
    assert b.session.astype(dt.date).tolist() == [dt.date(2018, 4, 12)]
    assert (b.open[0], b.high[0], b.low[0], b.close[0], b.volume[0]) == \
        (1031.47, 1044.65, 1026.05, 1037.29, 1644794.0)
    assert p.split_adjusted is False and adj.tolist() == [1037.29]
    assert query == {"startDate": "2018-04-12", "endDate": "2018-04-12", "format": "json"}


def test_tiingo_unknown_ticker_is_a_permanent_error():
    with StaticFake({"/tiingo/daily/zz/prices": (404, {"detail": "Error: Ticker 'ZZ' not found"})}) as f:
        with pytest.raises(ProviderError) as e:
            TiingoProvider(settings("tiingo", {"api_key": "tkey", "base_url": f.base_url}),
                           client=client("tiingo")).daily_bars(
                               "ZZ", dt.date(2020, 1, 1), dt.date(2020, 1, 2))
    assert e.value.permanent and "Ticker 'ZZ' not found" in str(e.value)


def test_tiingo_without_a_key_is_refused():
    with pytest.raises(ProviderAuthError):
        make_provider({"name": "tiingo", "tiingo": {"api_key": ""}})
