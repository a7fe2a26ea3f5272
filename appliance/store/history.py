"""The SQL a full restore's history merge runs (see ``appliance.ops.history``):
the database's lineage id, the columns and id sequences of the operations
tables, and rows streamed or appended from one database into another."""
from __future__ import annotations

from typing import Any

import psycopg
from psycopg import Connection, sql

from appliance.store.pool import one_row


def instance_id(conn: Connection[Any]) -> str | None:
    """The database's lineage id (``appliance_instance``), None before it exists."""
    try:
        row = conn.execute("SELECT id::text FROM appliance_instance").fetchone()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return None
    return row[0] if row else None


def columns(conn: Connection[Any], table: str) -> list[str]:
    """``table``'s columns in order (none: no such table)."""
    return [r[0] for r in conn.execute(
        """SELECT column_name FROM information_schema.columns
            WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position""",
        (table,))]


def max_id(conn: Connection[Any], table: str) -> int:
    return int(one_row(conn.execute(sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(
        sql.Identifier(table))))[0])


def sequence_floor(conn: Connection[Any], table: str, floor: int = 0) -> None:
    """Move ``table``'s id sequence past every id in it and past ``floor``."""
    if "id" not in columns(conn, table):
        return
    seq = one_row(conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)))[0]
    if seq is None:
        return
    conn.execute("SELECT setval(%s, %s, true)", (seq, max(max_id(conn, table), int(floor), 1)))


def sequence_value(conn: Connection[Any], table: str) -> int:
    """The last value of ``table``'s id sequence (0: it has none)."""
    if "id" not in columns(conn, table):
        return 0
    seq = one_row(conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)))[0]
    if seq is None:
        return 0
    return int(one_row(conn.execute(sql.SQL("SELECT last_value FROM {}").format(
        sql.SQL(seq))))[0])


def truncate(conn: Connection[Any], table: str) -> None:
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))


def copy_rows(src: Connection[Any], dst: Connection[Any], table: str, cols: list[str]) -> None:
    """Stream ``table``'s rows from ``src`` into ``dst`` (same schema version)."""
    _copy_into(src, dst, table, sql.Identifier(table), cols)


def append_rows(src: Connection[Any], dst: Connection[Any], table: str, cols: list[str]) -> None:
    """Rows of ``src.table`` appended to ``dst.table`` with fresh ids, in
    their original order; a job run whose (job, slot) the archive already has
    is left out."""
    tmp = sql.Identifier(f"_merge_{table}")
    dst.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(
        tmp, sql.Identifier(table)))
    _copy_into(src, dst, table, tmp, ["id", *cols])
    collist = sql.SQL(", ").join(map(sql.Identifier, cols))
    conflict = sql.SQL(" ON CONFLICT (job, slot) DO NOTHING") if table == "job_runs" \
        else sql.SQL("")
    dst.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ORDER BY id{}").format(
        sql.Identifier(table), collist, collist, tmp, conflict))


def _copy_into(src: Connection[Any], dst: Connection[Any], table: str, target: sql.Composable,
               cols: list[str]) -> None:
    collist = sql.SQL(", ").join(map(sql.Identifier, cols))
    with src.cursor().copy(sql.SQL("COPY {} ({}) TO STDOUT (FORMAT BINARY)").format(
            sql.Identifier(table), collist)) as out, \
            dst.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                target, collist)) as inp:
        for chunk in out:
            inp.write(chunk)
