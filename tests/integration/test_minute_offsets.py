"""Minute sessions as candles (migration 0013) on real PostgreSQL: a store
written before the migration is not rewritten by it and reads as it did;
a session written after it stores close, high and low as the candle's body
and wicks (smallints) and its volume at its own scale, and reads back bar
for bar, in SQL (the JSON answers) and in numpy (the Arrow answers), the
same values as before; a session with a missing price or a wider candle is
stored as before."""
from __future__ import annotations

import contextlib
import datetime as dt
import json

import numpy as np
import psycopg
import pytest

from appliance.ops import arrowbars, repack
from appliance.store import columnar, packed
from appliance.store import minutes as mstore
from appliance.store import pool as db
from tests.integration.test_minute_partitions import _migrate_up_to
from tests.minute_store import store_as_before_0013

TZ = "America/New_York"
NAMES = ("open", "high", "low", "close", "volume", "vwap")


def _session(symbol: str, day: dt.date, n: int = 200, seed: int = 0) -> mstore.MinuteSession:
    """Four-decimal highs and lows around two-decimal opens and closes, whole
    volumes, a missing vwap and trade count, one invalid bar."""
    rng = np.random.default_rng(seed)
    c = np.round(50 + np.cumsum(rng.normal(0, 0.05, n)), 2)
    o = np.round(c + rng.normal(0, 0.02, n), 2)
    h = np.round(np.maximum(o, c) + np.abs(rng.normal(0, 0.01, n)), 4)
    lo = np.round(np.minimum(o, c) - np.abs(rng.normal(0, 0.01, n)), 4)
    vw = np.round((h + lo) / 2, 4)
    vw[3] = np.nan
    k = rng.integers(1, 300, n)
    k[5] = -1
    return mstore.MinuteSession(symbol, day, np.arange(570, 570 + n), o, h, lo, c,
                                rng.integers(1, 90_000, n).astype(float), vw, k, [7], "test")


def _read_sql(conn, symbol: str, day: dt.date) -> dict[str, np.ndarray]:
    rows = conn.execute(mstore.intraday_sql("1m", adjust="none", include_invalid=True,
                                            fmt="json"),
                        {"symbol": symbol, "start": day, "end": day, "after": None,
                         "limit": None, "tz": TZ}).fetchall()
    bars = [json.loads(t) for _, t in rows]
    return {c: np.array([np.nan if b[c] is None else b[c] for b in bars], float) for c in NAMES}


def _read_numpy(conn, symbol: str, day: dt.date) -> dict[str, np.ndarray]:
    rows = list(columnar.session_arrays(conn, "1m", {"symbol": symbol, "start": day, "end": day,
                                                     "after": None, "limit": None, "tz": TZ}))
    got = arrowbars.decode_sessions(rows, [], TZ)
    return {c: got[c] for c in NAMES}


def _equal(got: dict, s: mstore.MinuteSession) -> None:
    for c in NAMES:
        want = getattr(s, c)
        same = (got[c] == want) | (np.isnan(got[c]) & np.isnan(want))
        assert same.all(), (c, got[c][~same][:3], want[~same][:3])


def test_a_store_written_before_reads_as_it_did_and_is_not_rewritten(empty_db):
    _migrate_up_to(empty_db, 12)
    old = _session("AAPL", dt.date(2024, 3, 4), seed=1)
    raw = _session("RAW", dt.date(2024, 3, 4), n=30, seed=2)
    with psycopg.connect(empty_db) as conn:
        db.ensure_partitions(conn, 2024, 2024, "minute_bars")
        store_as_before_0013(conn, old)
        store_as_before_0013(conn, raw, raw=True)
        conn.commit()
        before = conn.execute("SELECT md5(string_agg(b::text, '|' ORDER BY symbol)) "
                              "FROM minute_bars b").fetchone()[0]
    assert 13 in db.migrate(empty_db)
    with psycopg.connect(empty_db) as conn:
        layout = conn.execute("SELECT symbol, body IS NULL, volume_scale FROM minute_bars "
                              "ORDER BY symbol").fetchall()
        assert layout == [("AAPL", True, None), ("RAW", True, None)]
        after = conn.execute("""SELECT md5(string_agg((b.symbol, b.session, b.minutes, b.scale,
                                  b.open, b.high, b.low, b.close, b.volume, b.vwap, b.raw,
                                  b.trades, b.invalid, b.source, b.ingested_at)::text, '|'
                                  ORDER BY symbol)) FROM minute_bars b""").fetchone()[0]
        assert after == before
        for s in (old, raw):
            _equal(_read_sql(conn, s.symbol, s.session), s)
            _equal(_read_numpy(conn, s.symbol, s.session), s)


