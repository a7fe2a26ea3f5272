import datetime as dt

import numpy as np
import pytest

from appliance.core import calendar as cal
from appliance.core import quality as q
from appliance.core.candles import Bars, Split

TODAY = dt.date(2024, 12, 31)


def make(rows, symbol="X"):
    """rows: (date, o, h, l, c, v) in the given order (not re-sorted)."""
    n = len(rows)
    col = lambda i: np.array([r[i] for r in rows], dtype=np.float64)  # noqa: E731
    return Bars(symbol, np.array([r[0] for r in rows], dtype="datetime64[D]"), col(1), col(2),
                col(3), col(4), col(5), np.full(n, np.nan), np.full(n, -1, dtype=np.int64))


def sessions(a, b):
    return cal.sessions("XNYS", a, b)


def series(start, n, price=100.0):
    s = cal.sessions("XNYS", start, dt.date(2030, 1, 1))[:n].astype(dt.date)
    return [(d, price, price * 1.01, price * 0.99, price, 1000.0) for d in s]


def check(rows, **kw):
    b = make(rows)
    return q.validate(b, sessions(b.session.min(), b.session.max()), kw.pop("today", TODAY), **kw)


def test_a_clean_candle_is_valid_with_score_one():
    c = check(series(dt.date(2024, 6, 3), 5))
    assert c.valid.all() and (c.issue_mask == 0).all() and (c.score == 1.0).all()
    assert not c.gap_detected.any() and list(c.gap_kind) == [None] * 5


@pytest.mark.parametrize("row,rule", [
    ((dt.date(2024, 6, 4), np.nan, 101, 99, 100, 10), "missing_field"),
    ((dt.date(2024, 6, 4), 100, 101, 99, 100, np.nan), "missing_field"),
    ((dt.date(2024, 6, 4), 100, np.inf, 99, 100, 10), "non_finite"),
    ((dt.date(2024, 6, 4), 0.0, 101, 99, 100, 10), "non_positive_price"),
    ((dt.date(2024, 6, 4), 100, 101, -99, 100, 10), "non_positive_price"),
    ((dt.date(2024, 6, 4), 100, 99, 101, 100, 10), "ohlc_inconsistent"),  # high < low
    ((dt.date(2024, 6, 4), 102, 101, 99, 100, 10), "ohlc_inconsistent"),  # open > high
    ((dt.date(2024, 6, 4), 100, 101, 99.5, 99, 10), "ohlc_inconsistent"),  # close < low
    ((dt.date(2024, 6, 4), 100, 101, 99, 100, -5), "negative_volume"),
    ((dt.date(2024, 6, 8), 100, 101, 99, 100, 10), "not_a_session"),  # a Saturday
    ((dt.date(2024, 6, 19), 100, 101, 99, 100, 10), "not_a_session"),  # Juneteenth
])
def test_each_rule_flags_its_candle(row, rule):
    rows = [(dt.date(2024, 6, 3), 100, 101, 99, 100, 10), row]
    c = check(rows)
    assert c.valid.tolist() == [True, False]
    assert c.issues(1) == [rule]
    assert 0.0 <= c.score[1] < 1.0


def test_bars_after_today_are_future():
    c = check(series(dt.date(2024, 12, 30), 3))  # 30, 31 (today), 2025-01-02
    assert c.valid.tolist() == [True, True, False]
    assert c.issues(2) == ["future"]


def test_a_repeated_session_is_a_duplicate():
    rows = series(dt.date(2024, 6, 3), 3)
    rows.insert(2, rows[1])
    c = check(rows)
    assert [q.issues_of(m) for m in c.issue_mask] == [[], [], ["duplicate"], []]
    # also when not sorted
    c2 = check([rows[3], rows[1], rows[0], rows[2]])
    assert sorted(m for m in c2.issue_mask.tolist() if m) == [int(q.BIT["duplicate"])]


def test_unusable_prices_score_zero_and_several_rules_add_up():
    rows = [(dt.date(2024, 6, 3), 100, 101, 99, 100, 10),
            (dt.date(2024, 6, 4), 0.0, 101, 99, 100, 10),
            (dt.date(2024, 6, 8), 100, 99, 101, 100, -1)]
    c = check(rows)
    assert c.score[1] == 0.0
    assert set(c.issues(2)) == {"ohlc_inconsistent", "negative_volume", "not_a_session"}
    assert c.score[2] == 0.0  # 1 - (0.5 + 0.3 + 0.5) clipped
    assert q.issues_of(0) == [] and q.issues_of(1 | 8) == ["missing_field", "ohlc_inconsistent"]
    assert c.issues_lists()[2] == q.issues_of(c.issue_mask[2])


def test_a_four_for_one_split_is_classified_split():
    rows = series(dt.date(2020, 8, 24), 5, price=500.0)
    rows += [(d, 127.58, 131.0, 126.0, 129.04, 4000.0)
             for d in cal.sessions("XNYS", dt.date(2020, 8, 31), dt.date(2020, 9, 2)).astype(dt.date)]
    split = Split("AAPL", dt.date(2020, 8, 31), 1, 4)
    c = check(rows, splits=[split])
    i = 5
    assert c.gap_detected[i] and c.gap_kind[i] == "split"
    assert c.gap_pct[i] == pytest.approx(-74.484, abs=1e-3)
    assert "jump" not in set(c.gap_kind)
    assert c.valid.all()
    # without the vendor's split the same move is an unexplained jump
    assert check(rows).gap_kind[i] == "jump"


