"""The rollups computed in numpy while minute sessions are copied
(``write_days(rollups=True)``, ``core.rollups``) equal those of the SQL
refresh (``refresh_rollups_of``) of the same stored sessions, bar for bar:
random sessions with gaps, extended hours, a few raw-float sessions, invalid
bars, bars without vwap or trades, a session with every bar invalid."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from appliance.core.timeframes import ROLLUPS
from appliance.store import columnar as cstore
from appliance.store import minutes as mstore

DAY = dt.date(2024, 3, 5)
DAY2 = dt.date(2024, 3, 6)


def _session(rng, symbol: str, day: dt.date, kind: str) -> mstore.MinuteSession:
    n = int(rng.integers(1, 700)) if kind != "one" else 1
    minute = np.sort(rng.choice(np.arange(240, 1200), size=n, replace=False))
    c = np.round(rng.uniform(1, 500) * np.exp(np.cumsum(rng.normal(0, 0.001, n))), 2)
    o = np.round(c * (1 + rng.normal(0, 0.0005, n)), 4)
    h = np.maximum(o, c) + np.round(np.abs(rng.normal(0, 0.02, n)), 2)
    lo = np.minimum(o, c) - np.round(np.abs(rng.normal(0, 0.02, n)), 2)
    v = np.round(rng.lognormal(6, 1.5, n), 3)
    v[rng.random(n) < 0.02] = 0.0
    vw = np.round((h + lo + c) / 3, 4)
    vw[rng.random(n) < 0.1] = np.nan  # bars without vwap
    tr = rng.integers(1, 500, n)
    tr[rng.random(n) < 0.1] = -1  # bars without a trade count
    if kind == "calm":  # cents, a quiet name: every rollup a candle (0014)
        c = np.round(rng.uniform(20, 50) + np.cumsum(rng.normal(0, 0.01, n)), 2)
        o, h, lo = np.round(c + 0.01, 2), np.round(c + 0.03, 2), np.round(c - 0.02, 2)
        v = np.round(v)
    if kind == "raw":  # no decimal scale holds these: stored as float8
        h = h + 1e-11
        v = v * (1 + 1e-13)
    bad = np.flatnonzero(rng.random(n) < 0.05)
    if kind == "all-invalid":
        bad = np.arange(n)
    if kind == "zero-volume":
        v[:] = 0.0
    return mstore.MinuteSession(symbol, day, minute.astype(np.int64), o, h, lo, c, v, vw,
                                tr.astype(np.int64), bad.tolist(), "test")


def _rollups(conn) -> dict:
    """Every rollup row's bars as floats, whichever form it is stored in
    (0014: candles, decoded as the Arrow answers' SQL decodes them)."""
    rows = conn.execute(f"""
        SELECT b.symbol, b.timeframe, b.session, b.starts, coalesce(b.open, d.open),
               coalesce(b.high, d.high), coalesce(b.low, d.low), coalesce(b.close, d.close),
               coalesce(b.volume, d.volume), b.vwap, b.trades
        FROM rollup_bars b {cstore._ROLLUP_FLOATS}""").fetchall()
    return {r[:3]: r[3:] for r in rows}


def _forms(conn) -> dict:
    """(symbol, timeframe, session) -> stored as candles."""
    return {r[:3]: r[3] for r in conn.execute(
        "SELECT symbol, timeframe, session, scale IS NOT NULL FROM rollup_bars")}


def _same(a, b, exact: bool) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            if x is not y:
                return False
        elif exact:
            if x != y:
                return False
        elif x != pytest.approx(y, rel=1e-12, abs=1e-12):
            return False
    return True


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_numpy_rollups_equal_the_sql_refresh(runtime, seed):
    rng = np.random.default_rng(seed)
    kinds = ["plain"] * 50 + ["raw"] * 5 + ["calm"] * 5 + ["one", "all-invalid", "zero-volume"]
    sessions = [_session(rng, f"S{i:03d}", day, kind) for i, kind in enumerate(kinds)
                for day in (DAY, DAY2)]
    with runtime.conn() as conn:
        conn.execute("DELETE FROM rollup_bars")
        assert mstore.write_days(conn, sessions, rollups=True) == len(sessions)
        ours, forms = _rollups(conn), _forms(conn)
        mstore.refresh_rollups_of(conn, sorted({s.symbol for s in sessions}), [DAY, DAY2])
        theirs = _rollups(conn)
    # every session with a valid bar has each width, the all-invalid ones none
    valid = [s for s in sessions if len(s.invalid) < len(s.minute)]
    assert len(valid) <= len(sessions) - 2
    assert len(ours) == len(valid) * len(ROLLUPS)
    assert set(ours) == set(theirs)
    # the numpy rollups are candles but those of raw sessions and those wider
    # than a smallint (many here: volatile prices at four decimals); the SQL
    # refresh writes floats
    of = {f"S{i:03d}": kind for i, kind in enumerate(kinds)}
    assert not any(candle for k, candle in forms.items() if of[k[0]] == "raw")
    assert all(candle for k, candle in forms.items() if of[k[0]] == "calm")
    names = ("starts", "open", "high", "low", "close", "volume", "vwap", "trades")
    for key, got in ours.items():
        want = theirs[key]
        for name, g, w in zip(names, got, want, strict=True):
            # sums may differ in their last bit (PostgreSQL adds in its own order)
            exact = name not in ("volume", "vwap")
            assert _same(g, w, exact), (key, name, g, w)


def test_numpy_rollups_replace_a_sessions_earlier_ones(runtime):
    rng = np.random.default_rng(9)
    first = _session(rng, "AAA", DAY, "plain")
    again = _session(rng, "AAA", DAY, "all-invalid")
    other = _session(rng, "BBB", DAY, "plain")
    with runtime.conn() as conn:
        mstore.write_days(conn, [first, other], rollups=True)
        assert len(_rollups(conn)) == 2 * len(ROLLUPS)
        mstore.write_days(conn, [again], rollups=True)
        left = _rollups(conn)
    # AAA's session has no valid bar now: its rollups are gone, BBB's stay
    assert sorted({k[0] for k in left}) == ["BBB"]