def test_a_session_written_now_is_stored_as_a_candle_and_reads_the_same(empty_db):
    db.migrate(empty_db)
    s = _session("AAPL", dt.date(2024, 3, 5), seed=3)
    gap = _session("GAP", dt.date(2024, 3, 5), n=20, seed=4)
    gap.open[4] = np.nan  # a price missing: stored as before
    wide = _session("WIDE", dt.date(2024, 3, 5), n=20, seed=5)
    wide.high[9] += 3.2768  # a wick of 32,768 ten-thousandths: no smallint
    cents = _session("CENTS", dt.date(2024, 3, 5), n=20, seed=7)
    for name in ("high", "low"):  # prices in cents, the vwap in four decimals
        getattr(cents, name)[:] = np.round(getattr(cents, name), 2)
    with psycopg.connect(empty_db) as conn:
        assert mstore.write_days(conn, [s, gap, wide, cents]) == 4
        assert conn.execute("SELECT scale, volume_scale, vwap_scale FROM minute_bars "
                            "WHERE symbol = 'CENTS'").fetchone() == (2, 0, 4)
        conn.commit()
        got = {r[0]: r[1:] for r in conn.execute(
            """SELECT symbol, scale, volume_scale, high IS NULL, low IS NULL, close IS NULL,
                      packed, high[1:3]
               FROM minute_bars WHERE symbol <> 'CENTS'""")}
        assert got["AAPL"][:5] == (4, 0, True, True, True)  # the volume at its own scale
        # the candle (0013), packed (0017): body and wicks after the opens
        o, c = np.rint(s.open * 1e4), np.rint(s.close * 1e4)
        n, blob = len(s.open), got["AAPL"][5]
        parts = [packed.unpack([blob], np.array([n]), f) for f in
                 ("open", "body", "upper_wick", "lower_wick")]
        assert parts[0].tolist() == o.tolist() and parts[1].tolist() == (c - o).tolist()
        assert parts[2].tolist() == (np.rint(s.high * 1e4) - np.maximum(o, c)).tolist()
        assert parts[3].tolist() == (np.minimum(o, c) - np.rint(s.low * 1e4)).tolist()
        for other in ("GAP", "WIDE"):
            assert got[other][:6] == (4, 0, False, False, False, None)
        assert got["GAP"][6] == np.rint(gap.high[:3] * 1e4).tolist()
        for x in (s, gap, wide, cents):
            _equal(_read_sql(conn, x.symbol, x.session), x)
            _equal(_read_numpy(conn, x.symbol, x.session), x)
        with psycopg.connect(empty_db) as other:  # the database holds the layout's rules
            for bad in ("SET packed = '\\x00'::bytea WHERE symbol = 'GAP'",  # two forms
                        "SET open = minutes::int8[] WHERE symbol = 'AAPL'",
                        "SET packed = substring(packed FROM 1 FOR 34) WHERE symbol = 'AAPL'",
                        "SET volume_scale = 12 WHERE symbol = 'AAPL'"):
                with pytest.raises(psycopg.errors.CheckViolation):
                    other.execute(f"UPDATE minute_bars {bad}")
                other.rollback()


def test_rollups_are_stored_as_candles_and_the_database_holds_their_form(empty_db):
    db.migrate(empty_db)
    s = _session("AAPL", dt.date(2024, 3, 5), seed=6)
    with psycopg.connect(empty_db) as conn:
        mstore.write_days(conn, [s], rollups=True)
        conn.commit()
        forms = conn.execute("""SELECT timeframe, scale, volume_scale, open IS NULL,
                                       cardinality(body) = cardinality(starts)
                                FROM rollup_bars ORDER BY timeframe""").fetchall()
        # the rows' own scales: four decimals of the highs and lows, whole volumes
        assert forms == [(tf, 4, 0, True, True) for tf in sorted(mstore.ROLLUPS)]
        hour = {int(t): b for t, b in mstore.day_bars(conn, "AAPL", "1h", s.session,
                                                      tz=TZ).items()}
        first = hour[min(hour)]  # 09:30-10:00: minutes 570..599 but the invalid one
        bars = [i for i in range(30) if i != 7]
        assert first["open"] == s.open[0] and first["close"] == s.close[29]
        assert first["high"] == max(s.high[bars]) and first["low"] == min(s.low[bars])
        assert first["volume"] == sum(s.volume[bars])
        for bad in ("SET open = ARRAY[1.0] WHERE timeframe = '5m'",
                    "SET body = body[1:2] WHERE timeframe = '5m'",
                    "SET scale = NULL WHERE timeframe = '5m'"):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(f"UPDATE rollup_bars {bad}")
            conn.rollback()


