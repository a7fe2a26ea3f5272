"""The minute store's encoding (``store.minutecopy``): what ``session_rows``
writes as binary COPY decodes back to the very bars it was given, and ``_scale_of``
finds the fewest decimals that hold every price exactly."""
from __future__ import annotations

import datetime as dt
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.store import minutecopy
from appliance.store import minutes as mstore


def _field(buf: bytes, at: int) -> tuple[bytes | None, int]:
    (n,) = struct.unpack_from("!i", buf, at)
    if n < 0:
        return None, at + 4
    return buf[at + 4:at + 4 + n], at + 4 + n


def _rows(buf: bytes) -> list[list[bytes | None]]:
    """The fields of every row of a binary COPY body (no signature)."""
    rows, at = [], 0
    while at < len(buf):
        (nf,) = struct.unpack_from("!h", buf, at)
        at += 2
        row = []
        for _ in range(nf):
            f, at = _field(buf, at)
            row.append(f)
        rows.append(row)
    return rows


_FMT = {21: "!h", 23: "!i", 20: "!q", 701: "!d"}


def _array(data: bytes) -> tuple[list[int], list]:
    """A binary array: (its dimensions, its elements in order, None for NULL)."""
    ndim, _, oid = struct.unpack_from("!iii", data, 0)
    dims = [struct.unpack_from("!ii", data, 12 + 8 * d)[0] for d in range(ndim)]
    at, out = 12 + 8 * ndim, []
    while at < len(data):
        f, at = _field(data, at)
        out.append(None if f is None else struct.unpack(_FMT[oid], f)[0])
    assert len(out) == (int(np.prod(dims)) if dims else 0)
    return dims, out


def _decode(row: list) -> dict:
    """The arrays of one encoded session, as PostgreSQL would read them back
    (NULL elements: NaN prices, -1 trades)."""
    named = dict(zip(minutecopy.COLUMNS, row, strict=True))
    out = {"minute": _array(named["minutes"])[1], "invalid": _array(named["invalid"])[1]}
    if named["packed"] is not None:  # 0017: the candle's numbers in one bytea
        return _decode_packed(named, out)
    out["trades"] = [-1 if x is None else x for x in _array(named["trades"])[1]]
    names = ("open", "high", "low", "close", "volume", "vwap")
    if named["scale"] is None:
        assert all(named[k] is None for k in names) and named["raw"] is not None
        dims, flat = _array(named["raw"])
        n = len(out["minute"])
        assert dims == ([6, n] if n else [])
        for j, name in enumerate(names):
            out[name] = [float("nan") if x is None else x for x in flat[j * n:(j + 1) * n]]
    else:
        assert named["raw"] is None
        p = 10.0 ** struct.unpack("!h", named["scale"])[0]
        pv = 10.0 ** struct.unpack("!h", named["volume_scale"])[0]
        pw = 10.0 ** struct.unpack("!h", named["vwap_scale"])[0]
        ints = {name: _array(named[name])[1] for name in ("open", "volume", "vwap")}
        if named["body"] is not None:  # 0013: close, high and low as body and wicks
            assert named["high"] is None and named["low"] is None and named["close"] is None
            o = ints["open"]
            body, upper, lower = (_array(named[k])[1]
                                  for k in ("body", "upper_wick", "lower_wick"))
            ints["close"] = c = [a + d for a, d in zip(o, body, strict=True)]
            ints["high"] = [max(a, b) + d for a, b, d in zip(o, c, upper, strict=True)]
            ints["low"] = [min(a, b) - d for a, b, d in zip(o, c, lower, strict=True)]
        else:
            assert named["upper_wick"] is None and named["lower_wick"] is None
            ints.update({name: _array(named[name])[1] for name in ("high", "low", "close")})
        for name in names:
            q = {"volume": pv, "vwap": pw}.get(name, p)
            out[name] = [float("nan") if x is None else x / q for x in ints[name]]
    return out


