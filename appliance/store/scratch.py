"""Statements run against a database that is not (yet) the live one: a
restore test's scratch database, a full restore's new database, or a live
database that may be damaged."""
from __future__ import annotations


def has_catalogue(conn) -> bool:
    """The database has the backup catalogue (table ``public.backups``)."""
    return bool(conn.execute("SELECT to_regclass('public.backups') IS NOT NULL").fetchone()[0])


