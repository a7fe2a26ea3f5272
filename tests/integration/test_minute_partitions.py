"""minute_bars partitioned by year (migration 0012) on real PostgreSQL: the
migration of a store holding minutes keeps every row as it was, a write of
any year creates its partition (two writers of one new year included), and
1m retention drops whole old years, deleting rows only in the year the
cutoff falls in."""
from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import psycopg
import pytest

from appliance.core import calendar as tcal
from appliance.core.candles import MinuteBars
from appliance.ingest import minutes as intraday
from appliance.store import minutes as mstore
from appliance.store import pool as db
from tests.minute_store import store_as_before_0013

CFG = {"calendar": "XNYS", "session": "regular"}
TZ = "America/New_York"
ARRAYS = ("minutes", "open", "high", "low", "close", "volume", "vwap", "raw", "trades", "body",
          "upper_wick", "lower_wick")


def _session(symbol: str, day: dt.date, n: int = 300, seed: int = 0, raw: bool = False
             ) -> mstore.MinuteSession:
    """``n`` regular-hours minutes of one session; ``raw``: prices no decimal
    scale holds (stored as float8)."""
    rng = np.random.default_rng(seed)
    c = np.round(100 + np.cumsum(rng.normal(0, 0.05, n)), 2)
    h = np.round(c + 0.02, 2) + (1e-11 if raw else 0.0)
    vw = np.round(c + 0.001, 4)
    vw[3] = np.nan
    k = rng.integers(1, 300, n)
    k[5] = -1
    return mstore.MinuteSession(symbol, day, np.arange(570, 570 + n), c, h, np.round(c - 0.02, 2),
                                c, rng.integers(1, 9000, n).astype(float), vw, k, [7], "test")


def _bars(symbol: str, days: list[str]) -> MinuteBars:
    """Ten regular-hours minutes per session of ``days``."""
    t = np.concatenate([tcal.local_time_epochs(np.full(10, np.datetime64(d, "D")), 0)
                        + np.arange(570, 580) * 60 for d in days])
    p = np.linspace(100.0, 101.0, len(t)).round(2)
    n = np.arange(1, len(t) + 1)
    return MinuteBars(symbol, t.astype(np.int64), p, p + 0.5, p - 0.5, p, n * 10.0, p, n, "test")


def _rows(conn) -> list[tuple]:
    return conn.execute("SELECT symbol, session, minutes, scale, open, high, low, close, volume, "
                        "vwap, raw, trades, invalid, source, ingested_at, "
                        "pg_column_compression(open), pg_column_compression(raw) "
                        "FROM minute_bars ORDER BY symbol, session").fetchall()


def _relkind(conn, name: str) -> str | None:
    row = conn.execute("SELECT relkind FROM pg_class WHERE relname = %s", (name,)).fetchone()
    return row[0] if row else None


def _migrate_up_to(url: str, last: int) -> None:
    """The migrations up to ``last`` only, as ``pool.migrate`` applies them."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""CREATE TABLE schema_migrations (version integer PRIMARY KEY,
                        name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())""")
        for version, name, path in db.migrations():
            if version > last:
                break
            with conn.transaction():
                conn.execute(path.read_text(encoding="utf-8"))
                conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, name))


