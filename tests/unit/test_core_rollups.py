"""``core.rollups`` on a hand-made session: bucket starts, first/last
minute's open and close, NULLs (NaN, trades -1) left out of maxima and sums,
vwap over the minutes that have one, wider widths grouped from the 5m bars."""
from __future__ import annotations

import numpy as np

from appliance.core.rollups import rollups

NAN = float("nan")


def test_buckets_of_one_session_follow_the_sql_rules():
    minute = np.array([570, 571, 574, 575, 600])
    o = np.array([10.0, 11.0, 12.0, 13.0, 14.0])
    h = np.array([10.5, NAN, 12.5, 13.5, 14.5])
    lo = np.array([9.5, 10.5, 11.5, 12.5, 13.5])
    c = np.array([10.2, 11.2, 12.2, 13.2, 14.2])
    v = np.array([100.0, 200.0, 300.0, 0.0, 50.0])
    vw = np.array([10.0, NAN, 12.0, 13.0, NAN])
    tr = np.array([1, -1, 3, 4, -1])
    got = rollups(np.zeros(5, dtype=np.int64), minute, o, h, lo, c, v, vw, tr)
    five = got["5m"]
    assert five.start.tolist() == [570, 575, 600]
    assert five.open.tolist() == [10.0, 13.0, 14.0] and five.close.tolist() == [12.2, 13.2, 14.2]
    assert five.high.tolist() == [12.5, 13.5, 14.5] and five.low.tolist() == [9.5, 12.5, 13.5]
    assert five.volume.tolist() == [600.0, 0.0, 50.0]
    assert five.trades.tolist() == [4, 4, -1]  # all NULL: NULL
    vwap = five.vwap
    assert vwap[0] == (10.0 * 100 + 12.0 * 300) / 400  # the minute without vwap left out
    assert np.isnan(vwap[1]) and np.isnan(vwap[2])  # volume 0; no vwap at all
    hour = got["1h"]
    assert hour.start.tolist() == [540, 600]
    assert hour.open.tolist() == [10.0, 14.0] and hour.close.tolist() == [13.2, 14.2]
    assert hour.volume.tolist() == [600.0, 50.0] and hour.trades.tolist() == [8, -1]
    assert got["4h"].start.tolist() == [480]


def test_sessions_never_share_a_bucket():
    got = rollups(np.array([0, 1]), np.array([570, 571]), *([np.array([1.0, 2.0])] * 5),
                  np.array([NAN, NAN]), np.array([1, 2]))
    assert got["5m"].session.tolist() == [0, 1] and got["5m"].open.tolist() == [1.0, 2.0]