def test_the_real_aapl_split_day_is_classified_split():
    # 2020-08-28 close 499.23, 2020-08-31 o 127.58 h 131 l 126 c 129.04 (moves of 2.2% and 3.4%)
    rows = [(dt.date(2020, 8, 28), 504.05, 505.77, 498.31, 499.23, 46907479),
            (dt.date(2020, 8, 31), 127.58, 131.0, 126.0, 129.04, 225702700)]
    c = check(rows, splits=[Split("AAPL", dt.date(2020, 8, 31), 1, 4)])
    assert c.gap_kind.tolist() == [None, "split"]


def test_a_split_on_another_day_does_not_explain_a_jump():
    rows = series(dt.date(2024, 6, 3), 3)
    rows[2] = (rows[2][0], 25.0, 25.5, 24.5, 25.0, 1000.0)
    c = check(rows, splits=[Split("X", dt.date(2024, 6, 4), 1, 4)])
    assert c.gap_kind[2] == "jump" and c.gap_detected[2]


def test_a_split_that_leaves_a_large_residual_move_is_a_jump():
    rows = series(dt.date(2024, 6, 3), 2)
    rows.append((dt.date(2024, 6, 5), 40.0, 41.0, 39.0, 40.0, 1000.0))  # 4:1 then +60%
    c = check(rows, splits=[Split("X", dt.date(2024, 6, 5), 1, 4)])
    assert c.gap_kind[2] == "jump"


def test_close_to_open_and_close_to_close_gaps_use_the_threshold():
    rows = series(dt.date(2024, 6, 3), 4)
    rows[1] = (rows[1][0], 125.0, 126.0, 99.0, 100.0, 1000.0)  # open +25%, close flat
    rows[3] = (rows[3][0], 100.0, 119.0, 99.0, 118.0, 1000.0)  # close +18%: under 20
    c = check(rows)
    assert c.gap_detected.tolist() == [False, True, False, False]
    assert c.gap_pct[1] == pytest.approx(25.0)
    assert check(rows, gap_threshold_pct=15).gap_detected.tolist() == [False, True, False, True]


def test_prev_close_is_used_for_the_first_candle():
    rows = series(dt.date(2024, 6, 3), 2)
    assert check(rows, prev_close=50.0).gap_detected.tolist() == [True, False]
    assert check(rows, prev_close=99.0).gap_detected.tolist() == [False, False]
    assert np.isnan(check(rows).gap_pct[0])


def test_a_bad_tick_is_not_a_gap_for_the_next_candle():
    rows = series(dt.date(2024, 6, 3), 3)
    rows[1] = (rows[1][0], 100.0, 101.0, 99.0, 0.0, 1000.0)  # zero close
    c = check(rows)
    assert not c.gap_detected.any()
    assert c.valid.tolist() == [True, False, True]


def test_juneteenth_and_good_friday_are_never_missing():
    cs = sessions(dt.date(2024, 3, 25), dt.date(2024, 6, 28))
    stored = cs.copy()
    assert q.missing_sessions(stored, cs, dt.date(2024, 3, 25), dt.date(2024, 6, 28)).size == 0
    drop = np.array(["2024-04-01", "2024-06-18"], dtype="datetime64[D]")
    stored = cs[~np.isin(cs, drop)]
    assert q.missing_sessions(stored, cs, dt.date(2024, 3, 25), dt.date(2024, 6, 28)).tolist() == \
        drop.tolist()
    # bounds are inclusive and limit the check
    assert q.missing_sessions(stored, cs, dt.date(2024, 4, 2), dt.date(2024, 6, 17)).size == 0


def test_symbol_score_weights_validity_completeness_and_mean_score():
    assert q.symbol_score(100, 100, 100, 100, 1.0) == 1.0
    assert q.symbol_score(90, 100, 100, 100, 0.95) == pytest.approx(0.5 * 0.9 + 0.3 + 0.2 * 0.95)
    assert q.symbol_score(100, 100, 50, 100, 1.0) == pytest.approx(0.85)
    assert q.symbol_score(0, 0, 0, 10, 0.0) == 0.0
    assert q.symbol_score(5, 5, 5, 0, 1.0) == 1.0
    assert 0.0 <= q.symbol_score(1, 3, 500, 10, float("nan")) <= 1.0


def test_split_factors_scale_history_before_each_split():
    sess = np.array(["2020-08-27", "2020-08-28", "2020-08-31", "2024-06-07", "2024-06-10"],
                    dtype="datetime64[D]")
    prices = np.array([400.0, 500.0, 125.0, 1200.0, 120.0])
    splits = [Split("X", dt.date(2024, 6, 10), 1, 10), Split("X", dt.date(2020, 8, 31), 1, 4)]
    f = q.split_factors(sess, splits)
    assert (prices * f).tolist() == pytest.approx([10.0, 12.5, 12.5, 120.0, 120.0])
    assert q.split_factors(sess, []).tolist() == [1.0] * 5


def test_empty_bars_validate_to_empty_columns():
    c = q.validate(Bars.empty("X"), sessions(dt.date(2024, 1, 1), dt.date(2024, 2, 1)), TODAY)
    assert len(c) == 0 and c.mean_score == 0.0