def _decode_packed(named: dict, out: dict) -> dict:
    """A packed session (``store.packed``), read by struct: open, body, the
    two wicks, volume, vwap and trades, one column after the other."""
    for k in ("open", "high", "low", "close", "volume", "vwap", "trades", "body", "raw"):
        assert named[k] is None, k
    n, data, at = len(out["minute"]), named["packed"], 0
    assert len(data) == 34 * n
    cols = {}
    for name, code in (("open", "q"), ("body", "h"), ("upper", "h"), ("lower", "h"),
                       ("volume", "q"), ("vwap", "q"), ("trades", "i")):
        cols[name] = list(struct.unpack_from(f"!{n}{code}", data, at))
        at += struct.calcsize(f"!{code}") * n
    p, pv, pw = (10.0 ** struct.unpack("!h", named[k])[0]
                 for k in ("scale", "volume_scale", "vwap_scale"))
    o = cols["open"]
    c = [a + d for a, d in zip(o, cols["body"], strict=True)]
    ints = {"open": o, "close": c,
            "high": [max(a, b) + d for a, b, d in zip(o, c, cols["upper"], strict=True)],
            "low": [min(a, b) - d for a, b, d in zip(o, c, cols["lower"], strict=True)]}
    for name in ("open", "high", "low", "close"):
        out[name] = [x / p for x in ints[name]]
    for name, q in (("volume", pv), ("vwap", pw)):
        out[name] = [float("nan") if x == -(2 ** 63) else x / q for x in cols[name]]
    out["trades"] = cols["trades"]
    return out


def _encode(minute, cols, trades, invalid) -> dict:
    s = mstore.MinuteSession("AAPL", dt.date(2024, 11, 26), minute, *cols, trades, invalid, "x")
    body, _, _ = minutecopy.session_rows([s])
    (row,) = _rows(body)
    return _decode(row)


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
    got = _encode(minute, cols, trades, invalid)
    assert got["minute"] == minute.tolist()
    assert got["trades"] == trades.tolist()
    assert got["invalid"] == invalid
    for name, want in zip(("open", "high", "low", "close", "volume", "vwap"), cols, strict=True):
        assert _same(got[name], want), name


small = st.integers(-40_000, 40_000)


@st.composite
def near_prices(draw):
    """A session of prices near each other, in cents: open, high, low, close
    within a few hundred dollars of a base (an invalid bar's high may be
    below its open), whole or fractional volumes, a vwap sometimes missing."""
    n = draw(st.integers(1, 30))
    base = draw(st.integers(0, 10**8))
    o = np.array([base + draw(small) for _ in range(n)], dtype=float)
    c = o + [draw(small) for _ in range(n)]
    h = np.maximum(o, c) + [draw(small) for _ in range(n)]
    lo = np.minimum(o, c) - [draw(small) for _ in range(n)]
    v = np.array([draw(st.integers(0, 10**9)) for _ in range(n)], dtype=float) / \
        draw(st.sampled_from([1, 100]))
    vw = np.where([draw(st.booleans()) for _ in range(n)], np.nan, (h + lo) / 2)
    return [x / 100 for x in (o, h, lo, c)] + [v, vw / 100]


@settings(max_examples=200, deadline=None)
@given(near_prices())
def test_near_prices_round_trip_as_candles_or_as_they_are(cols):
    """Body and wicks (0013), packed (0017), when every difference fits a
    smallint (32,767 units of the session's scale), the absolute integers
    as arrays otherwise; the same bars either way."""
    n = len(cols[0])
    s = mstore.MinuteSession("AAPL", dt.date(2024, 11, 26), np.arange(n), *cols,
                             np.arange(n), [], "x")
    (row,) = _rows(minutecopy.session_rows([s])[0])
    named = dict(zip(minutecopy.COLUMNS, row, strict=True))
    assert named["scale"] is not None and named["raw"] is None
    p = 10 ** struct.unpack("!h", named["scale"])[0]  # 2 (the vwap has its own)
    o, h, lo, c = (np.rint(np.asarray(x) * p) for x in cols[:4])
    parts = np.concatenate([c - o, h - np.maximum(o, c), np.minimum(o, c) - lo])
    assert (named["packed"] is not None) == bool((np.abs(parts) <= 32767).all())
    assert named["body"] is None
    # the volume at its own decimals, not the prices' (0 for whole shares)
    assert struct.unpack("!h", named["volume_scale"])[0] == minutecopy._scale_of(cols[4])
    got = _decode(row)
    for name, want in zip(("open", "high", "low", "close", "volume", "vwap"), cols, strict=True):
        assert _same(got[name], want), name


@settings(max_examples=150, deadline=None)
@given(st.lists(cents, min_size=1, max_size=30))
def test_cent_prices_are_stored_scaled_with_at_most_two_decimals(values):
    k = minutecopy._scale_of(np.array(values))
    assert k is not None and k <= 2


