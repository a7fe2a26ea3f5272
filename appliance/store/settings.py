"""Settings of one database session or transaction."""
from __future__ import annotations

from typing import Any

from psycopg import Connection, sql


def statement_timeout_local(conn: Connection[Any], seconds: float) -> None:
    """A statement timeout for the rest of ``conn``'s transaction."""
    conn.execute("SELECT set_config('statement_timeout', %s, true)", (str(int(seconds * 1000)),))


def lock_timeout(conn: Connection[Any], value: str | None) -> None:
    """``SET lock_timeout`` for the session (None: ``RESET`` it)."""
    if value is None:
        conn.execute("RESET lock_timeout")
    else:
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(value)))
