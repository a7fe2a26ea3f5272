"""The minute store's encoding (``store.minutes``): what ``encode_day`` writes
as COPY text decodes back to the very bars it was given, and ``_scale_of``
finds the fewest decimals that hold every price exactly."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.store import minutes as mstore


def _array(text: str) -> list[str]:
    assert text.startswith("{") and text.endswith("}"), text
    inner = text[1:-1]
    return inner.split(",") if inner else []


def _raw_rows(text: str) -> list[list[str]]:
    assert text.startswith("{") and text.endswith("}"), text
    inner = text[1:-1]
    rows = []
    while inner:
        assert inner[0] == "{", inner
        end = inner.index("}")
        rows.append(_array(inner[:end + 1]))
        inner = inner[end + 1:].lstrip(",")
    return rows


def _decode(fields: list[str]) -> dict:
    """The arrays of one encoded session, as PostgreSQL would read them back
    (NULL elements: NaN prices, -1 trades)."""
    mins, scale, o, h, lo, c, v, vw, raw, trades, bad = fields
    out = {"minute": [int(x) for x in _array(mins)],
           "trades": [-1 if x == "NULL" else int(x) for x in _array(trades)],
           "invalid": [int(x) for x in _array(bad)]}
    names = ("open", "high", "low", "close", "volume", "vwap")
    if scale == r"\N":
        assert (o, h, lo, c, v, vw) == (r"\N",) * 6 and raw != r"\N"
        rows = _raw_rows(raw)
        assert len(rows) == 6
        for name, row in zip(names, rows, strict=True):
            out[name] = [float("nan") if x == "NULL" else float(x) for x in row]
    else:
        assert raw == r"\N"
        p = 10.0 ** int(scale)
        for name, a in zip(names, (o, h, lo, c, v, vw), strict=True):
            out[name] = [float("nan") if x == "NULL" else int(x) / p for x in _array(a)]
    return out


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


cents = st.integers(-10**9, 10**9).map(lambda i: i / 100)
ticks = st.integers(-10**9, 10**9).map(lambda i: i / 10_000)
anything = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
price = st.one_of(cents, ticks, anything, st.just(float("nan")))


@st.composite
def sessions(draw, values=price):
    n = draw(st.integers(0, 40))
    minutes = sorted(draw(st.sets(st.integers(0, 1439), min_size=n, max_size=n)))
    cols = [np.array(draw(st.lists(values, min_size=n, max_size=n)), dtype=float)
            for _ in range(6)]
    trades = np.array(draw(st.lists(st.integers(-1, 10**6), min_size=n, max_size=n)),
                      dtype=np.int64)
    invalid = sorted(draw(st.sets(st.integers(0, max(n - 1, 0)), max_size=n))) if n else []
    return np.array(minutes, dtype=np.int64), cols, trades, invalid


@settings(max_examples=150, deadline=None)
@given(sessions())
def test_encode_day_round_trips_every_bar(day):
    minute, cols, trades, invalid = day
    fields = mstore.encode_day(minute, *cols, trades, invalid)
    assert len(fields) == 11
    got = _decode(fields)
    assert got["minute"] == minute.tolist()
    assert got["trades"] == trades.tolist()
    assert got["invalid"] == invalid
    for name, want in zip(("open", "high", "low", "close", "volume", "vwap"), cols, strict=True):
        assert _same(got[name], want), name


@settings(max_examples=150, deadline=None)
@given(st.lists(cents, min_size=1, max_size=30))
def test_cent_prices_are_stored_scaled_with_at_most_two_decimals(values):
    k = mstore._scale_of(np.array(values))
    assert k is not None and k <= 2


@settings(max_examples=200, deadline=None)
@given(st.lists(price, max_size=30))
def test_scale_of_is_the_fewest_decimals_that_give_every_value_back(values):
    x = np.array(values, dtype=float)
    finite = x[np.isfinite(x)]
    k = mstore._scale_of(x)

    def exact(j: int) -> bool:
        p = 10.0 ** j
        r = np.rint(finite * p)
        return bool(np.all(np.abs(r) < 2.0 ** 62)) and np.array_equal(r / p, finite)

    if k is None:
        assert finite.size and not any(exact(j) for j in range(mstore.MAX_SCALE + 1))
    else:
        assert exact(k) and not any(exact(j) for j in range(k))


def test_a_value_no_scale_holds_sends_the_whole_day_raw():
    x = np.array([1.5, 0.1 + 0.2])  # 0.30000000000000004 needs 17 decimals
    assert mstore._scale_of(x) is None
    fields = mstore.encode_day(np.array([570, 571]), *([x] * 6), np.array([3, -1]), [])
    assert fields[1] == r"\N" and fields[8].startswith("{{1.5,0.30000000000000004}")


def test_stage_row_puts_each_field_under_its_column():
    s = mstore.MinuteSession("AAPL", dt.date(2024, 11, 26), np.array([570]),
                             *([np.array([1.25])] * 6), np.array([7]), [0], "polygon")
    row = dict(zip(mstore._STAGE, mstore.stage_row(s), strict=True))
    assert row == {"symbol": "AAPL", "session": "2024-11-26", "minutes": "{570}",
                   "scale": "2", "open": "{125}", "high": "{125}", "low": "{125}",
                   "close": "{125}", "volume": "{125}", "vwap": "{125}", "raw": r"\N",
                   "trades": "{7}", "invalid": "{0}", "source": "polygon"}


@pytest.mark.parametrize("tf", ["1d", "5m'; --", "2m"])
def test_only_known_intraday_timeframes_reach_sql(tf):
    with pytest.raises(ValueError, match="no intraday timeframe"):
        mstore.intraday_sql(tf, adjust="none", include_invalid=False, fmt="json")
