"""Minute sessions packed (migration 0017) on real PostgreSQL: a session
written now keeps its candle's numbers in one ``bytea``; it reads back bar for
bar, trade counts included, in SQL (the JSON answers, the rollups refreshed
in SQL) and in numpy (the columnar answers), also in one answer with a
session stored as arrays before 0017; ``appliance repack`` packs those."""
from __future__ import annotations

import contextlib
import datetime as dt
import json

import numpy as np
import psycopg

from appliance.ops import arrowbars, repack
from appliance.store import columnar, packed
from appliance.store import minutes as mstore
from appliance.store import pool as db
from tests.integration.test_minute_offsets import NAMES, TZ, _equal, _session
from tests.minute_store import store_as_before_0017

DAYS = (dt.date(2024, 3, 4), dt.date(2024, 3, 5))


def _sql_bars(conn, symbol: str) -> list[dict]:
    rows = conn.execute(mstore.intraday_sql("1m", adjust="none", include_invalid=True,
                                            fmt="json"),
                        {"symbol": symbol, "start": DAYS[0], "end": DAYS[-1], "after": None,
                         "limit": None, "tz": TZ}).fetchall()
    return [json.loads(t) for _, t in rows]


def _numpy_bars(conn, symbol: str) -> dict:
    rows = list(columnar.session_arrays(conn, "1m", {"symbol": symbol, "start": DAYS[0],
                                                     "end": DAYS[-1], "after": None,
                                                     "limit": None, "tz": TZ}))
    return arrowbars.decode_sessions(rows, [], TZ)


def _check(conn, sessions: list[mstore.MinuteSession]) -> None:
    """Both readers give every session's bars, values and trade counts."""
    want = {c: np.concatenate([getattr(s, c) for s in sessions]) for c in NAMES}
    trades = np.concatenate([s.trades for s in sessions])
    bars = _sql_bars(conn, sessions[0].symbol)
    _equal({c: np.array([np.nan if b[c] is None else b[c] for b in bars], float)
            for c in NAMES}, _Want(want))
    assert [-1 if b["trades"] is None else b["trades"] for b in bars] == trades.tolist()
    got = _numpy_bars(conn, sessions[0].symbol)
    _equal({c: got[c] for c in NAMES}, _Want(want))
    assert got["trades"].tolist() == trades.tolist()
    assert (~got["validated"]).sum() == sum(len(s.invalid) for s in sessions)


class _Want:
    """Columns as ``_equal`` reads a session's."""

    def __init__(self, cols: dict):
        self.__dict__.update(cols)


