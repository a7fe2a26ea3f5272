"""Dividends below the store: the vendor's records parsed (the recorded
answer and the fake's pages), the store's merge rules, and quality's
``dividend`` gap kind."""
import datetime as dt
import json

import numpy as np
import pytest

from appliance.core import calendar as cal
from appliance.core import quality as q
from appliance.core.adjustment import BadMode, mode_of, resolve
from appliance.core.candles import Bars, Dividend
from appliance.core.errors import ProviderDataError
from appliance.store.dividends import merge
from tests.fakes import StaticFake
from tests.fakes.polygon_fake import PolygonFake, dividend_record
from tests.unit.test_polygon import KEY, VENDOR, provider


def test_the_recorded_dividends_response_parses_with_every_field_kept():
    raw = json.loads((VENDOR / "v3_reference_dividends.json").read_text())
    with StaticFake({"/v3/reference/dividends": (200, raw)}) as f:
        got = provider(f).dividends("CSSEN")
    assert [d.ex_dividend_date for d in got][:2] == [dt.date(2023, 9, 14), dt.date(2023, 12, 14)]
    assert len(got) == 8 and all(d.dividend_type == "CD" and d.cash_amount == 0.59375
                                 for d in got)
    sent = [r for r in raw["results"] if r["ticker"] == "CSSEN"]
    assert sorted(d.fields()["ex_dividend_date"] for d in got) == \
        sorted(r["ex_dividend_date"] for r in sent)
    assert got[0].fields() == [r for r in sent if r["ex_dividend_date"] == "2023-09-14"][0]
    path, query, _, _ = f.log[0]
    assert query["ticker"] == "CSSEN" and query["limit"] == "1000"


def test_the_fake_pages_dividends_and_the_client_follows_every_page():
    recs = [dividend_record("KO", dt.date(2024, m, 14), 0.485) for m in (3, 6, 9, 12)]
    recs += [dividend_record("KO", "2024-09-16", 18.6, "SC", frequency=0),
             dividend_record("PEP", "2024-09-06", 1.355)]
    with PolygonFake({}, dividends=recs + [recs[0]], dividends_page_size=2,
                     api_key=KEY) as f:
        got = provider(f).dividends("KO")
        market = provider(f).dividends_between("2024-09-01", "2024-09-30")
    assert [(d.ex_dividend_date.isoformat(), d.dividend_type) for d in got] == [
        ("2024-03-14", "CD"), ("2024-06-14", "CD"), ("2024-09-14", "CD"),
        ("2024-09-16", "SC"), ("2024-12-14", "CD")]  # the repeat kept once, types apart
    assert sum(1 for p, *_ in f.log if p == "/v3/reference/dividends") == 3 + 2
    assert sorted(market) == ["KO", "PEP"] and len(market["KO"]) == 2


def test_a_record_without_ex_date_or_type_is_a_data_error_and_missing_cash_is_kept():
    with StaticFake({"/v3/reference/dividends": (200, {"status": "OK", "results": [
            {"ticker": "X", "cash_amount": 1.0, "dividend_type": "CD"}]})}) as f:
        with pytest.raises(ProviderDataError, match="ex_dividend_date"):
            provider(f).dividends("X")
    rec = dividend_record("X", "2024-01-10", None)
    assert "cash_amount" not in rec
    with StaticFake({"/v3/reference/dividends": (200, {"status": "OK", "results": [rec]})}) as f:
        (d,) = provider(f).dividends("X")
    assert d.cash_amount is None and d.fields() == rec


def _div(ex, cash, kind="CD", **kw):
    return Dividend("X", dt.date.fromisoformat(ex), kind, cash, **kw)


def test_merge_keeps_repeats_once_and_refuses_conflicting_amounts():
    got = merge([_div("2024-01-10", 0.5), _div("2024-01-10", 0.5),
                 _div("2024-02-10", 0.5), _div("2024-02-10", 0.55),
                 _div("2024-03-10", 0.0), _div("2024-04-10", None),
                 _div("2024-04-10", 2.0, "SC")])
    problems = {(d.ex_dividend_date.isoformat(), d.dividend_type): p for d, p, _ in got}
    assert problems == {("2024-01-10", "CD"): None,
                        ("2024-02-10", "CD"): "the vendor sent 2 different cash amounts for "
                                              "this dividend (0.5, 0.55)",
                        ("2024-03-10", "CD"): "cash amount 0.0 is not positive",
                        ("2024-04-10", "CD"): "no cash amount",
                        ("2024-04-10", "SC"): None}


def test_adjust_modes_and_the_older_flag():
    assert [mode_of(x) for x in (None, False, True, "none", "splits", "total")] == \
        ["none", "none", "splits", "none", "splits", "total"]
    assert resolve(None, True) == "splits" and resolve("total", None) == "total"
    assert resolve("splits", True) == "splits"
    with pytest.raises(BadMode, match="disagree"):
        resolve("total", False)
    with pytest.raises(BadMode, match="none, splits, total"):
        mode_of("dividends")


# -- quality -------------------------------------------------------------------------------

def _bars(rows):
    n = len(rows)
    col = lambda i: np.array([r[i] for r in rows], dtype=np.float64)  # noqa: E731
    return Bars("X", np.array([r[0] for r in rows], dtype="datetime64[D]"), col(1), col(2),
                col(3), col(4), col(5), np.full(n, np.nan), np.full(n, -1, dtype=np.int64))


def _check(rows, **kw):
    b = _bars(rows)
    return q.validate(b, cal.sessions("XNYS", b.session.min(), b.session.max()),
                      dt.date(2024, 12, 31), **kw)


def _series(days, price):
    return [(d, price, price * 1.01, price * 0.99, price, 1000.0) for d in days]


DAYS = cal.sessions("XNYS", dt.date(2024, 9, 9), dt.date(2024, 9, 20)).astype(dt.date).tolist()


def test_a_special_dividend_that_trips_the_jump_rule_is_classified_dividend():
    # a 30% special dividend: 100 before, 70 from the ex-date (2024-09-16) on
    rows = _series(DAYS[:5], 100.0) + _series(DAYS[5:], 70.2)
    special = _div("2024-09-16", 30.0, "SC", frequency=0)
    c = _check(rows, dividends=[special])
    assert c.gap_detected[5] and c.gap_kind[5] == "dividend"
    assert c.gap_pct[5] == pytest.approx(-29.8)
    assert "jump" not in set(c.gap_kind)
    # without it the same drop is an unexplained jump; a dividend too small to explain it,
    # or going ex on another session, explains nothing
    assert _check(rows).gap_kind[5] == "jump"
    assert _check(rows, dividends=[_div("2024-09-16", 1.0)]).gap_kind[5] == "jump"
    assert _check(rows, dividends=[_div("2024-09-13", 30.0)]).gap_kind[5] == "jump"
    # broken records are no explanation
    assert _check(rows, dividends=[_div("2024-09-16", None)]).gap_kind[5] == "jump"


def test_an_ex_date_on_a_weekend_explains_the_next_sessions_drop():
    rows = _series(DAYS[:5], 100.0) + _series(DAYS[5:], 70.0)  # Friday 13th, Monday 16th
    c = _check(rows, dividends=[_div("2024-09-14", 30.0, "SC")])  # a Saturday
    assert c.gap_kind[5] == "dividend"
    # a stored bar before the batch: the drop of the batch's first bar is judged against it
    c = _check(rows[5:], prev_close=100.0, prev_session=DAYS[4],
               dividends=[_div("2024-09-14", 30.0, "SC")])
    assert c.gap_kind[0] == "dividend"