def test_migration_partitions_minute_bars_keeping_every_row_as_it_was(empty_db):
    _migrate_up_to(empty_db, 11)
    sessions = [_session("AAPL", dt.date(2019, 3, 4), seed=1),
                _session("AAPL", dt.date(2019, 12, 31), seed=2, raw=True),
                _session("AAPL", dt.date(2024, 1, 2), seed=3),
                _session("MSFT", dt.date(2024, 1, 2), n=10, seed=4)]
    with psycopg.connect(empty_db) as conn:
        assert _relkind(conn, "minute_bars") == "r"
        for s in sessions:
            store_as_before_0013(conn, s, raw=s.session == dt.date(2019, 12, 31))
        conn.commit()
        before = _rows(conn)
    # scaled, raw, scaled, and a session too small to be compressed
    assert [(r[3] is not None, r[-2], r[-1]) for r in before] == \
        [(True, "pglz", None), (False, None, "pglz"), (True, "pglz", None), (True, None, None)]

    assert 12 in db.migrate(empty_db)
    this_year = dt.date.today().year
    with psycopg.connect(empty_db) as conn:
        assert _rows(conn) == before  # bar for bar, compressed as they were
        assert _relkind(conn, "minute_bars") == "p"
        assert db.existing_partitions(conn, "minute_bars") == \
            {2019, 2024, this_year - 1, this_year, this_year + 1}
        assert conn.execute("SELECT count(*) FROM ONLY minute_bars_y2019").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM minute_bars_y2024").fetchone()[0] == 2
        assert _relkind(conn, "minute_bars_unpartitioned") is None
        checks = {r[0] for r in conn.execute(
            """SELECT conname FROM pg_constraint
               WHERE conrelid = 'minute_bars'::regclass AND contype = 'c'""")}
        assert checks == {"minute_bars_scaled_xor_raw", "minute_bars_equal_lengths",
                          "minute_bars_candle_lengths"}  # and 0013's
        pk = conn.execute("""SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i
                             JOIN pg_class c ON c.oid = i.indexrelid
                             WHERE i.indrelid = 'minute_bars'::regclass
                               AND i.indisprimary""").fetchall()
        assert pk == [("minute_bars_pkey", "CREATE UNIQUE INDEX minute_bars_pkey ON ONLY "
                                           "public.minute_bars USING btree (symbol, session)")]
        # pglz as 0003 set it, carried to every partition by 0012, and LZ4
        # instead where the server has it (set after the migrations)
        want = "l" if db.lz4_available(conn) else "p"
        for table in ("minute_bars", "minute_bars_y2019", f"minute_bars_y{this_year + 1}"):
            compression = dict(conn.execute(
                """SELECT attname, attcompression FROM pg_attribute
                   WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped""",
                (table,)).fetchall())
            assert {compression[c] for c in ARRAYS} == {want}, table
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE minute_bars SET scale = NULL WHERE symbol = 'MSFT'")
        conn.rollback()
        # a session written after the migration goes through the whole path
        assert mstore.write_days(conn, [_session("MSFT", dt.date(2019, 3, 4), n=10)]) == 1
        conn.commit()
        assert conn.execute("SELECT count(*) FROM minute_bars_y2019").fetchone()[0] == 3


def test_a_write_of_a_year_without_partition_creates_it(runtime):
    with runtime.conn() as conn:
        assert not {2003, 2004} & db.existing_partitions(conn, "minute_bars")
        res = intraday.write(conn, CFG, _bars("AAPL", ["2003-12-30", "2003-12-31",
                                                        "2004-01-02"]))
    assert res["sessions"] == 3 and res["bars"] == 30
    with runtime.conn() as conn:
        assert {2003, 2004} <= db.existing_partitions(conn, "minute_bars")
        per = dict(conn.execute("""SELECT tableoid::regclass::text, count(*) FROM minute_bars
                                   GROUP BY 1""").fetchall())
        got = mstore.day_bars(conn, "AAPL", "1m", dt.date(2003, 12, 31), tz=TZ)
        rollups = conn.execute("SELECT count(*) FROM rollup_bars WHERE timeframe = '1h'"
                               ).fetchone()[0]
        # the store's own write, without its caller's ensuring, creates it too
        assert mstore.write_days(conn, [_session("MSFT", dt.date(1999, 6, 1))]) == 1
        assert 1999 in db.existing_partitions(conn, "minute_bars")
    assert per == {"minute_bars_y2003": 2, "minute_bars_y2004": 1}
    assert len(got) == 10 and rollups == 3


def test_two_writers_of_one_new_year_both_succeed(runtime, database_url):
    """The second waits for the first one's partition instead of failing on it."""
    first = psycopg.connect(database_url)
    errors: list[BaseException] = []
    try:
        assert db.ensure_partitions(first, 1998, 1998, "minute_bars") == [1998]

        def second():
            try:
                with runtime.conn() as conn:  # as the ingest does: partitions first
                    mstore.ensure_partitions_for(conn, dt.date(1998, 5, 4), dt.date(1998, 5, 4))
                    mstore.write_days(conn, [_session("MSFT", dt.date(1998, 5, 4))])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        t = threading.Thread(target=second)
        t.start()
        t.join(1.0)
        assert t.is_alive()  # waiting for the first writer's transaction
        mstore.write_days(first, [_session("AAPL", dt.date(1998, 5, 4))])
        first.commit()
        t.join(30)
    finally:
        first.close()
    assert not errors, errors
    with runtime.conn() as conn:
        assert conn.execute("SELECT count(*) FROM minute_bars_y1998").fetchone()[0] == 2