def test_packed_and_array_sessions_read_alike_and_repack_packs_the_arrays(empty_db, monkeypatch):
    db.migrate(empty_db)
    sessions = [_session("AAPL", day, seed=20 + i) for i, day in enumerate(DAYS)]
    with psycopg.connect(empty_db) as conn:
        mstore.write_days(conn, sessions, rollups=True)
        conn.commit()
        forms = conn.execute("SELECT packed IS NOT NULL, length(packed), cardinality(minutes) "
                             "FROM minute_bars ORDER BY session").fetchall()
        assert forms == [(True, packed.BAR_BYTES * 200, 200)] * 2
        _check(conn, sessions)
        written = conn.execute("SELECT timeframe, session, starts, open_scaled, body, "
                               "upper_wick, lower_wick, volume_scaled, vwap, trades "
                               "FROM rollup_bars ORDER BY 1, 2").fetchall()
        # the rollups refreshed in SQL from the packed minutes are those the
        # writer computed in numpy
        mstore.refresh_rollups_of(conn, ["AAPL"], list(DAYS))
        again = conn.execute("SELECT timeframe, session, starts, "
                             "array_agg(o ORDER BY i), array_agg(v ORDER BY i) FROM ("
                             "SELECT b.timeframe, b.session, b.starts, u.i, "
                             "coalesce(b.open[u.i], b.open_scaled[u.i] / 10.0 ^ b.scale) o, "
                             "coalesce(b.volume[u.i], b.volume_scaled[u.i]) v "
                             "FROM rollup_bars b, generate_subscripts(b.starts, 1) u(i)) q "
                             "GROUP BY 1, 2, 3 ORDER BY 1, 2").fetchall()
        assert [r[:3] for r in again] == [r[:3] for r in written]
        for tf, day, starts, opens, _ in again:
            s = sessions[DAYS.index(day)]
            width = int(tf[:-1]) * (60 if tf.endswith("h") else 1)
            valid = np.setdiff1d(np.arange(len(s.open)), s.invalid)
            firsts = [valid[(s.minute[valid] // width) * width == st][0] for st in starts]
            assert np.allclose(opens, s.open[firsts], rtol=0, atol=1e-9), tf
        store_as_before_0017(conn, "AAPL", DAYS[0])
        conn.commit()
        assert conn.execute("SELECT session FROM minute_bars WHERE packed IS NULL "
                            "AND body IS NOT NULL").fetchall() == [(DAYS[0],)]
        _check(conn, sessions)  # one answer, one session of each form
        assert mstore.old_layout_keys(conn, 10) == [("AAPL", DAYS[0])]
        store_as_before_0017(conn)  # both
        conn.commit()
        assert mstore.old_layout_keys(conn, 10) == [("AAPL", d) for d in DAYS]
        assert mstore.old_layout_keys(conn, 10, ("AAPL", DAYS[0])) == [("AAPL", DAYS[1])]

    @contextlib.contextmanager
    def conn_cm():
        with psycopg.connect(empty_db) as c:
            yield c

    monkeypatch.setattr(repack, "BATCH", 1)  # batches that go on from the last one
    seen = []
    assert repack.repack(conn_cm, on_batch=seen.append) == {"sessions": 2} and seen == [1, 2]
    assert repack.repack(conn_cm) == {"sessions": 0}
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM minute_bars WHERE packed IS NOT NULL"
                            ).fetchone()[0] == 2
        _check(conn, sessions)


def test_regular_aggregates_of_packed_sessions_equal_those_sql_gives_for_arrays(empty_db):
    """The daily/minute consistency check's aggregates (valid regular-hours
    minutes' high, low and volume, an early close honoured, a NULL volume
    left out of the sum), read by numpy from packed sessions, equal the
    database's of the same sessions stored as arrays."""
    db.migrate(empty_db)
    sessions = [_session("AAPL", day, n=300, seed=30 + i) for i, day in enumerate(DAYS)]
    sessions[1].volume[12] = np.nan  # a bar without a volume
    sessions.append(_session("AAPL", dt.date(2024, 3, 6), n=10, seed=40))  # before the open
    sessions[2].minute[:] = np.arange(500, 510)
    args = ("AAPL", DAYS[0], dt.date(2024, 3, 6), 575, 840, [DAYS[1]], 780)
    with psycopg.connect(empty_db) as conn:
        mstore.write_days(conn, sessions)
        assert conn.execute("SELECT count(*) FROM minute_bars WHERE packed IS NOT NULL"
                            ).fetchone()[0] == 3
        got = mstore.regular_aggregates(conn, *args)
        assert got == packed.regular_aggregates(conn, *args)  # all of them packed
        store_as_before_0017(conn)
        assert conn.execute("SELECT count(*) FROM minute_bars WHERE packed IS NULL"
                            ).fetchone()[0] == 3
        want = mstore.regular_aggregates(conn, *args)  # all in SQL
    assert [g[0] for g in got] == list(DAYS)  # the third has no regular-hours bar
    assert got == want
    for (day, hi, lo, vol), s in zip(got, sessions, strict=False):
        close = 780 if day == DAYS[1] else 840
        sel = [i for i, m in enumerate(s.minute) if 575 <= m < close and i not in s.invalid]
        assert (hi, lo) == (max(s.high[sel]), min(s.low[sel]))
        assert vol == np.nansum(s.volume[sel])
