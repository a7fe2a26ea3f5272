"""The performance review's SQL: database, table and index sizes, candles
per month and ``pg_stat_statements``."""
from __future__ import annotations

from typing import Any

from psycopg import Connection

from appliance.store.pool import one_row


def market_data_bytes(conn: Connection[Any]) -> int:
    """Bytes of ``market_data`` (table + indexes + TOAST of every partition)."""
    size = one_row(conn.execute(
        """SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0)
           FROM pg_inherits i WHERE i.inhparent = 'market_data'::regclass"""))[0]
    return int(size or 0)


def market_data_rows(conn: Connection[Any]) -> int:
    return int(one_row(conn.execute("SELECT count(*) FROM market_data"))[0])


def rows_per_ingestion_month(conn: Connection[Any]) -> list[tuple[str, int]]:
    """(YYYY-MM of ingested_at, candles), by month."""
    return conn.execute(
        """SELECT to_char(date_trunc('month', ingested_at), 'YYYY-MM'), count(*)
           FROM market_data GROUP BY 1 ORDER BY 1""").fetchall()


def rows_per_market_month(conn: Connection[Any], *, tz: str) -> tuple[list[tuple[str, int]], str]:
    """(YYYY-MM of market time, candles) over the last 12 months, by month, and
    this month in the exchange time zone ``tz``."""
    rows = conn.execute(
        """SELECT to_char(date_trunc('month', ts AT TIME ZONE %(tz)s), 'YYYY-MM'),
                  count(*)
           FROM market_data
           WHERE ts >= date_trunc('month', now() AT TIME ZONE %(tz)s)
                       - interval '12 months'
           GROUP BY 1 ORDER BY 1""", {"tz": tz}).fetchall()
    this_month = one_row(conn.execute(
        "SELECT to_char(now() AT TIME ZONE %s, 'YYYY-MM')", (tz,)))[0]
    return rows, this_month


def slowest_statements(conn: Connection[Any], limit: int) -> list[tuple[Any, ...]]:
    """(query, calls, total ms, mean ms, rows) of this database's statements,
    slowest on average first (``pg_stat_statements``; raises when it cannot
    be read)."""
    with conn.transaction():
        cols = {r[0] for r in conn.execute(
            """SELECT attname FROM pg_attribute
               WHERE attrelid = 'pg_stat_statements'::regclass AND attnum > 0""")}
        total, mean = (("total_exec_time", "mean_exec_time") if "total_exec_time" in cols
                       else ("total_time", "mean_time"))
        return conn.execute(
            f"""SELECT left(query, 500), calls, {total}, {mean}, rows
                FROM pg_stat_statements
                WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                ORDER BY {mean} DESC LIMIT %s""", (limit,)).fetchall()


def largest_tables(conn: Connection[Any], limit: int) -> list[tuple[Any, ...]]:
    """(schema, table, total bytes, table bytes, index bytes, rows estimated)."""
    return conn.execute(
        """SELECT n.nspname, c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid),
                  pg_indexes_size(c.oid), c.reltuples
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'm')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
             AND n.nspname NOT LIKE 'pg\\_temp%%'
           ORDER BY 3 DESC, 2 LIMIT %s""", (limit,)).fetchall()


def largest_indexes(conn: Connection[Any], limit: int) -> list[tuple[Any, ...]]:
    """(schema, index, table, bytes)."""
    return conn.execute(
        """SELECT n.nspname, c.relname, t.relname, pg_relation_size(c.oid)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_class t ON t.oid = i.indrelid
           WHERE c.relkind = 'i'
             AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
             AND n.nspname NOT LIKE 'pg\\_temp%%'
           ORDER BY 4 DESC, 2 LIMIT %s""", (limit,)).fetchall()

