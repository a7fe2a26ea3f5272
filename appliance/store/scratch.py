"""Statements run against a database that is not (yet) the live one: a
restore test's scratch database, a full restore's new database, or a live
database that may be damaged."""
from __future__ import annotations


def has_catalogue(conn) -> bool:
    """The database has the backup catalogue (table ``public.backups``)."""
    return bool(conn.execute("SELECT to_regclass('public.backups') IS NOT NULL").fetchone()[0])


def timescale_pre_restore(conn) -> None:
    """TimescaleDB ready to take a pg_restore (the extension created first)."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    conn.execute("SELECT timescaledb_pre_restore()")


def timescale_post_restore(conn) -> None:
    conn.execute("SELECT timescaledb_post_restore()")
