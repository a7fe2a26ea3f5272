import datetime as dt

import numpy as np
import pytest

from appliance.core import calendar as cal
from appliance.core import quality as q
from appliance.providers.demo import DemoProvider

NOW = dt.datetime(2025, 12, 31, 22, 0, tzinfo=dt.UTC)
FIELDS = ("session", "open", "high", "low", "close", "volume", "vwap", "trades")


@pytest.fixture(scope="module")
def demo():
    return DemoProvider(seed=42, now=lambda: NOW)


def test_it_is_labelled_as_synthetic(demo):
    assert demo.name == "demo" and demo.label == "demo (synthetic data)"
    b = demo.daily_bars("AAPL", dt.date(2025, 1, 1), dt.date(2025, 1, 31))
    assert b.source == "demo"


def test_the_same_symbol_and_date_give_the_same_bar_whatever_the_range(demo):
    wide = demo.daily_bars("MSFT", dt.date(2015, 1, 1), dt.date(2025, 12, 31))
    narrow = demo.daily_bars("MSFT", dt.date(2024, 3, 1), dt.date(2024, 3, 31))
    other = DemoProvider(seed=42, now=lambda: NOW).daily_bars("MSFT", dt.date(2024, 3, 1),
                                                             dt.date(2024, 3, 31))
    i = int(np.searchsorted(wide.session, narrow.session[0]))
    for f in FIELDS:
        assert np.array_equal(getattr(wide, f)[i:i + len(narrow)], getattr(narrow, f))
        assert np.array_equal(getattr(narrow, f), getattr(other, f))
    changed = DemoProvider(seed=43, now=lambda: NOW).daily_bars("MSFT", dt.date(2024, 3, 1),
                                                               dt.date(2024, 3, 31))
    assert not np.array_equal(changed.close, narrow.close)


def test_bars_fall_on_real_sessions_only(demo):
    b = demo.daily_bars("SPY", dt.date(2024, 1, 1), dt.date(2024, 12, 31))
    cs = cal.sessions("XNYS", dt.date(2024, 1, 1), dt.date(2024, 12, 31))
    assert np.isin(b.session, cs).all()
    assert np.datetime64("2024-06-19") not in b.session  # Juneteenth
    assert np.datetime64("2024-03-29") not in b.session  # Good Friday


def test_there_is_nothing_past_the_latest_completed_session():
    before_close = dt.datetime(2025, 6, 18, 19, 0, tzinfo=dt.UTC)  # 15:00 New York
    p = DemoProvider(now=lambda: before_close)
    b = p.daily_bars("AAPL", dt.date(2025, 6, 1), dt.date(2026, 1, 1))
    assert b.session[-1] == np.datetime64("2025-06-17")
    assert p.grouped_daily(dt.date(2025, 6, 18)) == {}
    after_close = dt.datetime(2025, 6, 18, 20, 30, tzinfo=dt.UTC)
    assert DemoProvider(now=lambda: after_close).daily_bars(
        "AAPL", dt.date(2025, 6, 1), dt.date(2026, 1, 1)).session[-1] == np.datetime64("2025-06-18")


def test_raw_prices_drop_by_the_split_ratio_and_splits_are_exposed(demo):
    for sym, day, ratio in (("AAPL", "2020-08-31", 0.25), ("NVDA", "2024-06-10", 0.1)):
        b = demo.daily_bars(sym, dt.date(2020, 1, 1), dt.date(2025, 1, 1))
        i = int(np.searchsorted(b.session, np.datetime64(day)))
        assert b.open[i] / b.close[i - 1] == pytest.approx(ratio, rel=0.08)
        s = demo.splits(sym)
        assert [(x.execution_date.isoformat(), x.ratio) for x in s] == [(day, ratio)]
        c = q.validate(b, cal.sessions("XNYS", b.session[0], b.session[-1]), NOW.date(), splits=s)
        assert c.gap_kind[i] == "split"


def test_the_console_gets_every_state(demo):
    b = demo.daily_bars("AAPL", dt.date(2020, 1, 1), dt.date(2025, 12, 31))
    cs = cal.sessions("XNYS", b.session[0], b.session[-1])
    c = q.validate(b, cs, NOW.date(), splits=demo.splits("AAPL"))
    issues = {r for m in c.issue_mask[~c.valid] for r in q.issues_of(m)}
    assert {"ohlc_inconsistent", "non_positive_price", "negative_volume"} <= issues
    assert set(c.gap_kind[c.gap_detected]) == {"split", "jump"}
    assert q.missing_sessions(b.session, cs, b.session[0], b.session[-1]).size >= 1
    assert c.valid.mean() > 0.99


def test_prices_are_plausible(demo):
    for sym in ("MSFT", "XOM", "ANYTHING"):
        b = demo.daily_bars(sym, dt.date(2000, 1, 1), dt.date(2025, 12, 31))
        ok = b.open > 0
        assert b.session[0] >= np.datetime64("2000-01-03")
        assert b.close.min() > 0.5 and b.close.max() < 5000
        assert (b.volume[b.volume > 0] >= 1).all()
        assert len(b) > 6000 and ok.mean() > 0.99


def test_grouped_daily_covers_the_universe_and_skips_holidays(demo):
    g = demo.grouped_daily(dt.date(2024, 6, 18))
    assert set(g) >= {"AAPL", "MSFT", "NVDA"} and all(len(b) == 1 for b in g.values())
    assert demo.grouped_daily(dt.date(2024, 6, 19)) == {}
    assert set(demo.grouped_daily(dt.date(2024, 6, 18), symbols=["ZZZ"])) == {"ZZZ"}
    one = demo.daily_bars("AAPL", dt.date(2024, 6, 18), dt.date(2024, 6, 18))
    assert g["AAPL"].close[0] == one.close[0]
