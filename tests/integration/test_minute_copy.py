"""How minute sessions reach minute_bars: straight in by COPY for the
sessions the caller knows are new (``write_days(new=...)``, a flat file's
day), through the stage's upsert for those already stored; and the LZ4
compression of the array columns where the server has it
(``pool.toast_compression``)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import psycopg
import pytest

from appliance.store import minutes as mstore
from appliance.store import pool as db

DAY = dt.date(2024, 3, 5)


def _session(symbol: str, seed: int, n: int = 300) -> mstore.MinuteSession:
    rng = np.random.default_rng(seed)
    minute = np.sort(rng.choice(np.arange(240, 1200), size=n, replace=False)).astype(np.int64)
    c = np.round(rng.uniform(10, 300) * np.exp(np.cumsum(rng.normal(0, 0.001, n))), 2)
    o = np.round(c * (1 + rng.normal(0, 0.0005, n)), 2)
    h, lo = np.maximum(o, c) + 0.01, np.minimum(o, c) - 0.01
    v = np.round(rng.lognormal(6, 1, n), 2)
    return mstore.MinuteSession(symbol, DAY, minute, o, h, lo, c, v, np.full(n, np.nan),
                                rng.integers(1, 50, n).astype(np.int64), [3], "test")


def _stored(conn, symbol: str) -> tuple:
    (s,) = mstore.sessions_as_stored(conn, [(symbol, DAY)])
    return (s.minute.tolist(), s.open.tolist(), s.high.tolist(), s.low.tolist(),
            s.close.tolist(), s.volume.tolist(), s.trades.tolist(), list(s.invalid))


def _want(s: mstore.MinuteSession) -> tuple:
    return (s.minute.tolist(), s.open.tolist(), s.high.tolist(), s.low.tolist(),
            s.close.tolist(), s.volume.tolist(), s.trades.tolist(), list(s.invalid))


def test_new_sessions_are_copied_straight_in_and_stored_ones_upserted(database_url):
    before, again, fresh = _session("AAPL", 1), _session("AAPL", 2), _session("MSFT", 3)
    with psycopg.connect(database_url) as conn:
        mstore.ensure_partitions_for(conn, DAY, DAY)
        assert mstore.write_days(conn, [before], rollups=True) == 1
        conn.commit()
        have = mstore.symbols_on(conn, DAY)
        assert have == {"AAPL"}
        assert mstore.write_days(conn, [again, fresh], rollups=True,
                                 new=lambda s: s.symbol not in have) == 2
        conn.commit()
        # the stored session replaced by the new one, the new one as given
        assert _stored(conn, "AAPL") == _want(again)
        assert _stored(conn, "MSFT") == _want(fresh)
        assert mstore.symbols_on(conn, DAY) == {"AAPL", "MSFT"}
        rollups = conn.execute("SELECT symbol, count(*) FROM rollup_bars GROUP BY 1 "
                               "ORDER BY 1").fetchall()
        assert [r[0] for r in rollups] == ["AAPL", "MSFT"] and rollups[0][1] == rollups[1][1] > 0


def test_a_session_wrongly_called_new_fails_the_write_and_stores_nothing(database_url):
    before, again, fresh = _session("AAPL", 1), _session("AAPL", 2), _session("MSFT", 3)
    with psycopg.connect(database_url) as conn:
        mstore.ensure_partitions_for(conn, DAY, DAY)
        mstore.write_days(conn, [before], rollups=True)
        conn.commit()
        with pytest.raises(psycopg.errors.UniqueViolation):
            mstore.write_days(conn, [fresh, again], rollups=True, new=lambda s: True)
        conn.rollback()
        assert _stored(conn, "AAPL") == _want(before)
        assert mstore.symbols_on(conn, DAY) == {"AAPL"}
        with pytest.raises(ValueError, match="no revisions"):
            mstore.write_days(conn, [fresh], revisions=True, tz="America/New_York",
                              new=lambda s: True)


def test_array_columns_are_lz4_where_the_server_has_it(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        # asked of the server apart from the appliance's own probe
        has = conn.execute("""SELECT 'lz4' = ANY(enumvals) FROM pg_settings
                              WHERE name = 'default_toast_compression'""").fetchone()[0]
        assert db.lz4_available(conn) is has
        db.ensure_partitions(conn, 2003, 2003, "minute_bars")  # a partition made later
        methods = dict(conn.execute("""
            SELECT c.relname || '.' || a.attname, a.attcompression::text
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            WHERE c.relname IN ('minute_bars', 'minute_bars_y2003', 'rollup_bars')
              AND a.attnum > 0 AND NOT a.attisdropped""").fetchall())
        for table in ("minute_bars", "minute_bars_y2003", "rollup_bars"):
            cols = db.LZ4_COLUMNS["rollup_bars" if table == "rollup_bars" else "minute_bars"]
            got = {methods[f"{table}.{c}"] for c in cols}
            # without LZ4: pglz, set (0003, 0013) or the server's default
            assert got == {"l"} if has else not got & {"l"}, (table, got)
        assert methods["minute_bars.symbol"] in ("", "\x00")  # text columns untouched
        # once set, nothing left to do
        assert db.toast_compression(conn) == []
        if has:
            conn.execute("ALTER TABLE rollup_bars ALTER COLUMN trades SET COMPRESSION pglz")
            assert db.toast_compression(conn) == ["rollup_bars.trades"]
