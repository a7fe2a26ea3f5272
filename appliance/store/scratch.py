"""Statements run against a database that is not (yet) the live one: a
restore test's scratch database, a full restore's new database, or a live
database that may be damaged."""
from __future__ import annotations

from typing import Any

from psycopg import Connection

from appliance.store.pool import one_row


def has_catalogue(conn: Connection[Any]) -> bool:
    """The database has the backup catalogue (table ``public.backups``)."""
    return bool(one_row(conn.execute("SELECT to_regclass('public.backups') IS NOT NULL"))[0])