def test_retention_drops_whole_old_years_and_deletes_only_in_the_boundary_year(runtime,
                                                                              database_url):
    days = ["2021-03-01", "2021-03-02", "2022-06-01", "2023-11-22", "2023-11-24",
            "2023-11-27", "2023-11-28", "2023-11-29", "2024-02-01"]
    with runtime.conn() as conn:
        intraday.write(conn, CFG, _bars("AAPL", days))
        intraday.write(conn, CFG, _bars("MSFT", ["2021-03-01", "2023-11-29"]))
        intraday.refresh_stats(conn, CFG, "AAPL")
        intraday.refresh_stats(conn, CFG, "MSFT")
        toast = dict(conn.execute(
            """SELECT relname, reltoastrelid FROM pg_class
               WHERE relname IN ('minute_bars_y2021', 'minute_bars_y2022')""").fetchall())
        rollups = conn.execute("SELECT count(*) FROM rollup_bars").fetchone()[0]
    assert len(toast) == 2 and all(toast.values())

    class Cfg(dict):
        def get(self, key, default=None):
            return {"retention.bar_years": {"1m": 2}}.get(key, default)
    # the maintenance job's connection: autocommit
    with db.connect(database_url, autocommit=True) as conn:
        out = intraday.apply_retention(conn, Cfg(CFG), dt.date(2025, 11, 28))  # cutoff 2023-11-28
    assert out == {"1m": 2 + 1 + 3 + 1}  # 2021 (AAPL 2, MSFT 1), 2022, three 2023 sessions
    with runtime.conn() as conn:
        left = conn.execute("SELECT symbol, array_agg(session ORDER BY session) FROM minute_bars "
                            "GROUP BY 1 ORDER BY 1").fetchall()
        gone = conn.execute("SELECT relname FROM pg_class WHERE relname = ANY(%s) OR oid = ANY(%s)",
                            (list(toast), list(toast.values()))).fetchall()
        parts = db.existing_partitions(conn, "minute_bars")
        event = conn.execute("""SELECT message, details FROM events WHERE kind = 'maintenance'
                                ORDER BY id DESC LIMIT 1""").fetchone()
        stats = {s: r["sessions"] for s, r in mstore.minute_stats(conn).items()}
        assert conn.execute("SELECT count(*) FROM rollup_bars").fetchone()[0] == rollups
    assert left == [("AAPL", [dt.date(2023, 11, 28), dt.date(2023, 11, 29), dt.date(2024, 2, 1)]),
                    ("MSFT", [dt.date(2023, 11, 29)])]
    assert gone == []  # the partitions and their TOAST tables
    assert {2021, 2022} & parts == set() and {2023, 2024} <= parts
    assert event[1]["partitions"] == ["minute_bars_y2021", "minute_bars_y2022"]
    assert event[1]["sessions"] == 7 and event[1]["cutoff"] == "2023-11-28"
    assert "minute_bars_y2021, minute_bars_y2022" in event[0] and "7 session(s)" in event[0]
    assert stats == {"AAPL": 3, "MSFT": 1}


def test_a_database_a_newer_version_migrated_is_refused_by_name(database_url):
    # a rollback of the code without the restore of its backup: the older
    # code does not run on a schema it does not know
    from appliance.core.errors import ServiceError
    from appliance.store import pool as db
    newest = db.latest_version()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, 'from_later')",
                     (newest + 1,))
    with pytest.raises(ServiceError) as e:
        db.migrate(database_url)
    assert (f"the database's schema is version {newest + 1}, newer than this appliance's "
            f"{newest}") in e.value.message
    assert "restore the backup made before the update" in e.value.message