@settings(max_examples=200, deadline=None)
@given(st.lists(price, max_size=30))
def test_scale_of_is_the_fewest_decimals_that_give_every_value_back(values):
    x = np.array(values, dtype=float)
    finite = x[np.isfinite(x)]
    k = minutecopy._scale_of(x)

    def exact(j: int) -> bool:
        p = 10.0 ** j
        r = np.rint(finite * p)
        return bool(np.all(np.abs(r) < 2.0 ** 62)) and np.array_equal(r / p, finite)

    if k is None:
        assert finite.size and not any(exact(j) for j in range(minutecopy.MAX_SCALE + 1))
    else:
        assert exact(k) and not any(exact(j) for j in range(k))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(price, max_size=20), st.lists(price, max_size=20)),
                max_size=12), st.integers(1, 4))
def test_scales_of_many_groups_equal_each_scale_tried_in_turn(groups, rows):
    """``scales`` finds each group's decimals from its first values and checks
    the rest in one pass; groups whose later values need more decimals than
    their first (the second list) are tried again. It gives what trying every
    scale in turn on every value gives."""
    cols = [np.array(a + b, dtype=float) for a, b in groups]
    off = np.concatenate(([0], np.cumsum([len(c) for c in cols]))).astype(np.int64)
    flat = np.concatenate(cols) if cols else np.zeros(0)
    x = np.stack([np.roll(flat, j) for j in range(rows)])  # rows with other values
    got = minutecopy.scales(x, off)
    assert got.tolist() == minutecopy._scales_by_pass(x, off).tolist()
    for i in range(len(cols)):  # and each alone
        one = x[:, off[i]:off[i + 1]]
        assert got[i] == minutecopy.scales(one, np.array([0, one.shape[1]]))[0]


def test_a_value_no_scale_holds_sends_the_whole_day_raw():
    x = np.array([1.5, 0.1 + 0.2])  # 0.30000000000000004 needs 17 decimals
    assert minutecopy._scale_of(x) is None
    got = _encode(np.array([570, 571]), [x] * 6, np.array([3, -1]), [])
    assert got["high"] == [1.5, 0.30000000000000004] and got["trades"] == [3, -1]


def test_a_sessions_fields_sit_under_their_columns():
    s = mstore.MinuteSession("AAPL", dt.date(2024, 11, 26), np.array([570]),
                             *([np.array([1.25])] * 6), np.array([7]), [0], "polygon")
    body, _, scales = minutecopy.session_rows([s])
    (row,) = _rows(body)
    named = dict(zip(minutecopy.COLUMNS, row, strict=True))
    assert named["symbol"] == b"AAPL" and named["source"] == b"polygon"
    assert struct.unpack("!i", named["session"])[0] == (dt.date(2024, 11, 26)
                                                         - dt.date(2000, 1, 1)).days
    assert struct.unpack("!h", named["scale"])[0] == 2 and scales.tolist() == [2]
    assert named["open"] is None and named["raw"] is None
    # packed (0017): open 125, body and wicks 0, volume 125, vwap 125, trades 7
    assert named["packed"] == struct.pack("!qhhhqqi", 125, 0, 0, 0, 125, 125, 7)
    assert _array(named["minutes"]) == ([1], [570]) and _array(named["invalid"]) == ([1], [0])


@settings(max_examples=60, deadline=None)
@given(st.lists(sessions(), min_size=1, max_size=6))
def test_many_sessions_encoded_together_equal_each_alone(days):
    chunk = [mstore.MinuteSession(f"S{i}", dt.date(2024, 11, 26), m, *cols, t, inv, "x")
             for i, (m, cols, t, inv) in enumerate(days)]
    together = _rows(minutecopy.session_rows(chunk)[0])
    alone = [_rows(minutecopy.session_rows([s])[0])[0] for s in chunk]
    assert together == alone


@pytest.mark.parametrize("tf", ["1d", "5m'; --", "2m"])
def test_only_known_intraday_timeframes_reach_sql(tf):
    with pytest.raises(ValueError, match="no intraday timeframe"):
        mstore.intraday_sql(tf, adjust="none", include_invalid=False, fmt="json")


def test_a_trade_count_beyond_int4_is_refused_not_wrapped():
    s = mstore.MinuteSession("AAPL", dt.date(2024, 11, 26), np.array([570]),
                             *([np.array([1.25])] * 6), np.array([2 ** 31]), [], "polygon")
    with pytest.raises(ValueError, match="does not fit"):
        minutecopy.session_rows([s])
