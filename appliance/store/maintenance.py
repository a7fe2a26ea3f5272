"""The maintenance job's SQL: the catalog's indexes and tables, index bloat
and rebuilds, statistics, and dropping whole partitions or chunks of
``market_data`` for data retention."""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from psycopg import Connection, sql

from appliance.store.pool import one_row


def btree_indexes(conn: Connection[Any], tables: Iterable[str],
                  default_fillfactor: int) -> list[dict[str, Any]]:
    """B-tree indexes (leaf, not partitioned parents) of ``tables``, of their
    partitions and chunks, largest first, with what a bloat estimate needs."""
    rows = conn.execute(
        """WITH t AS (
             SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relname = ANY(%s)
           ), tt AS (
             SELECT oid FROM t
             UNION SELECT i.inhrelid FROM pg_inherits i JOIN t ON i.inhparent = t.oid
           )
           SELECT n.nspname, ic.relname, tc.relname, ic.oid, pg_relation_size(ic.oid),
                  ic.reltuples, i.indexprs IS NOT NULL,
                  coalesce(substring(array_to_string(ic.reloptions, ',')
                                     FROM 'fillfactor=([0-9]+)')::int, %s),
                  (SELECT sum(coalesce(s.avg_width, 8))
                   FROM unnest(i.indkey::int2[]) k(attnum)
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                   LEFT JOIN pg_stats s ON s.schemaname = tn.nspname AND s.tablename = tc.relname
                        AND s.attname = a.attname AND NOT s.inherited
                   WHERE k.attnum > 0),
                  (SELECT count(*) FROM unnest(i.indkey::int2[]) k(attnum)
                   LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                   LEFT JOIN pg_stats s ON s.schemaname = tn.nspname AND s.tablename = tc.relname
                        AND s.attname = a.attname AND NOT s.inherited
                   WHERE k.attnum > 0 AND s.avg_width IS NULL)
           FROM pg_index i
           JOIN pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_class tc ON tc.oid = i.indrelid
           JOIN pg_namespace n ON n.oid = ic.relnamespace
           JOIN pg_namespace tn ON tn.oid = tc.relnamespace
           JOIN pg_am am ON am.oid = ic.relam
           WHERE i.indrelid IN (SELECT oid FROM tt) AND ic.relkind = 'i' AND am.amname = 'btree'
             AND i.indisvalid
           ORDER BY pg_relation_size(ic.oid) DESC, ic.relname""",
        (list(tables), default_fillfactor)).fetchall()
    return [{"schema": r[0], "index": r[1], "table": r[2], "oid": r[3], "bytes": int(r[4]),
             "reltuples": float(r[5]), "expression": bool(r[6]), "fillfactor": int(r[7]),
             "key_width": None if r[8] is None else float(r[8]), "unknown_widths": int(r[9])}
            for r in rows]




def leaf_density(conn: Connection[Any], index_oid: int) -> tuple[Any, ...]:
    """(avg_leaf_density, leaf_pages) by ``pgstatindex`` (pgstattuple)."""
    return one_row(conn.execute("SELECT avg_leaf_density, leaf_pages FROM pgstatindex(%s::regclass)",
                        (index_oid,)))


def invalid_rebuild_leftovers(conn: Connection[Any]) -> list[tuple[str, str]]:
    """(schema, name) of invalid indexes an interrupted concurrent rebuild left."""
    return conn.execute(
        """SELECT n.nspname, c.relname FROM pg_index i
           JOIN pg_class c ON c.oid = i.indexrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE NOT i.indisvalid AND c.relname LIKE %s""", ("%\\_ccnew%",)).fetchall()


def drop_index_concurrently(conn: Connection[Any], schema: str, name: str) -> None:
    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
        sql.Identifier(schema, name)))


def reindex_concurrently(conn: Connection[Any], schema: str, name: str) -> None:
    conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(schema, name)))


def index_bytes(conn: Connection[Any], schema: str, name: str) -> int:
    """The index's size now (a rebuilt index is a new relation under the same name)."""
    return int(one_row(conn.execute(
        "SELECT pg_relation_size(format('%%I.%%I', %s::text, %s::text)::regclass)",
        (schema, name)))[0])


def present_tables(conn: Connection[Any], tables: Iterable[str]) -> list[str]:
    """Those of ``tables`` that exist (plain or partitioned) in the current schema."""
    return [r[0] for r in conn.execute(
        "SELECT relname FROM pg_class WHERE relname = ANY(%s) AND relkind IN ('r', 'p') "
        "AND relnamespace = current_schema()::regnamespace", (list(tables),))]


def analyze(conn: Connection[Any], tables: list[str]) -> None:
    conn.execute(sql.SQL("ANALYZE {}").format(
        sql.SQL(", ").join(sql.Identifier(t) for t in tables)))


def symbols_with_data_before(conn: Connection[Any], day: dt.date, *, inclusive: bool = False) -> set[str]:
    """Symbols whose first stored session is before ``day`` (or on it: ``inclusive``)."""
    op = "<=" if inclusive else "<"
    return {r[0] for r in conn.execute(
        f"SELECT symbol FROM symbol_stats WHERE first_session {op} %s", (day,))}


def drop_partition(conn: Connection[Any], name: str, *, detach_from: str | None = None,
                   lock_timeout: str | None = None) -> int:
    """Drop the partition table ``name``; the rows it held. With
    ``detach_from`` (its parent) it is detached first, detach and drop in one
    transaction (a savepoint inside the caller's); ``lock_timeout`` bounds the
    wait for their locks (``SET LOCAL``: to the end of the transaction)."""
    with conn.transaction():
        if lock_timeout is not None:
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout,))
        rows = one_row(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(name))))[0]
        if detach_from is not None:
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                sql.Identifier(detach_from), sql.Identifier(name)))
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    return rows