def test_repack_writes_a_store_of_before_0013_again_as_candles_with_the_same_bars(empty_db):
    _migrate_up_to(empty_db, 12)
    sessions = [_session("AAPL", dt.date(2024, 3, 4), seed=8),
                _session("AAPL", dt.date(2024, 3, 5), seed=9),
                _session("MSFT", dt.date(2024, 3, 4), n=60, seed=10)]
    raw = _session("RAW", dt.date(2024, 3, 4), n=30, seed=11)
    with psycopg.connect(empty_db) as conn:
        db.ensure_partitions(conn, 2024, 2024, "minute_bars")
        for s in sessions:
            store_as_before_0013(conn, s)
        store_as_before_0013(conn, raw, raw=True)
        conn.commit()
    db.migrate(empty_db)
    keys = [(s.symbol, s.session) for s in [*sessions, raw]]

    def answers(conn):
        mstore.refresh_rollups_of(conn, ["AAPL", "MSFT", "RAW"], [dt.date(2024, 3, 4),
                                                                dt.date(2024, 3, 5)])
        return {(sym, day, tf): mstore.day_bars(conn, sym, tf, day, tz=TZ)
                for sym, day in keys for tf in ("1m", "5m", "1h")}

    with psycopg.connect(empty_db) as conn:
        conn.execute("DELETE FROM rollup_bars")
        before = answers(conn)  # rollups as the SQL refresh writes them: floats
        conn.commit()

    @contextlib.contextmanager
    def conn_cm():
        with psycopg.connect(empty_db) as c:
            yield c

    seen = []
    assert repack.repack(conn_cm, limit=2, on_batch=seen.append) == {"sessions": 2}
    assert repack.repack(conn_cm, on_batch=seen.append) == {"sessions": 1}  # the raw stays
    assert repack.repack(conn_cm) == {"sessions": 0} and seen == [2, 1]
    with psycopg.connect(empty_db) as conn:
        forms = dict(conn.execute("SELECT symbol || session, packed IS NOT NULL "
                                  "FROM minute_bars").fetchall())
        assert sorted(forms.values()) == [False, True, True, True]  # all but the raw one
        assert conn.execute("SELECT count(*) FROM rollup_bars WHERE scale IS NOT NULL"
                            ).fetchone()[0] == 3 * len(mstore.ROLLUPS)
        after = {k: mstore.day_bars(conn, k[0], k[2], k[1], tz=TZ) for k in before}
    for k, want in before.items():
        got = after[k]
        assert got.keys() == want.keys(), k
        # a rollup's volume and vwap are sums, added in another order (numpy
        # here, SQL before) or exactly (the volume): equal to the last bits
        sums = () if k[2] == "1m" else ("volume", "vwap")
        for t, bar in want.items():
            g = got[t]
            assert {f: g[f] for f in bar if f not in sums} == \
                {f: bar[f] for f in bar if f not in sums}, (k, t)
            for f in sums:
                assert g[f] == pytest.approx(bar[f], rel=1e-12, nan_ok=True), (k, t, f)


#: 0013 as it was released first: no vwap_scale (the vwap at the prices' scale)
_FIRST_0013_CHANGES = (
    (",\n  ADD COLUMN vwap_scale   smallint;", ";"),
    ("\n     AND (vwap_scale IS NULL OR vwap_scale BETWEEN 0 AND 9))", ")"),
    (" AND volume_scale IS NULL AND vwap_scale IS NULL", " AND volume_scale IS NULL"),
)


def test_a_database_that_applied_0013_before_it_had_vwap_scale_gets_it(empty_db):
    """0013 gained vwap_scale after its release; a database that had applied
    it (schema 15, "up to date") failed every 1m read and minute write with
    "column vwap_scale does not exist". 0016 adds it and 0013's constraint."""
    _migrate_up_to(empty_db, 12)
    first = (db.MIGRATIONS_DIR / "0013_minute_offsets.sql").read_text(encoding="utf-8")
    for now, then in _FIRST_0013_CHANGES:
        assert now in first
        first = first.replace(now, then)
    old = _session("OLD", dt.date(2024, 3, 4), seed=8)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(first)
        conn.execute("INSERT INTO schema_migrations VALUES (13, '0013_minute_offsets')")
        db.ensure_partitions(conn, 2024, 2024, "minute_bars")
        store_as_before_0013(conn, old)
        assert not conn.execute("SELECT 1 FROM pg_attribute WHERE attname = 'vwap_scale' "
                                "AND attrelid = 'minute_bars'::regclass").fetchone()
        for version, name, path in db.migrations():  # then 14 and 15, as released
            if version in (14, 15):
                conn.execute(path.read_text(encoding="utf-8"))
                conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, name))
        with pytest.raises(psycopg.errors.UndefinedColumn):  # schema 15, and broken
            _read_sql(conn, old.symbol, old.session)
    assert db.migrate(empty_db) == [16, 17]
    cents = _session("CENTS", dt.date(2024, 3, 5), n=20, seed=7)
    for name in ("high", "low"):
        getattr(cents, name)[:] = np.round(getattr(cents, name), 2)
    with psycopg.connect(empty_db) as conn:
        assert mstore.write_days(conn, [cents]) == 1  # the stage has the column too
        conn.commit()
        assert conn.execute("SELECT scale, vwap_scale FROM minute_bars WHERE symbol = 'CENTS'"
                            ).fetchone() == (2, 4)
        for s in (old, cents):
            _equal(_read_sql(conn, s.symbol, s.session), s)
            _equal(_read_numpy(conn, s.symbol, s.session), s)
        with pytest.raises(psycopg.errors.CheckViolation):  # 0013's constraint, as now
            conn.execute("UPDATE minute_bars SET vwap_scale = 12 WHERE symbol = 'CENTS'")
        conn.rollback()
